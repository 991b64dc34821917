"""Adapters of the public Sophia packages, in lock-step with SophiaRef in their own dialects.

Each adapter (skipped when its package is missing; ``pip install 'sophia-ref[public]'``)
runs 12 steps on two float64 tensors, shapes (3, 4) and (5,), with seeded Gaussian
gradients; on the refresh steps of its dialect it gets a GNB-shaped estimate
(``ghat`` Gaussian, ``hhat = B ghat**2``, ``B = 8``). SophiaRef runs the same steps
with the dialect's knobs and the estimate that dialect folds: ``ghat**2`` with
``batch_size = B`` where B lives at step time (``official``, ``sophia_optimizer``; for
the latter, the adapter's ``internal_estimate``, ``g**2`` of every step), ``hhat``
otherwise. The hyperparameters leave some coordinates clipped and some not: the
reference's win rate is strictly between 0 and 1 on every step after the first
refresh takes effect.

Errors are in ulps at operand scale, per coordinate, as running maxima over the run
(errors persist in the state, so their scale does too): for m, the largest ``|m|`` or
``|g|`` seen (``b1 m + (1 - b1) g`` may cancel); for h, the largest h or estimate; for
parameters, the largest of ``|theta|``, ``lr c`` (c the clip bound: 1, or rho in the rho
form) and, on unclipped coordinates, ``lr m_scale / d`` (d the step's denominator: the
division passes m's rounding on, amplified by 1/d where m has cancelled). The
implementations round differently from the reference (``theta (1 - lr wd)`` then
``addcmul``; ``lerp``; XLA fusion under jit) and the trajectories run free (each keeps
its own state), so parameter errors add up over the steps. Measured worst (float64,
CPU, seed 0; ``pytest -s`` prints them):

    adapter                        params   m      h      first step after load()
    sophia-opt SophiaG             4.0      0.31   1.0    1.0
    sophia-optimizer SophiaG       3.0      0.5    1.0    1.0
    pytorch-optimizer SophiaH      5.0      0.38   0.5    1.0
    optax.contrib.sophia, jit      1.25     0.31   0      0.5
    optax.contrib.sophia, eager    2.0      0      0      0.25

Bounds: PARAM_ULPS for parameters over a run, STATE_ULPS for m and h, NEXT_STEP_ULPS for
the first step after load(). For scale: changing one knob of a preset
(test_a_wrong_knob_breaks_the_lockstep) moves the parameters by 1e14 to 1e15 such ulps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import metadata

import pytest
import torch

from sophia_ref import SophiaRef, get_dialect
from verification.adapters.base import Adapter, Hyperparameters, Refresh

SHAPES = [(3, 4), (5,)]
BATCH = 8.0
STEPS = 12
PARAM_ULPS = 8.0      # free-running parameters, 12 steps (worst measured: 5)
STATE_ULPS = 2.0      # m and h (worst measured: 1)
NEXT_STEP_ULPS = 2.0  # the first step after load(): one step's rounding (worst measured: 1)


@dataclass(frozen=True)
class Case:
    id: str
    module: str          # the module the adapter needs (importorskip), or "dist:NAME" for a distribution
    adapter: str         # "module:Class" under verification.adapters
    hyper: Hyperparameters
    refresh_steps: frozenset
    kwargs: dict = field(default_factory=dict)

    def make(self) -> Adapter:
        if self.module.startswith("dist:"):
            # sophia-optimizer's module `sophia` raises ImportError even when installed (see its adapter),
            # so importorskip would skip it silently: ask for the distribution instead
            try:
                metadata.version(self.module[5:])
            except metadata.PackageNotFoundError:
                pytest.skip(f"{self.module[5:]} is not installed")
        else:
            pytest.importorskip(self.module)
        name, cls = self.adapter.split(":")
        module = __import__(f"verification.adapters.{name}", fromlist=[cls])
        return getattr(module, cls)(**self.kwargs)


def _schedule(k: int, first: int = 1) -> frozenset:
    return frozenset(t for t in range(first, STEPS + 1) if (t - 1) % k == 0)


K = 3
CASES = [
    # official recipe: update_hessian() every k steps from iteration k - 1, i.e. refreshes on t = k+1, 2k+1, ...
    Case("official", "sophia_opt", "official:OfficialAdapter",
         Hyperparameters(lr=0.05, beta1=0.9, beta2=0.5, gamma=0.05, eps=1e-15, weight_decay=0.1,
                         hessian_interval=K, batch_size=BATCH), _schedule(K, first=K + 1)),
    Case("sophia_optimizer", "dist:sophia-optimizer", "sophia_optimizer:SophiaOptimizerAdapter",
         Hyperparameters(lr=0.05, beta1=0.9, beta2=0.5, gamma=0.05, eps=1e-15, weight_decay=0.1,
                         hessian_interval=1, batch_size=BATCH), frozenset()),
    Case("pytorch_optimizer", "pytorch_optimizer", "pytorch_optimizer:PytorchOptimizerAdapter",
         Hyperparameters(lr=0.05, beta1=0.9, beta2=0.5, gamma=0.05, eps=1e-12, weight_decay=0.1,
                         hessian_interval=K), _schedule(K)),
    Case("optax_jit", "optax", "optax_adapter:OptaxAdapter",
         Hyperparameters(lr=0.05, beta1=0.9, beta2=0.5, gamma=0.1, eps=1e-8, weight_decay=0.1,
                         hessian_interval=K), _schedule(K), dict(jit=True)),
    Case("optax_eager", "optax", "optax_adapter:OptaxAdapter",
         Hyperparameters(lr=0.05, beta1=0.9, beta2=0.5, gamma=0.1, eps=1e-8, weight_decay=0.1,
                         hessian_interval=K), _schedule(K), dict(jit=False)),
]


# -- the lock-step driver -------------------------------------------------------------------------------------


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """ulp of each |x| (the spacing above it), elementwise; ulp(0) is the smallest subnormal."""
    x = x.abs()
    return torch.nextafter(x, torch.full_like(x, math.inf)) - x


def _ulps(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return float(((a - b).abs() / _ulp(scale)).max())


class Data:
    """Seeded gradients and GNB refreshes, drawn in a fixed order so every run sees the same."""

    def __init__(self, seed: int, case: Case):
        gen = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        self.grads, self.refreshes = [], []
        for t in range(1, STEPS + 1):
            self.grads.append([torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES])
            ghat = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
            self.refreshes.append(Refresh([BATCH * x ** 2 for x in ghat], ghat, BATCH)
                                  if t in case.refresh_steps else None)


def make_reference(case: Case, adapter: Adapter, params, dialect=None) -> tuple[SophiaRef, list[torch.Tensor]]:
    h = case.hyper
    dialect = get_dialect(adapter.dialect if dialect is None else dialect)
    tensors = [p.clone() for p in params]
    ref = SophiaRef(tensors, lr=h.lr, betas=(h.beta1, h.beta2), gamma=h.gamma, eps=h.eps,
                    weight_decay=h.weight_decay, hessian_interval=h.hessian_interval, dialect=dialect,
                    batch_size=h.batch_size if dialect.knobs.batch_factor == "step" else 1.0)
    return ref, tensors


def reference_estimate(adapter: Adapter, grads, refresh: Refresh | None):
    """What the adapter's dialect folds into h at this step, for SophiaRef."""
    internal = adapter.internal_estimate(grads, refresh)
    if internal is not None:
        return internal
    if refresh is None:
        return None
    if get_dialect(adapter.dialect).knobs.batch_factor == "step":
        return [g ** 2 for g in refresh.ghat]  # B lives at step time: the B-free estimate
    return refresh.hhat


