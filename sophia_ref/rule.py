"""The Sophia update rule (paper Algorithm 3; SPEC section 1) as pure functions.

One parameter tensor, float64, no side effects: :func:`update` takes a
:class:`State` and returns a new one, the parameter delta and diagnostics.
With the default :class:`Knobs` it is the paper's rule, line for line::

    g_t         = grad L_t(theta_t)
    m_t         = b1 m_{t-1} + (1 - b1) g_t
    h_t         = b2 h_{t-k} + (1 - b2) hhat_t     if (t - 1) mod k == 0
                = h_{t-1}                          otherwise
    theta_t'    = theta_t - eta lam theta_t
    theta_{t+1} = theta_t' - eta clip(m_t / max(gamma h_t, eps), 1)

and the parameter moves by ``delta = -eta lam theta_t - eta clip(...)``, applied
as ``theta_{t+1} = theta_t + delta``.

Every public implementation of Sophia differs from the paper in a few places;
each difference is one field of :class:`Knobs`, never a second copy of the rule
(see :mod:`sophia_ref.dialects` for the named presets):

``form``
    ``"gamma"`` (paper v4): ``eta clip(m / max(gamma h, eps), 1)``;
    ``"rho"`` (paper v1): ``eta clip(m / max(h, eps), rho)``. In the rho form the
    hyperparameter :attr:`Hyper.gamma` holds rho.
``eps_placement``
    ``"max"``: ``max(gamma h, eps)``; ``"add"``: ``gamma h + eps``.
``clip_form``
    ``"clip"``: ``max(min(z, c), -c)``; ``"sign_min"``: ``sign(m) min(|m| / d, c)``,
    which equals the clip when ``d > 0`` but is an unbounded ascent step when
    ``d < 0``.
``bias_correction``
    divide m by ``1 - b1^t`` before the step.
``h_bias_correction``
    ``"none"``; ``"steps"``: the step divides by ``h / (1 - b2^t)``;
    ``"refreshes"``: by ``h / (1 - b2^n)``, n the number of refreshes folded
    into that h (no correction while n = 0). The stored h stays uncorrected.
``estimate_clamp``
    ``"none"``; ``"zero"``: a refresh folds ``max(hhat, 0)`` into h;
    ``"abs"``: it folds ``|hhat|``.
``refresh``
    ``"immediate"``: refresh when ``(t - 1) mod k == 0`` and use the new h in the
    same step; ``"next_step"``: refresh on the same steps, but the step uses the
    h from before the refresh; ``"caller"``: refresh exactly on the steps that
    are given an estimate, and use it at once; ``"never"``: h never changes and
    estimates are ignored.
``batch_factor``
    ``"estimate"``: the estimate already carries the batch factor B (GNB);
    ``"step"``: the denominator multiplies h by :attr:`Hyper.batch_size` at step
    time (the official code's ``bs``).
``momentum_updates``
    how many times m absorbs the gradient per step (1 in the paper).
``weight_decay_form``
    ``"before"`` (paper): ``theta_{t+1} = theta_t - eta lam theta_t - eta u``;
    ``"after"``: ``theta_{t+1} = (theta_t - eta u)(1 - eta lam)``;
    ``"coupled"``: ``g_t + lam theta_t`` enters the momentum and there is no
    decoupled term.

In one step the knobs act in this order: coupled decay of g, the momentum
update(s), the refresh (clamp hhat, fold it into h, count it), the h the step
divides by (``next_step``: the pre-refresh one), bias correction of m, bias
correction of h, the denominator and direction u, and the delta.

A coordinate with zero momentum never moves, even where the denominator is 0
(``eps = 0`` with ``h = 0``): the rule reads ``0 / 0`` as 0, the limit of the
clipped ratio, rather than NaN. Where ``gamma B h`` overflows float64 although h
is finite, the quotient ``m / (gamma B h)`` is evaluated with ``gamma B`` split
into a mantissa and a power of two, so it is the float64 expression as if the
exponent range were unbounded (instead of ``m / inf = 0``).

``delta`` has the dtype ``torch.promote_types(theta.dtype, direction.dtype)``,
whatever the weight decay: float64 whenever theta or the state is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

FORMS = ("gamma", "rho")
EPS_PLACEMENTS = ("max", "add")
CLIP_FORMS = ("clip", "sign_min")
REFRESH_PHASES = ("immediate", "next_step", "caller", "never")
BATCH_FACTORS = ("estimate", "step")
H_BIAS_CORRECTIONS = ("none", "steps", "refreshes")
ESTIMATE_CLAMPS = ("none", "zero", "abs")
WEIGHT_DECAY_FORMS = ("before", "after", "coupled")


def _choice(name: str, value, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not valid; accepted values: {', '.join(map(repr, accepted))}")


@dataclass(frozen=True)
class Knobs:
    """Where a dialect departs from the paper. The defaults are the paper."""

    form: str = "gamma"
    eps_placement: str = "max"
    clip_form: str = "clip"
    bias_correction: bool = False
    refresh: str = "immediate"
    batch_factor: str = "estimate"
    momentum_updates: int = 1
    h_bias_correction: str = "none"
    estimate_clamp: str = "none"
    weight_decay_form: str = "before"

    def __post_init__(self) -> None:
        _choice("form", self.form, FORMS)
        _choice("eps_placement", self.eps_placement, EPS_PLACEMENTS)
        _choice("clip_form", self.clip_form, CLIP_FORMS)
        _choice("refresh", self.refresh, REFRESH_PHASES)
        _choice("batch_factor", self.batch_factor, BATCH_FACTORS)
        _choice("h_bias_correction", self.h_bias_correction, H_BIAS_CORRECTIONS)
        _choice("estimate_clamp", self.estimate_clamp, ESTIMATE_CLAMPS)
        _choice("weight_decay_form", self.weight_decay_form, WEIGHT_DECAY_FORMS)
        if not isinstance(self.bias_correction, bool):
            raise ValueError(f"bias_correction={self.bias_correction!r} is not valid; accepted values: True, False")
        if isinstance(self.momentum_updates, bool) or not isinstance(self.momentum_updates, int) or self.momentum_updates < 1:
            raise ValueError(f"momentum_updates={self.momentum_updates!r} is not valid; accepted range: integers >= 1")

    @property
    def clip_bounded(self) -> bool:
        """Whether every coordinate's step is at most eta*c for every h, h < 0 included."""
        return self.clip_form == "clip" or self.eps_placement == "max"


