"""Kernel conformance on GPT-2 small shapes: each step of ``sophia_ref.fast.Sophia`` against the float64 rule.

Teacher-forced: every checked step starts the implementation, the float64 reference (``rule.update`` in
float64, on the same device) and the naive float32 evaluation (``rule.update`` on float32 tensors, the
parameters rounded to their dtype) from the same values: the parameters as stored in their dtype, m and h
as float32. Two steps are checked: a refresh step (t = k + 1) and the plain step after it (t = k + 2).

The data are built to reach the rule's edges on every tensor: gradients over six decades, h over fourteen
with exact zeros (d = eps: the sign-step regime), estimates with zeros, and momenta that nearly cancel the
gradient's contribution (m_t close to 0, where the clip decides the sign of a full step).

Errors are counted in ulps at operand scale (:mod:`verification.conformance.run`) and held to the
certification's tolerance model (:func:`verification.conformance.judge.bounds`, teacher-forced) applied
coordinate by coordinate: twice the naive evaluation's error at that coordinate plus 2 ulps, and at least
8 ulps where the quantity is computed natively in the dtype it is counted in (float32 parameters, m and
h). Per coordinate, not per tensor, because the data put a few coordinates where the float32 evaluation
itself is far off (the cancelling m above): a per-tensor maximum would lend their bound to every other
coordinate of the tensor.

**Saturated coordinates.** Where h is about 0, d = max(gamma h, eps) is about eps and ``u = clip(m / d)``
multiplies a difference in m by 1/eps: two correct evaluations whose m differ by one rounding (within m's
own bound) can move such a coordinate by up to 2 lr, a sign flip of a full step. That is not excused
wholesale: a coordinate over the parameter bound is *explained* only if (1) its m and h are within their
bounds there and (2) its parameter error is at most the bound plus ``lr |u(m', h') - u(m_ref, h_ref)|``, the
step's direction recomputed in float64 from the implementation's own new state and from the reference's
(:func:`state_propagation`): the part of the difference that the state difference implies, through the
rule itself. A kernel whose direction does not follow from its state (a wrong gamma, a wrong clip) is not
explained by it. Explained coordinates are counted and reported; any other coordinate over the bound
fails the tensor. A kernel that rounds exactly as the float32 evaluation (the triton backend: no
contraction, IEEE division) has none, and is reported bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sophia_ref import rule
from sophia_ref.dialects import get_dialect
from sophia_ref.fast import Sophia

from ..conformance.judge import FLOAT64_STEP_ULPS, LOW_PRECISION_FACTOR, LOW_PRECISION_FLOOR_ULPS
from ..conformance.run import _spacing
from .gpt2 import SMALL, Config, shapes

F64 = torch.float64
#: the hyperparameters of the check: GPT-2 small's (lr 6e-4, weight decay 0.1) and the paper's betas and k
HYPER = dict(lr=6e-4, betas=(0.965, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.1, hessian_interval=10)
QUANTITIES = ("parameters", "m", "h")


@dataclass
class TensorCheck:
    """One tensor, one checked step: worst errors (ulps at operand scale), bounds, and the verdict."""

    name: str
    step: int
    numel: int
    #: per quantity, at the coordinate with the largest error / bound (for parameters: the largest among those
    #: not explained by the state difference), its error, its bound and the naive evaluation's error there
    errors: dict[str, float] = field(default_factory=dict)
    naive: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    explained: int = 0             # saturated coordinates over the parameter bound, explained by m (docstring)
    unexplained: int = 0           # coordinates over a bound with no explanation
    bit_identical: bool = False    # p, m and h equal the naive float32 evaluation's, bit for bit
    where: str = ""

    @property
    def passed(self) -> bool:
        return self.unexplained == 0 and all(self.errors[q] <= self.bounds[q] for q in QUANTITIES)


@dataclass
class KernelReport:
    backend: str
    dtype: str
    device: str
    tensors: int
    numel: int
    checks: list[TensorCheck]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def bit_identical(self) -> bool:
        return bool(self.checks) and all(c.bit_identical for c in self.checks)

    def worst(self, quantity: str) -> tuple[float, float]:
        """(largest error, its bound) over every tensor and step, for one quantity."""
        c = max(self.checks, key=lambda c: c.errors[quantity] / c.bounds[quantity] if c.bounds[quantity] else 0.0)
        return c.errors[quantity], c.bounds[quantity]

    @property
    def explained(self) -> int:
        return sum(c.explained for c in self.checks)

    def summary(self) -> str:
        cells = []
        for q in QUANTITIES:
            e, b = self.worst(q)
            over = (f"; {self.explained} coordinates over it, each explained by the state difference"
                    if q == "parameters" and self.explained else "")
            cells.append(f"{q} {e:.3g} (bound {b:.3g}{over})")
        failing = [c for c in self.checks if not c.passed]
        text = (f"{self.tensors} tensors, {self.numel:,} coordinates, steps {sorted({c.step for c in self.checks})}: "
                f"worst ulps {', '.join(cells)}; bit-identical to the float32 evaluation: "
                f"{'yes' if self.bit_identical else 'no'}")
        if failing:
            text += f"; FAILING {len(failing)} tensor-steps, first {failing[0].name} at step {failing[0].step}: " \
                    f"{failing[0].where}"
        return text


def _tensor_data(shape, dtype, device, generator, b1: float):
    """theta, g (parameter dtype), m, h, hhat (float32) reaching the rule's edges (module docstring)."""
    def randn(*s):
        return torch.randn(s if s else shape, generator=generator, device=device)

    n = math.prod(shape)
    theta = (0.02 * randn()).to(dtype)
    g = (1e-3 * randn() * torch.exp(3.0 * randn())).to(dtype)                   # six decades of gradient
    m = 1e-3 * randn()
    cancel = torch.rand(shape, generator=generator, device=device) < 0.01
    m = torch.where(cancel, -(1 - b1) / b1 * g.float() * (1 + 1e-6 * randn()), m)  # m_t nearly 0
    h = torch.exp(randn() * 5.0 - 4.0)                                          # h over fourteen decades
    h = torch.where(torch.rand(shape, generator=generator, device=device) < 0.01, torch.zeros_like(h), h)
    hhat = 480 * (1e-3 * randn()) ** 2
    hhat = torch.where(torch.rand(shape, generator=generator, device=device) < 0.01, torch.zeros_like(hhat), hhat)
    assert theta.numel() == n
    return theta, g, m, h, hhat