def step_both(adapter, ref, tensors, grads, refresh) -> None:
    estimate = reference_estimate(adapter, grads, refresh)
    adapter.step(grads, refresh)
    for p, g in zip(tensors, grads):
        p.grad = g.clone()
    ref.step(hessian_estimate=estimate)


class Scales:
    """Per-coordinate operand scales, running maxima over the run.

    m: the largest |m| or |g| so far (m = b1 m + (1 - b1) g may cancel); h: the largest h or
    estimate. theta: the largest |theta| and the step's own operand scale, ``lr c`` on
    clipped coordinates and ``lr m_scale / d`` on unclipped ones (the division passes m's
    rounding on, amplified by 1/d where m has cancelled).
    """

    def __init__(self, hyper: Hyperparameters, dialect: str, params, h=None):
        self.hyper, self.knobs = hyper, get_dialect(dialect).knobs
        self.scale, self.c = (hyper.gamma, 1.0) if self.knobs.form == "gamma" else (1.0, hyper.gamma)
        if self.knobs.batch_factor == "step":
            self.scale *= hyper.batch_size
        self.theta = [torch.clamp(p.abs(), min=hyper.lr * self.c) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.h = [torch.zeros_like(p) for p in params] if h is None else [x.abs() for x in h]
        self.h_before = [torch.zeros_like(p) for p in params] if h is None else [x.clone() for x in h]

    def _step_scale(self, t, m, h_after, m_scale, h_before):
        k, hy = self.knobs, self.hyper
        h = h_before if k.refresh == "next_step" else h_after   # the h this step divided by
        d = h * self.scale
        d = d.clamp(min=hy.eps) if k.eps_placement == "max" else d + hy.eps
        correction = 1.0 / (1.0 - hy.beta1 ** t) if k.bias_correction else 1.0
        unclipped = (m * correction).abs() / d < self.c
        return torch.where(unclipped, hy.lr * m_scale * correction / d, torch.full_like(d, hy.lr * self.c))

    def update(self, t, params, grads, estimate, ms, hs):
        for i, (p, g, m, h) in enumerate(zip(params, grads, ms, hs)):
            self.m[i] = torch.maximum(self.m[i], torch.maximum(g.abs(), m.abs()))
            self.h[i] = torch.maximum(self.h[i], h.abs())
            if estimate is not None:
                self.h[i] = torch.maximum(self.h[i], estimate[i].abs())
            step = self._step_scale(t, m, h, self.m[i], self.h_before[i])
            self.theta[i] = torch.maximum(self.theta[i], torch.maximum(p.abs(), step))
            self.h_before[i] = h.clone()


def ref_state(ref, tensors):
    return ([ref.state[p]["step"] for p in tensors], [ref.state[p]["m"] for p in tensors],
            [ref.state[p]["h"] for p in tensors])


def compare(adapter, ref, tensors, scales, grads, estimate, t) -> dict:
    steps, ms, hs = ref_state(ref, tensors)
    scales.update(t, tensors, grads, estimate, ms, hs)
    t_a, m_a, h_a = adapter.state()
    assert t_a == t and all(s == t for s in steps), (t_a, steps, t)
    out = dict(
        params=max(_ulps(a, b, s) for a, b, s in zip(adapter.parameters(), tensors, scales.theta)),
        m=max(_ulps(a, b, s) for a, b, s in zip(m_a, ms, scales.m)),
        h=max(_ulps(a, b, s) for a, b, s in zip(h_a, hs, scales.h)),
    )
    return out


def first_effective_refresh(case: Case, dialect: str) -> int:
    knobs = get_dialect(dialect).knobs
    first = 1 if not case.refresh_steps else min(case.refresh_steps)
    return first + (1 if knobs.refresh == "next_step" else 0)


def run_lockstep(case: Case, seed: int = 0, dialect=None):
    """12 steps of the adapter and SophiaRef (in the adapter's dialect, or ``dialect``), compared after each."""
    adapter = case.make()
    data = Data(seed, case)
    adapter.build(data.params, case.hyper, torch.float64, "cpu")
    ref, tensors = make_reference(case, adapter, data.params, dialect)
    scales = Scales(case.hyper, adapter.dialect, data.params)
    worst = dict(params=0.0, m=0.0, h=0.0)
    win_rates = []
    for t in range(1, STEPS + 1):
        grads, refresh = data.grads[t - 1], data.refreshes[t - 1]
        estimate = reference_estimate(adapter, grads, refresh)
        step_both(adapter, ref, tensors, grads, refresh)
        errors = compare(adapter, ref, tensors, scales, grads, estimate, t)
        win_rates.append(ref.diagnostics.win_rate)
        assert errors["params"] <= PARAM_ULPS, (t, errors)
        assert errors["m"] <= STATE_ULPS and errors["h"] <= STATE_ULPS, (t, errors)
        worst = {k: max(worst[k], errors[k]) for k in worst}
    return adapter, worst, win_rates


# -- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_lockstep_with_reference(case: Case):
    adapter, worst, win_rates = run_lockstep(case)
    assert adapter.version not in ("?", "", None)
    first = first_effective_refresh(case, adapter.dialect)
    mixed = win_rates[first - 1:]
    assert all(0.0 < w < 1.0 for w in mixed), win_rates  # some coordinates clipped, some not
    print(f"\n{adapter.describe()} [{case.id}]: worst ulps at operand scale {worst}; "
          f"win rates {[round(w, 2) for w in win_rates]}")


@pytest.mark.parametrize("warm", [0, 2], ids=["fresh", "warmed"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_load_continues_the_reference(case: Case, warm: int):
    """Run SophiaRef to mid-run, load its state into an adapter (fresh, or warmed on other data),
    and step both: the next parameters agree; the rest of the run stays in lock-step."""
    adapter = case.make()
    data, other = Data(0, case), Data(1, case)  # the reference's trajectory; another to warm the adapter on
    adapter.build(other.params, case.hyper, torch.float64, "cpu")
    ref, tensors = make_reference(case, adapter, data.params)
    mid = 6
    for t in range(1, mid + 1):
        grads = data.grads[t - 1]
        for p, g in zip(tensors, grads):
            p.grad = g.clone()
        ref.step(hessian_estimate=reference_estimate(adapter, grads, data.refreshes[t - 1]))

    for t in range(1, warm + 1):
        adapter.step(other.grads[t - 1], other.refreshes[t - 1])

    steps, ms, hs = ref_state(ref, tensors)
    adapter.load([p.detach().clone() for p in tensors], mid, [m.clone() for m in ms], [h.clone() for h in hs])
    t_a, m_a, h_a = adapter.state()
    assert t_a == mid
    assert all(torch.equal(a, b) for a, b in zip(m_a, ms)) and all(torch.equal(a, b) for a, b in zip(h_a, hs))
    assert all(torch.equal(a, b) for a, b in zip(adapter.parameters(), tensors))

    scales = Scales(case.hyper, adapter.dialect, tensors, h=hs)
    scales.m = [torch.maximum(m.abs(), g.abs()) for m, g in zip(ms, data.grads[mid - 1])]
    for t in range(mid + 1, STEPS + 1):
        grads, refresh = data.grads[t - 1], data.refreshes[t - 1]
        estimate = reference_estimate(adapter, grads, refresh)
        step_both(adapter, ref, tensors, grads, refresh)
        errors = compare(adapter, ref, tensors, scales, grads, estimate, t)
        bound = NEXT_STEP_ULPS if t == mid + 1 else PARAM_ULPS
        assert errors["params"] <= bound, (t, errors)
        assert errors["m"] <= STATE_ULPS and errors["h"] <= STATE_ULPS, (t, errors)
        if t == mid + 1:
            print(f"\n{adapter.describe()} [{case.id}, {'warmed' if warm else 'fresh'}]: "
                  f"first step after load, ulps {errors}")


# One knob of each preset that the lock-step above depends on: with it changed, the reference and the
# implementation part within the 12 steps, so the agreement is evidence for the preset, not tolerance.
MUTATIONS = [
    ("official", dict(batch_factor="estimate")),        # bs of step() is not applied at step time
    ("sophia_optimizer", dict(momentum_updates=1)),     # m absorbs the gradient once
    ("pytorch_optimizer", dict(form="gamma")),          # clip(m / max(p h, eps), 1) instead of the rho form
    ("optax_jit", dict(refresh="immediate")),           # the new h used in the refresh step itself
    ("optax_jit", dict(bias_correction=False)),         # no bias correction of m
]


@pytest.mark.parametrize("case_id, knobs", MUTATIONS, ids=[f"{c}-{next(iter(k))}" for c, k in MUTATIONS])
def test_a_wrong_knob_breaks_the_lockstep(case_id: str, knobs: dict):
    case = next(c for c in CASES if c.id == case_id)
    preset = get_dialect(case.make().dialect)
    wrong = replace(preset, name=f"{preset.name} with {knobs}", knobs=replace(preset.knobs, **knobs))
    with pytest.raises(AssertionError):
        run_lockstep(case, dialect=wrong)


def _case(case_id: str) -> Case:
    case = next(c for c in CASES if c.id == case_id)
    return case


def test_official_needs_ghat_and_its_fixed_eps():
    case = _case("official")
    adapter = case.make()
    data = Data(0, case)
    with pytest.raises(ValueError, match="eps"):
        adapter.build(data.params, replace(case.hyper, eps=1e-12), torch.float64, "cpu")
    adapter.build(data.params, case.hyper, torch.float64, "cpu")
    assert adapter.accepts_any_estimate is False
    with pytest.raises(ValueError, match="ghat"):
        adapter.step(data.grads[0], Refresh([torch.ones(s, dtype=torch.float64) for s in SHAPES]))


def test_sophia_optimizer_estimate_is_the_squared_gradient():
    case = _case("sophia_optimizer")
    adapter = case.make()
    data = Data(0, case)
    with pytest.raises(ValueError, match="hessian_interval"):
        adapter.build(data.params, replace(case.hyper, hessian_interval=10), torch.float64, "cpu")
    adapter.build(data.params, case.hyper, torch.float64, "cpu")
    estimate = adapter.internal_estimate(data.grads[0], None)
    assert all(e.dtype == torch.float64 and torch.equal(e, g ** 2) for e, g in zip(estimate, data.grads[0]))


def test_pytorch_optimizer_refuses_a_refresh_step_without_estimate():
    case = _case("pytorch_optimizer")
    adapter = case.make()
    data = Data(0, case)
    adapter.build(data.params, case.hyper, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="refresh step"):
        adapter.step(data.grads[0], None)  # t = 1 is one of its own refresh steps
    assert all(torch.equal(a, b) for a, b in zip(adapter.parameters(), data.params))  # nothing moved


def test_pytorch_optimizer_foreach_gives_the_same_bits():
    case = _case("pytorch_optimizer")
    runs = []
    for foreach in (False, True):
        adapter = replace(case, kwargs=dict(foreach=foreach)).make()
        data = Data(0, case)
        adapter.build(data.params, case.hyper, torch.float64, "cpu")
        for t in range(1, STEPS + 1):
            adapter.step(data.grads[t - 1], data.refreshes[t - 1])
        runs.append((adapter.parameters(), adapter.state()))
    (p0, (t0, m0, h0)), (p1, (t1, m1, h1)) = runs
    assert t0 == t1 == STEPS
    for a, b in zip(p0 + m0 + h0, p1 + m1 + h1):
        assert torch.equal(a, b)


def test_optax_refresh_phase_is_enforced():
    case = _case("optax_jit")
    adapter = case.make()
    data = Data(0, case)
    adapter.build(data.params, case.hyper, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="count % update_interval"):
        adapter.step(data.grads[0], None)  # count 0: optax folds an estimate here
    adapter.step(data.grads[0], data.refreshes[0])
    with pytest.raises(ValueError, match="would be ignored"):
        adapter.step(data.grads[1], data.refreshes[0])  # count 1: optax would not fold it
    assert adapter.state()[0] == 1