def _check_real(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    accepted = f"accepted range: {lo}{low}, {high}{hi}" if math.isfinite(high) else f"accepted range: {lo}{low}, inf)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not valid: expected a real number; {accepted}")
    v = float(value)
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if math.isnan(v) or too_low or too_high or (math.isinf(v) and not math.isinf(high)):
        raise ValueError(f"{name}={value!r} is not valid; {accepted}")
    if math.isinf(v):
        raise ValueError(f"{name}={value!r} is not valid: must be finite; {accepted}")


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters of one step: eta, b1, b2, gamma (rho in the rho form), eps, lambda, k, B."""

    lr: float
    beta1: float
    beta2: float
    gamma: float
    eps: float
    weight_decay: float = 0.0
    hessian_interval: int = 1
    batch_size: float = 1.0

    def __post_init__(self) -> None:
        _check_real("lr", self.lr, 0.0, math.inf)
        _check_real("beta1", self.beta1, 0.0, 1.0, high_open=True)
        _check_real("beta2", self.beta2, 0.0, 1.0, high_open=True)
        _check_real("gamma", self.gamma, 0.0, math.inf, low_open=True)
        _check_real("eps", self.eps, 0.0, math.inf)
        _check_real("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_real("batch_size", self.batch_size, 0.0, math.inf, low_open=True)
        k = self.hessian_interval
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"hessian_interval={k!r} is not valid; accepted range: integers >= 1")


class Denominator(NamedTuple):
    """A cache, not state: ``d = max(scale h, eps)`` for one h tensor and the settings it was made with.

    h changes only on refresh steps, so the k - 1 steps between refreshes reuse d
    instead of recomputing it. Valid while ``h`` is the same tensor at the same
    version (no in-place change) and ``key`` matches; never saved in checkpoints.
    """

    h: Tensor
    version: int
    key: tuple
    d: Tensor


class State(NamedTuple):
    """State of one parameter tensor after ``step`` completed steps: the paper's (t, m, h), the number
    of refreshes folded into h (``refreshes``), and an optional :class:`Denominator` cache that
    changes no result."""

    step: int
    m: Tensor
    h: Tensor
    denominator: Denominator | None = None
    refreshes: int = 0


class Diagnostics(NamedTuple):
    """What one step did to one tensor.

    ``direction`` is ``u = clip(m / d, c)``, so the step is ``eta * u``;
    ``clipped`` counts coordinates where the clip bound binds (``|u| == c``: a
    sign step of size eta*c); ``unclipped`` those with ``|u| < c``, whose step is
    the Newton-like ``eta m / d``; ``floored`` those where the scaled curvature
    ``gamma h`` (of the h the step divided by) is at or below eps (flat, zero or
    negative curvature).
    """

    refreshed: bool
    numel: int
    clipped: int
    unclipped: int
    floored: int
    direction: Tensor


def init(theta: Tensor) -> State:
    """``m_0 = 0``, ``h_0 = 0``, ``t = 0``, no refresh yet."""
    zeros = torch.zeros_like(theta, dtype=torch.float64)
    return State(step=0, m=zeros, h=zeros.clone())


def is_refresh_step(t: int, k: int, knobs: Knobs, estimate_given: bool = False) -> bool:
    """Whether step t (1-based) folds a new Hessian estimate into h.

    The paper writes ``t mod k = 1``, which never fires for k = 1; SPEC reads it
    as ``(t - 1) mod k == 0``, refreshing on t = 1, k + 1, 2k + 1, ...
    """
    if knobs.refresh == "caller":
        return estimate_given
    if knobs.refresh == "never":
        return False
    return (t - 1) % k == 0


def update(state: State, theta: Tensor, grad: Tensor, hyper: Hyper, knobs: Knobs = Knobs(),
           hhat: Tensor | None = None) -> tuple[State, Tensor, Diagnostics]:
    """One Sophia step for one tensor: returns ``(new_state, delta, diagnostics)``.

    ``theta``, ``grad`` and ``hhat`` (the Hessian-diagonal estimate, needed on
    refresh steps and ignored on the others) are float64 tensors of one shape.
    """
    t = state.step + 1
    refreshed = is_refresh_step(t, hyper.hessian_interval, knobs, hhat is not None)
    if refreshed and hhat is None:
        raise ValueError(f"step {t} refreshes the Hessian estimate (k={hyper.hessian_interval}) but no estimate was given")
    b1, b2, eta, lam, eps = hyper.beta1, hyper.beta2, hyper.lr, hyper.weight_decay, hyper.eps
    scale, c = _scale_and_threshold(hyper, knobs)                              # gamma (B) and the clip threshold

    # The paper's path, one line per equation, each evaluated as written (b1*m, (1-b1)*g, then the
    # sum: one rounding each); results go to fresh tensors. Knob lines stand beside the equation they alter.
    g = _coupled(grad, theta, lam) if knobs.weight_decay_form == "coupled" else grad  # knob: g_t + lam theta_t
    m = state.m
    for _ in range(knobs.momentum_updates):
        m = torch.mul(m, b1).add_(torch.mul(g, 1 - b1))                       # m_t = b1 m_{t-1} + (1 - b1) g_t
    if refreshed:
        hhat = _clamped(hhat, knobs.estimate_clamp)                           # knob: max(hhat, 0) or |hhat|
        h = torch.mul(state.h, b2).add_(torch.mul(hhat, 1 - b2))              # h_t = b2 h_{t-k} + (1 - b2) hhat_t
    else:
        h = state.h                                                           # h_t = h_{t-1}
    refreshes = state.refreshes + refreshed
    h_used, n = (state.h, state.refreshes) if knobs.refresh == "next_step" else (h, refreshes)  # knob: pre-refresh h
    m_used = torch.div(m, 1 - b1 ** t) if knobs.bias_correction else m        # knob: m_t / (1 - b1^t)
    h_used = _h_corrected(h_used, b2, t, n, knobs.h_bias_correction)         # knob: h_t / (1 - b2^n)
    memo = _cached_denominator(state.denominator, h_used, scale, eps, knobs.eps_placement)
    d = memo.d                                                                # max(gamma h_t, eps)
    u = _direction(m_used, d, h_used, scale, eps, c, knobs)                   # clip(m_t / d, 1)
    delta = _delta(theta, u, eta, lam, knobs.weight_decay_form)               # -eta lam theta_t - eta u

    new = State(step=t, m=m, h=h, denominator=memo, refreshes=refreshes)
    return new, delta, diagnose(refreshed, u, h_used, scale, eps, c, knobs)


# -- the knobs' helpers: each is the identity (or the paper's expression) at the paper's settings --------------

def _scale_and_threshold(hyper: Hyper, knobs: Knobs) -> tuple[float, float]:
    """``(gamma, 1)`` in the gamma form, ``(1, rho)`` in the rho form; the scale times B where B is applied
    at step time."""
    scale, c = (hyper.gamma, 1.0) if knobs.form == "gamma" else (1.0, hyper.gamma)
    if knobs.batch_factor == "step":
        scale = scale * hyper.batch_size
    return scale, c


def _coupled(grad: Tensor, theta: Tensor, lam: float) -> Tensor:
    """``g + lam theta`` (coupled weight decay), two roundings: ``lam theta``, then the sum."""
    return torch.add(grad, torch.mul(theta, lam))


def _clamped(hhat: Tensor, clamp: str) -> Tensor:
    """The estimate folded into h: ``hhat``, ``max(hhat, 0)`` or ``|hhat|``."""
    if clamp == "zero":
        return hhat.clamp(min=0.0)
    if clamp == "abs":
        return hhat.abs()
    return hhat


def _h_corrected(h: Tensor, b2: float, t: int, n: int, correction: str) -> Tensor:
    """``h / (1 - b2^t)`` (``"steps"``), ``h / (1 - b2^n)`` with n refreshes folded in (``"refreshes"``;
    h itself while n = 0), or h (``"none"``)."""
    if correction == "steps":
        return torch.div(h, 1 - b2 ** t)
    if correction == "refreshes" and n > 0:
        return torch.div(h, 1 - b2 ** n)
    return h


def denominator(h: Tensor, scale: float, eps: float, placement: str) -> Tensor:
    """``d = max(scale h, eps)`` (placement ``"max"``) or ``scale h + eps`` (``"add"``)."""
    curvature = torch.mul(h, scale)                                           # gamma h_t
    if placement == "max":
        d = curvature.clamp_(min=eps)                                         # max(gamma h_t, eps)
        if eps == 0.0:
            d.add_(0.0)  # max(-0.0, 0.0) is -0.0; adding +0.0 makes it +0.0, so m / d keeps the sign of m
        return d
    return curvature.add_(eps)                                                # gamma h_t + eps


def _direction(m: Tensor, d: Tensor, h: Tensor, scale: float, eps: float, c: float, knobs: Knobs) -> Tensor:
    """``u = clip(m / d, c)``, or ``sign(m) min(|m| / d, c)``; ``0 / 0`` read as 0."""
    if knobs.clip_form == "clip":
        u = _quotient(m, d, h, scale, eps, knobs.eps_placement).clamp_(-c, c)
    else:
        u = _quotient(m.abs(), d, h, scale, eps, knobs.eps_placement).clamp_(max=c).mul_(torch.sign(m))
    if eps == 0.0 or knobs.eps_placement == "add":
        u.masked_fill_(m == 0, 0.0)
    return u


def _quotient(numerator: Tensor, d: Tensor, h: Tensor, scale: float, eps: float, placement: str) -> Tensor:
    """``numerator / d``, also where ``scale h`` overflows to +-inf with h finite.

    There ``scale = s 2^e`` (``0.5 <= s < 1``) and the quotient is
    ``(numerator / max(s h, eps 2^-e)) 2^-e``: the same two roundings (product,
    quotient) as the float64 expression with an unbounded exponent range (``s h``
    is a normal number whenever ``scale h`` overflows). No other coordinate is touched.
    """
    q = torch.div(numerator, d)
    overflowed = torch.isinf(d) & torch.isfinite(h)
    if bool(overflowed.any()):
        s, e = math.frexp(scale)
        d_scaled = denominator(h[overflowed], s, math.ldexp(eps, -e), placement)
        q[overflowed] = torch.div(numerator[overflowed], d_scaled).mul_(2.0 ** -e)
    return q


def _delta(theta: Tensor, u: Tensor, eta: float, lam: float, form: str) -> Tensor:
    """``theta_{t+1} - theta_t`` for the weight decay form, in ``promote_types(theta.dtype, u.dtype)``:
    before ``-eta lam theta - eta u``; after ``-eta lam (theta - eta u) - eta u``; coupled ``-eta u``."""
    dtype = torch.promote_types(theta.dtype, u.dtype)
    s = torch.mul(u.to(dtype), eta)                                           # eta u
    if lam == 0.0 or form == "coupled":
        return s.neg_()
    decayed = theta.to(dtype) if form == "before" else theta.to(dtype) - s    # the theta the decay multiplies
    return torch.mul(decayed, -(eta * lam)).sub_(s)


# -- off the rule's path: diagnostics and the denominator cache ----------------------------------------------

def diagnose(refreshed: bool, u: Tensor, h: Tensor, scale: float, eps: float, c: float,
             knobs: Knobs) -> Diagnostics:
    """Counts of one step's coordinates: clipped (``|u| = c``), unclipped (``|u| < c``; in a clip-bounded
    form every other coordinate) and floored (``scale h <= eps``, h the one the step divided by)."""
    clipped = int(torch.count_nonzero(u.abs() == c))
    unclipped = u.numel() - clipped if knobs.clip_bounded else int(torch.count_nonzero(u.abs() < c))
    floored = int(torch.count_nonzero(torch.mul(h, scale) <= eps))
    return Diagnostics(refreshed=refreshed, numel=u.numel(), clipped=clipped, unclipped=unclipped,
                       floored=floored, direction=u)


def _cached_denominator(memo: Denominator | None, h: Tensor, scale: float, eps: float,
                        placement: str) -> Denominator:
    """``memo`` if it was made for this very h (same tensor, unchanged since) and settings, else a new one."""
    key = (scale, eps, placement)
    if memo is not None and memo.h is h and memo.version == h._version and memo.key == key:
        return memo
    return Denominator(h, h._version, key, denominator(h, scale, eps, placement))