def _ulps(got: Tensor, want: Tensor, scale: Tensor, dtype) -> Tensor:
    return (got.to(F64) - want).abs() / _spacing(scale, dtype)


def _check_tensor(name, t, p_dtype, before, got, naive, ref, hhat, hyper: rule.Hyper, knobs: rule.Knobs) -> TensorCheck:
    """Coordinate by coordinate: each error against its own bound (the module docstring), the worst reported."""
    theta, g, m_old, h_old = before
    (p_got, m_got, h_got), (p_nv, m_nv, h_nv), (p_ref, m_ref, h_ref, d_ref) = got, naive, ref
    lr = torch.tensor(hyper.lr, dtype=F64, device=theta.device)
    scales = {
        "parameters": torch.maximum(torch.maximum(theta.abs(), p_ref.abs()), lr),
        "m": torch.maximum(torch.maximum(m_ref.abs(), m_old.abs()), g.abs()),
        "h": torch.maximum(h_ref.abs(), h_old.abs()) if hhat is None else
             torch.maximum(torch.maximum(h_ref.abs(), h_old.abs()), hhat.abs()),
    }
    dtypes = {"parameters": p_dtype, "m": torch.float32, "h": torch.float32}
    values = {"parameters": (p_got, p_nv, p_ref), "m": (m_got, m_nv, m_ref), "h": (h_got, h_nv, h_ref)}
    native = {"parameters": p_dtype == torch.float32, "m": True, "h": True}
    check = TensorCheck(name, t, theta.numel())
    check.bit_identical = all(torch.equal(values[q][0], values[q][1]) for q in QUANTITIES)
    if theta.numel() == 0:
        check.errors = check.naive = check.bounds = {q: 0.0 for q in QUANTITIES}
        return check
    err, bound = {}, {}
    for q in QUANTITIES:
        got_q, naive_q, ref_q = values[q]
        err[q] = _ulps(got_q, ref_q, scales[q], dtypes[q])
        naive_err = _ulps(naive_q, ref_q, scales[q], dtypes[q])
        bound[q] = LOW_PRECISION_FACTOR * naive_err + LOW_PRECISION_FLOOR_ULPS
        if native[q]:
            bound[q] = torch.clamp(bound[q], min=FLOAT64_STEP_ULPS)
        i = int(torch.argmax(err[q] / bound[q]))
        check.errors[q], check.bounds[q] = float(err[q].reshape(-1)[i]), float(bound[q].reshape(-1)[i])
        check.naive[q] = float(naive_err.reshape(-1)[i])

    over = err["parameters"] > bound["parameters"]
    if bool(over.any()):
        allowed = bound["parameters"] * _spacing(scales["parameters"], p_dtype) + state_propagation(
            m_got, h_got, m_ref, h_ref, hyper, knobs)
        error = (p_got.to(F64) - p_ref).abs()
        state_ok = (err["m"] <= bound["m"]) & (err["h"] <= bound["h"])
        explained = over & state_ok & (error <= allowed)
        check.explained = int(explained.sum())
        unexplained = over & ~explained
        check.unexplained = int(unexplained.sum())
        if check.unexplained:
            i = int(torch.nonzero(unexplained.reshape(-1))[0])
            check.where = (f"{name}[{i}]: got {float(p_got.reshape(-1)[i])!r}, reference {float(p_ref.reshape(-1)[i])!r} "
                           f"({float(err['parameters'].reshape(-1)[i]):.3g} ulps, bound "
                           f"{float(bound['parameters'].reshape(-1)[i]):.3g}), d = {float(d_ref.reshape(-1)[i]):.3g}, "
                           f"m error {float(err['m'].reshape(-1)[i]):.3g} ulps")
        worst_unexplained = torch.where(unexplained, err["parameters"] / bound["parameters"], 0.0)
        i = int(torch.argmax(worst_unexplained if check.unexplained else
                             torch.where(over, 0.0, err["parameters"] / bound["parameters"])))
        check.errors["parameters"] = float(err["parameters"].reshape(-1)[i])
        check.bounds["parameters"] = float(bound["parameters"].reshape(-1)[i])
    for q in ("m", "h"):
        if check.errors[q] > check.bounds[q] and not check.where:
            check.where = f"{q} of {name}: {check.errors[q]:.3g} ulps, bound {check.bounds[q]:.3g}"
    return check


