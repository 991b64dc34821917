"""Stage 4b, running: the implementation and the reference in lock-step over one scenario and one tier.

Two tiers per scenario:

- **teacher-forced**: before every step the reference's parameters and state are
  loaded into the implementation, so each step is measured alone and error cannot
  compound;
- **free-running**: both start from the same point and run on their own.

Errors are measured per coordinate in ulps *at operand scale*: the difference
between the implementation's and the reference's new parameter, in units of the
spacing of the implementation's dtype at ``max(|theta_t|, |theta_t+1|, lr)``, the
largest operand of the final update (a difference relative to the result alone
would be meaningless where the update cancels the parameter). The same is done for
m and h (scale: the larger of the old and new values and the gradient or estimate
folded in). Running measures; :mod:`.judge` decides.

For a low-precision dtype the *naive* evaluation (:class:`NaiveAdapter`: the rule's
equations in float32 arithmetic with float32 state, the parameters rounded to their
dtype after each step) runs alongside on the same inputs: it is the yardstick of the
low-precision tolerance model. Parameter errors count in ulps of the parameter dtype,
m and h in ulps of float32, so an implementation that rounds its state to bfloat16
every step is caught even where the parameters' own rounding hides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sophia_ref import SophiaRef
from sophia_ref.dialects import Dialect

from ..adapters.base import Adapter, Hyperparameters, Refresh, as_float64, load_state
from ..adapters.convention import ConventionAdapter
from .scenarios import Scenario, _zoo_inputs, hyperparameters, make_data

F64 = torch.float64


def reference_adapter(dialect: Dialect) -> Adapter:
    return ConventionAdapter(SophiaRef, "SophiaRef (reference)", dialect=dialect.name, extra={"dialect": dialect})


def _spacing(scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The ulp of ``dtype`` at each |scale| (the smallest subnormal step near 0)."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(scale.to(F64).clamp(min=info.tiny)))
    return torch.exp2(exponent) * info.eps


@dataclass
class Worst:
    ulps: float = 0.0
    relative: float = 0.0
    where: str = ""

    def update(self, got: Tensor, want: Tensor, scale: Tensor, dtype, label: str) -> None:
        if got.numel() == 0:
            return
        diff = (got - want).abs()
        ulps = diff / _spacing(scale, dtype)
        i = int(torch.argmax(ulps))
        if float(ulps.reshape(-1)[i]) > self.ulps or (math.isnan(float(ulps.reshape(-1)[i])) and not math.isnan(self.ulps)):
            self.ulps = float(ulps.reshape(-1)[i])
            self.where = f"{label}[{i}]: got {float(got.reshape(-1)[i])!r}, reference {float(want.reshape(-1)[i])!r}"
        rel = diff / want.abs().clamp(min=torch.finfo(dtype).tiny)
        self.relative = max(self.relative, float(rel.max()))


class NaiveAdapter(Adapter):
    """The rule's equations evaluated plainly in float32 with float32 state, parameters stored in ``dtype``
    and gradients and estimates handed in as ``dtype``: the yardstick of the low-precision tolerance model."""

    accepts_any_estimate = True
    supports_groups = True

    def __init__(self, dialect: Dialect):
        self.dialect_preset = dialect
        self.name, self.version, self.dialect = "naive float32 evaluation", "-", dialect.name

    def build(self, params, hyper, dtype, device) -> None:
        from sophia_ref import rule

        self.dtype, self.device = dtype, device
        overrides = self.groups or [{} for _ in params]
        self.hypers = [rule.Hyper(**{**dict(lr=hyper.lr, beta1=hyper.beta1, beta2=hyper.beta2, gamma=hyper.gamma,
                                             eps=hyper.eps, weight_decay=hyper.weight_decay,
                                             hessian_interval=hyper.hessian_interval,
                                             batch_size=hyper.batch_size), **o}) for o in overrides]
        self.params = [p.to(device=device, dtype=dtype).clone() for p in params]
        self.states = [rule.State(0, torch.zeros(p.shape, dtype=torch.float32, device=device),
                                  torch.zeros(p.shape, dtype=torch.float32, device=device)) for p in params]

    def step(self, grads, refresh) -> None:
        from sophia_ref import rule

        def as_input(x):  # what a kernel for these parameters is handed: a tensor of the parameter dtype
            return x.to(device=self.device, dtype=self.dtype).to(torch.float32)

        for i, (p, g) in enumerate(zip(self.params, grads)):
            hhat = None if refresh is None else as_input(refresh.hhat[i])
            theta = p.to(torch.float32)
            self.states[i], delta, _ = rule.update(self.states[i], theta, as_input(g), self.hypers[i],
                                                   self.dialect_preset.knobs, hhat)
            self.params[i] = (theta + delta).to(self.dtype)

    def parameters(self):
        return as_float64(self.params)

    def state(self):
        return self.states[0].step, as_float64(s.m for s in self.states), as_float64(s.h for s in self.states)

    def load(self, params, step, m, h) -> None:
        from sophia_ref import rule

        self.params = [p.to(device=self.device, dtype=self.dtype).clone() for p in params]
        self.states = [rule.State(step, mi.to(device=self.device, dtype=torch.float32),
                                  hi.to(device=self.device, dtype=torch.float32)) for mi, hi in zip(m, h)]


def _nanmax(values) -> float | None:
    """max that a NaN cannot hide (Python's max keeps or drops a NaN depending on where it stands)."""
    values = list(values)
    if not values:
        return None
    return math.nan if any(math.isnan(v) for v in values) else max(values)


@dataclass
class ScenarioResult:
    scenario: str
    tier: str
    steps: int
    params: Worst = field(default_factory=Worst)
    m: Worst = field(default_factory=Worst)
    h: Worst = field(default_factory=Worst)
    error: str | None = None
    skipped: str | None = None
    #: why it was skipped: "declared" (the implementation's adapter says it cannot take the scenario),
    #: "not applicable" (the scenario cannot run in this dtype or tier) or "not teacher-forceable"
    #: (state the harness cannot write; the free-running tier still decides)
    skip_kind: str | None = None
    #: the error arose in the harness's own handling of the implementation (writing its state), not in its step
    harness_error: bool = False
    build_error: bool = False    # it refused to be built for this scenario (a dtype or setting it does not take)
    #: set by the judge: the largest error allowed per quantity, and whether every quantity is within it
    bound: dict[str, float] | None = None
    passed: bool | None = None
    #: low precision: the naive float32 evaluation's errors on the same inputs (None for float64)
    naive: dict[str, Worst] | None = None
    #: the parameters' dtype in this run ("float64", "float32", "bfloat16", "float16")
    dtype: str = "float64"
    #: coordinates whose step was clipped on one side and not on the other, each with its explanation
    boundary: list[str] = field(default_factory=list)

    @property
    def worst_ulps(self) -> float:
        return _nanmax([self.params.ulps, self.m.ulps, self.h.ulps])


def _not_teacher_forceable() -> type[BaseException] | tuple:
    """The adapters' exception for state the harness cannot write (an empty tuple catches nothing)."""
    from ..adapters import base

    return getattr(base, "NotTeacherForceable", ())


def _build(adapter: Adapter, init, hyper, dtype, device, groups=None):
    adapter.groups = None if groups is None else [dict(g) for g in groups]
    adapter.build([t.clone() for t in init], hyper, dtype, device)


def _measure(into: dict[str, Worst], got, m_got, h_got, want, before, m_ref, h_ref, old, grads, hhat, lr, dtype,
             state_dtype, t):
    """Errors at operand scale: the largest magnitude among each update's operands and result
    (theta_t, theta_t+1, lr; m_t-1, m_t, g_t; h_t-k, h_t, hhat_t), so cancellation in the EMA or
    in theta + delta is not mistaken for an error."""
    m_old, h_old = old
    for i, (g_i, w_i, b_i) in enumerate(zip(got, want, before)):
        scale = torch.maximum(torch.maximum(b_i.abs(), w_i.abs()), lr[i])
        into["parameters"].update(g_i, w_i, scale, dtype, f"step {t}, parameter {i}")
    for i in range(len(m_ref)):
        m_scale = torch.maximum(torch.maximum(m_ref[i].abs(), m_old[i].abs()), grads[i].abs())
        into["m"].update(m_got[i], m_ref[i], m_scale, state_dtype, f"step {t}, m {i}")
        h_scale = torch.maximum(h_ref[i].abs(), h_old[i].abs())
        if hhat is not None:
            h_scale = torch.maximum(h_scale, hhat[i].abs())
        into["h"].update(h_got[i], h_ref[i], h_scale, state_dtype, f"step {t}, h {i}")


MAX_BOUNDARY_NOTES = 20
#: a reference ratio |m/d| within this relative distance of the clip threshold is "at the boundary":
#: a few roundings on either side can decide whether the step is clipped
BOUNDARY_REL = 1e-12


def _clip_disagreements(dialect: Dialect, hyper: Hyperparameters, scenario: Scenario, t: int, before, got, want,
                        old, m_new, h_new) -> list[str]:
    """Coordinates where one side took a full (clipped) step and the other did not, explained.

    The clip decision is read from the parameters: ``u = -(theta' - theta + lr lam theta) / lr``;
    the reference's ratio ``|m/d|`` says whether the coordinate sat at the clip threshold, where a
    few roundings decide, or far from it, where a disagreement is a real departure.
    """
    knobs = dialect.knobs
    c = 1.0 if knobs.form == "gamma" else hyper.gamma
    scale = (hyper.gamma if knobs.form == "gamma" else 1.0) * (hyper.batch_size if knobs.batch_factor == "step" else 1.0)
    notes = []
    for i, (b_i, g_i, w_i) in enumerate(zip(before, got, want)):
        group = scenario.groups[i] if scenario.groups else {}
        lr, lam = group.get("lr", hyper.lr), group.get("weight_decay", hyper.weight_decay)
        if lr == 0 or b_i.numel() == 0:
            continue
        u_got = -((g_i - b_i) + lr * lam * b_i) / lr
        u_want = -((w_i - b_i) + lr * lam * b_i) / lr
        # u read back from parameters carries their rounding: a few ulps of |theta| / lr, and of c itself
        tol = 2 * 2.0 ** -52 * c + 4 * 2.0 ** -52 * torch.maximum(b_i.abs(), w_i.abs()) / lr
        clipped_got, clipped_want = (u_got.abs() >= c - tol), (u_want.abs() >= c - tol)
        for j in torch.nonzero((clipped_got != clipped_want).reshape(-1)).reshape(-1).tolist():
            m_used = m_new[i].reshape(-1)[j]
            if knobs.bias_correction:
                m_used = m_used / (1 - hyper.beta1 ** t)
            h_used = (old[1][i] if knobs.refresh == "next_step" else h_new[i]).reshape(-1)[j]
            curvature = scale * h_used
            d = max(float(curvature), hyper.eps) if knobs.eps_placement == "max" else float(curvature) + hyper.eps
            ratio = abs(float(m_used) / d) if d != 0 else math.inf
            at_boundary = abs(ratio - c) <= BOUNDARY_REL * c
            side = ("the implementation clipped it, the reference did not" if bool(clipped_got.reshape(-1)[j])
                    else "the reference clipped it, the implementation did not")
            why = (f"explained: the reference's |m/d| = {ratio!r} is within {BOUNDARY_REL:g} of the clip threshold "
                   f"{c:g}, where a few roundings decide" if at_boundary
                   else f"NOT explained: the reference's |m/d| = {ratio:.6g} is far from the clip threshold {c:g}")
            notes.append(f"step {t}, parameter {i}[{j}]: {side}; {why}")
    return notes


def run_scenario(adapter: Adapter, dialect: Dialect, scenario: Scenario, tier: str,
                 dtype: torch.dtype = F64, device: str = "cpu") -> ScenarioResult:
    """One scenario, one tier; an exception in the implementation becomes ``error``, never a crash.

    For a low-precision ``dtype`` the naive float32 evaluation runs alongside on the same
    inputs (teacher-forced from the same reference states) and its errors are kept in
    ``result.naive``.
    """
    result = ScenarioResult(scenario.name, tier, scenario.steps)
    if scenario.signed_state and tier != "teacher-forced":
        result.skipped, result.skip_kind = "a loaded state is a teacher-forced scenario", "not applicable"
        return result
    if scenario.estimates != "gnb" and not adapter.accepts_any_estimate:
        result.skipped, result.skip_kind = "takes only GNB-shaped estimates (squares of a gradient)", "declared"
        return result
    if scenario.groups is not None and not adapter.supports_groups:
        result.skipped, result.skip_kind = "its adapter builds a single parameter group", "declared"
        return result
    hyper = hyperparameters(scenario, adapter)
    data = make_data(scenario, dialect, hyper)
    largest = max((float(x.abs().max()) for step in data.grads for x in step if x.numel()), default=1.0)
    info, name = torch.finfo(dtype), str(dtype).replace("torch.", "")
    result.dtype = name
    if largest > info.max / 16:
        result.skipped, result.skip_kind = f"its gradients (up to {largest:.3g}) overflow {name}", "not applicable"
        return result
    if largest < info.tiny * 1e3:
        result.skipped, result.skip_kind = f"its gradients (at most {largest:.3g}) underflow {name}", "not applicable"
        return result
    reference = reference_adapter(dialect)
    _build(reference, data.init, hyper, F64, "cpu", scenario.groups)
    naive = None
    if dtype != F64:
        naive = NaiveAdapter(dialect)
        _build(naive, data.init, hyper, dtype, "cpu", scenario.groups)
        result.naive = {"parameters": Worst(), "m": Worst(), "h": Worst()}
    state_dtype = F64 if naive is None else torch.float32
    try:
        _build(adapter, data.init, hyper, dtype, device, scenario.groups)
    except Exception as error:  # the implementation rejected the set-up: a finding, not a crash
        result.error = f"building it failed: {type(error).__name__}: {error}"
        result.build_error = True
        return result
    # the largest step a coordinate can take, per tensor (its group's lr)
    lr = [torch.tensor((scenario.groups[i] if scenario.groups else {}).get("lr", hyper.lr), dtype=F64)
          for i in range(len(data.init))]
    own = {"parameters": result.params, "m": result.m, "h": result.h}
    signed = torch.Generator().manual_seed(scenario.seed + 1)
    for t in range(1, scenario.steps + 1):
        before = reference.parameters()
        if scenario.problem is not None:
            grads, refresh = _zoo_inputs(scenario, dialect, hyper, before[0], t in data.refreshes)
        else:
            grads, refresh = data.grads[t - 1], data.refreshes.get(t)
        step_count, m, h = reference.state()
        if scenario.signed_state:
            h = [torch.randn(x.shape, dtype=F64, generator=signed) * 10.0 for x in h]
            reference.load(before, step_count if t > 1 else 0, m, h)
        try:
            if tier == "teacher-forced":
                n = step_count if t > 1 else 0
                load_state(adapter, before, n, m, h, refreshes=sum(1 for s in data.refreshes if s <= n))
        except _not_teacher_forceable() as why:  # state the harness cannot write: the free-running tier decides
            result.skipped, result.skip_kind = str(why), "not teacher-forceable"
            return result
        except Exception as error:  # writing the state failed: the harness's side, said so
            result.error = f"step {t}: loading the reference state into it failed: {type(error).__name__}: {error}"
            result.harness_error = True
            return result
        try:
            internal = adapter.internal_estimate(grads, refresh)
            adapter.step(grads, refresh)
            got = adapter.parameters()
            _, m_got, h_got = adapter.state()
        except Exception as error:  # the implementation raised: a finding, not a crash
            after = (f" (after its state_dict round trip at step {scenario.checkpoint_at}: state it keeps outside "
                     "state_dict() may be lost)") if tier == "free-running" and scenario.checkpoint_at and t > scenario.checkpoint_at else ""
            result.error = f"step {t}: {type(error).__name__}: {error}{after}"
            return result
        for i, g_i in enumerate(got):
            if not bool(torch.isfinite(g_i).all()):
                result.error = f"step {t}: parameter {i} became non-finite"
                return result
        ref_refresh = Refresh(hhat=internal) if internal is not None else refresh
        reference.step(grads, ref_refresh)
        want = reference.parameters()
        _, m_ref, h_ref = reference.state()
        if tier == "free-running" and t == scenario.checkpoint_at:
            try:
                adapter.round_trip()
            except NotImplementedError as why:
                result.skipped, result.skip_kind = str(why), "declared"
                return result
            except Exception as error:  # saving or reloading failed: a finding
                result.error = f"step {t}: state_dict round trip: {type(error).__name__}: {error}"
                return result
            reference.round_trip()
        hhat = None if ref_refresh is None else ref_refresh.hhat
        if len(result.boundary) < MAX_BOUNDARY_NOTES:
            result.boundary += _clip_disagreements(dialect, hyper, scenario, t, before, got, want, (m, h), m_ref, h_ref)
        _measure(own, got, m_got, h_got, want, before, m_ref, h_ref, (m, h), grads, hhat, lr, dtype, state_dtype, t)
        if naive is not None:
            if tier == "teacher-forced":
                naive.load(before, step_count if t > 1 else 0, m, h)
            naive.step(grads, ref_refresh)
            _, m_naive, h_naive = naive.state()
            _measure(result.naive, naive.parameters(), m_naive, h_naive, want, before, m_ref, h_ref, (m, h), grads,
                     hhat, lr, dtype, state_dtype, t)
    return result