def state_propagation(m_got: Tensor, h_got: Tensor, m_ref: Tensor, h_ref: Tensor, hyper: rule.Hyper,
                      knobs: rule.Knobs) -> Tensor:
    """``lr |u(m_got, h_got) - u(m_ref, h_ref)|`` in float64: how far one step moves a coordinate apart when the
    two sides' new states differ, the direction ``u = clip(m / d, c)`` evaluated by the rule from each state
    (the dialects whose step reads the new m and h: not ``next_step``, nor bias corrections)."""
    if knobs.refresh == "next_step" or knobs.bias_correction or knobs.h_bias_correction != "none":
        raise ValueError("state_propagation covers the dialects whose step reads the new m and h as they are")
    scale, c = rule._scale_and_threshold(hyper, knobs)

    def u(m, h):
        m, h = m.to(F64), h.to(F64)
        return rule._direction(m, rule.denominator(h, scale, hyper.eps, knobs.eps_placement), h, scale, hyper.eps,
                               c, knobs)

    return (u(m_got, h_got) - u(m_ref, h_ref)).abs_().mul_(hyper.lr)


def _reference_step(theta, g, m, h, hhat, t, hyper, knobs, dtype):
    """(p', m', h', d) of rule.update in ``dtype`` (float64: the reference; float32: the naive evaluation)."""
    work = F64 if dtype == F64 else torch.float32
    state = rule.State(t - 1, m.to(work), h.to(work), None, (t - 2) // hyper.hessian_interval + 1)
    new, delta, _ = rule.update(state, theta.to(work), g.to(work), hyper, knobs,
                                None if hhat is None else hhat.to(work))
    theta_new = theta.to(work) + delta
    scale, _ = rule._scale_and_threshold(hyper, knobs)
    h_used = state.h if knobs.refresh == "next_step" else new.h
    d = rule.denominator(h_used, scale, hyper.eps, knobs.eps_placement)
    return theta_new, new.m, new.h, d


def check_kernels(backend: str, dtype: torch.dtype, device: str = "cuda", cfg: Config = SMALL, seed: int = 0,
                  progress=None, make_optimizer=None) -> KernelReport:
    """Teacher-forced conformance of ``Sophia(backend=backend)`` on ``cfg``'s parameter shapes in ``dtype``.
    ``make_optimizer(params, **HYPER)`` replaces it as the implementation under test (its state_dict must take
    per-parameter ``step``, ``m``, ``h`` and ``refreshes``, as Sophia's and SophiaRef's do)."""
    knobs = get_dialect("paper").knobs
    b1, b2 = HYPER["betas"]
    hyper = rule.Hyper(lr=HYPER["lr"], beta1=b1, beta2=b2, gamma=HYPER["gamma"], eps=HYPER["eps"],
                       weight_decay=HYPER["weight_decay"], hessian_interval=HYPER["hessian_interval"])
    generator = torch.Generator(device=device).manual_seed(seed)
    layout = shapes(cfg)
    data = [_tensor_data(shape, dtype, device, generator, b1) for _, shape in layout]
    params = [torch.nn.Parameter(theta.clone()) for theta, *_ in data]
    opt = make_optimizer(params, **HYPER) if make_optimizer is not None else Sophia(params, backend=backend, **HYPER)
    k = hyper.hessian_interval
    checks = []
    for t in (k + 1, k + 2):
        refresh = (t - 1) % k == 0
        state = {i: {"step": t - 1, "m": m.clone(), "h": h.clone(), "refreshes": (t - 2) // k + 1}
                 for i, (_, _, m, h, _) in enumerate(data)}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        with torch.no_grad():
            for p, (theta, g, *_rest) in zip(params, data):
                p.copy_(theta)
                p.grad = g.clone()
        opt.step(hessian_estimate=[hh for *_, hh in data] if refresh else None)
        next_data = []
        for (name, _), p, (theta, g, m, h, hhat) in zip(layout, params, data):
            hh = hhat if refresh else None
            before = (theta.to(F64), g.to(F64), m.to(F64), h.to(F64))
            got = (p.detach(), opt.state[p]["m"], opt.state[p]["h"])
            p_nv, m_nv, h_nv, _ = _reference_step(theta, g, m, h, hh, t, hyper, knobs, torch.float32)
            naive = (p_nv.to(dtype), m_nv, h_nv)
            ref = _reference_step(theta, g, m, h, hh, t, hyper, knobs, F64)
            checks.append(_check_tensor(name, t, dtype, before, got, naive, ref, None if hh is None else hh.to(F64),
                                        hyper, knobs))
            # the next step starts from the reference's result, as the implementation stores it
            next_data.append((ref[0].to(dtype), g, ref[1].float(), ref[2].float(), hhat))
        data = next_data
        if progress:
            progress(f"kernel conformance {backend} {str(dtype).replace('torch.', '')}: step {t} checked")
    numel = sum(math.prod(s) for _, s in layout)
    return KernelReport(backend, str(dtype).replace("torch.", ""), str(device), len(layout), numel, checks)
