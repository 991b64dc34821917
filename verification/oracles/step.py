"""One step of the Sophia rule, every dialect, in exact rational arithmetic.

The oracle core (:func:`exact_step`) is written from SPEC.md sections 1 and 5 and
from the documented semantics of the knobs, not from the reference's code: it
imports nothing of ``sophia_ref``. Every operation of the rule is rational
(products, sums, quotients, max/min, sign, clip, the bias correction
``1 - b1^t``), so :class:`fractions.Fraction` evaluates it exactly; each result
is rounded once to float64 by :meth:`ExactStep.rounded` (``float(Fraction)`` is
``numerator / denominator``, and CPython's integer true division is correctly
rounded, ties to even, subnormals included).

What "exact" means here
    The real-number rule applied to the float64 inputs taken as exact rationals:
    every input (``m``, ``h``, ``theta``, ``g``, ``hhat``) *and every
    hyperparameter* (``lr``, ``beta1``, ... are float64 numbers too) is read as the
    rational it denotes, and every constant the rule derives from them (``1 - b1``,
    ``1 - b2``, ``eta lam``, ``gamma B``, ``b1^t``, ``1 - b1^t``) is computed
    exactly. A float64 implementation rounds those constants as well, so its
    distance to this oracle includes their roundings: that is the honest distance
    to the rule it claims to compute.

The rule, one coordinate, with the knobs of ``sophia_ref.rule.Knobs`` as plain data::

    t        = step + 1                                    (step = completed steps)
    m_t      = b1 m + (1 - b1) g, applied momentum_updates times
    refresh  = hhat given                  (refresh == "caller")
             = (t - 1) mod k == 0          (otherwise; hhat is then required)
    h_t      = b2 h + (1 - b2) hhat  if refresh else h
    h_used   = h (the pre-refresh h)   if refresh == "next_step" else h_t
    m_used   = m_t / (1 - b1^t)        if bias_correction else m_t
    scale, c = gamma, 1 (form "gamma")  |  1, gamma (form "rho": gamma holds rho)
    scale    = scale B                 if batch_factor == "step"
    d        = max(scale h_used, eps)  (eps_placement "max")  |  scale h_used + eps  ("add")
    u        = clip(m_used / d, c)                          (clip_form "clip")
             = sign(m_used) min(|m_used| / d, c)            (clip_form "sign_min")
    delta    = -eta lam theta - eta u
    theta'   = theta + delta

with ``clip(z, c) = max(min(z, c), -c)``. Where ``m_used = 0`` the direction is 0
whatever ``d`` is (``0 / 0`` read as 0: zero momentum never moves). Where ``d = 0``
and ``m_used != 0`` the ratio is infinite with the sign of ``m_used`` (``d = 0``
is the limit of positive denominators: ``max(scale h, 0)``, or ``-eps + eps``), so
both forms give ``sign(m_used) c``; Fractions cannot divide by zero, so this case
is handled explicitly. Where ``d < 0`` (only with ``eps_placement = "add"`` and
``scale h < -eps``) ``sign_min`` is the unbounded ascent ``m_used / d`` and
``clip`` is ``clip(m_used / d, c)``.

Error scales: how far a correct float64 evaluation may be
    A float64 evaluation of the rule rounds every operation. Where an operation
    cancels (``b1 m + (1 - b1) g`` with the two terms nearly opposite,
    ``-eta lam theta - eta u`` likewise, ``theta + delta ~ 0``, ``scale h + eps``
    near 0) the result's own ulps are meaningless: the rounding errors of the
    operands, each up to half an ulp of the *operand*, survive the cancellation.
    With ``error_scales=True`` (the default) :func:`exact_step` also propagates,
    per quantity and coordinate, along the evaluation in the order of the equations
    above (each operation correctly rounded):

    - ``S`` (``scales``): the largest operand magnitude on the path, "the operand
      scale": the largest of the magnitudes rounded, each weighted by how it reaches
      the result (``a + b``: ``max(S_a, S_b, own)``; ``a b``: ``max(S_a |b|, |a| S_b, own)``;
      ``a / d``: ``max(S_a / |d|, |a / d| S_d / |d|, own)``);
    - ``mu`` (``bounds``): the same terms summed instead of maxed, the first-order
      running error bound: ``|float - exact| <= U mu`` (``U = 2^-53``) to first order;
    - ``n`` (``roundings``): the number of roundings on the path, so ``mu <= n S``.

    ``own`` is what an operation's own rounding adds: nothing when its operands are
    exact and its exact result is a float64 (IEEE operations are correctly rounded),
    else ``|v|``, or ``2^-1022`` below the normal range, where one rounding errs by up
    to ``2^-1075 = U 2^-1022`` rather than ``U |v|``. Inputs are exact (0). A product
    with an exact zero, or a quotient of one, is an exact 0. ``max(x, eps)`` and the
    clip are 1-Lipschitz and pass the scales through, except where the exact value is
    past the kink by more than ``2 U mu``: the float result is then the constant
    (``eps``, ``+-c``) exactly. A quotient by a denominator whose bound exceeds
    ``2^-20`` of it (the float denominator may be 0 or of the other sign, or first
    order fails), and ``m / 0`` with ``m`` inexact, are *singular*: scales ``None``.

    Where nothing cancels and no rounding is subnormal, ``S <= |v|`` (to rounding) and
    ``mu <= n |v|``: ulps at scale ``max(|v|, S)`` are then ulps of the result itself.
    A 2-ulp bound at the largest-operand scale is *not* something a float64 evaluation
    can promise: n roundings each up to ``U S < 1 ulp(S)`` allow ``n + 1/2`` ulps from the
    correctly rounded value, and 3 to 3.5 are measured (paths of 5 to 20 roundings). At
    scale ``max(|v|, mu)`` first-order theory gives at most ``1 + 1/2``: that is the scale
    :func:`check_step_oracle` holds to 2 ulps.

:func:`check_step_oracle` (the one function here that imports the reference, to call
it) runs seeded random states, boundaries mixed in, through the reference and the
oracle for every dialect and reports the worst distance as a
:class:`verification.report.CheckResult`.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, is_dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

__all__ = [
    "ExactStep", "RoundedStep", "exact_step", "is_refresh", "round_fraction", "ulp_of", "is_float64",
    "distance_ulps", "within_first_order_bound", "Tally", "compare_one", "random_case", "reference_step",
    "run_cases", "check_step_oracle", "QUANTITIES", "U",
]

U = Fraction(1, 2**53)            # unit roundoff of float64
TINY = Fraction(1, 2**1022)       # smallest normal float64; below it one rounding errs by up to 2^-1075 = U TINY
SINGULAR = 2**20                  # a denominator whose error bound exceeds 2^-20 of it is singular
SLACK = Fraction(1, 2**16)        # relative room for second-order terms in the first-order bound
_ONE, _ZERO = Fraction(1), Fraction(0)

KNOB_DEFAULTS: Mapping[str, Any] = {  # SPEC section 1: the paper
    "form": "gamma", "eps_placement": "max", "clip_form": "clip", "bias_correction": False,
    "refresh": "immediate", "batch_factor": "estimate", "momentum_updates": 1,
}
_KNOB_VALUES = {
    "form": ("gamma", "rho"), "eps_placement": ("max", "add"), "clip_form": ("clip", "sign_min"),
    "refresh": ("immediate", "next_step", "caller"), "batch_factor": ("estimate", "step"),
}
HYPER_DEFAULTS: Mapping[str, Any] = {"weight_decay": 0.0, "hessian_interval": 1, "batch_size": 1.0}
_HYPER_REQUIRED = ("lr", "beta1", "beta2", "gamma", "eps")

QUANTITIES = ("m", "h", "u", "delta", "theta")  # what the comparison measures, per coordinate


# -- plain-data access ----------------------------------------------------------------------------------------

def _get(source, name: str, defaults: Mapping[str, Any]):
    if isinstance(source, Mapping):
        if name in source:
            return source[name]
    elif hasattr(source, name):
        return getattr(source, name)
    if name in defaults:
        return defaults[name]
    raise ValueError(f"missing {name!r}: pass a mapping or an object with that field")


def _knobs(knobs) -> dict[str, Any]:
    if is_dataclass(knobs) and not isinstance(knobs, type):
        knobs = asdict(knobs)
    out = {name: _get(knobs, name, KNOB_DEFAULTS) for name in KNOB_DEFAULTS}
    for name, accepted in _KNOB_VALUES.items():
        if out[name] not in accepted:
            raise ValueError(f"{name}={out[name]!r} is not valid; accepted values: {', '.join(map(repr, accepted))}")
    if not isinstance(out["bias_correction"], bool):
        raise ValueError(f"bias_correction={out['bias_correction']!r} is not valid; accepted values: True, False")
    n = out["momentum_updates"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"momentum_updates={n!r} is not valid; accepted range: integers >= 1")
    return out


def _hyper(hyper) -> dict[str, Any]:
    if is_dataclass(hyper) and not isinstance(hyper, type):
        hyper = asdict(hyper)
    out = {name: _get(hyper, name, HYPER_DEFAULTS) for name in (*_HYPER_REQUIRED, *HYPER_DEFAULTS)}
    for name in ("lr", "beta1", "beta2", "gamma", "eps", "weight_decay", "batch_size"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, (int, float, Fraction)) or not math.isfinite(v):
            raise ValueError(f"{name}={v!r} is not valid: expected a finite real number")
    if not (0 <= out["beta1"] < 1 and 0 <= out["beta2"] < 1):
        raise ValueError("beta1 and beta2 must lie in [0, 1)")
    if not (out["gamma"] > 0 and out["batch_size"] > 0 and out["lr"] >= 0 and out["eps"] >= 0
            and out["weight_decay"] >= 0):
        raise ValueError("need gamma > 0, batch_size > 0, lr >= 0, eps >= 0, weight_decay >= 0")
    k = out["hessian_interval"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"hessian_interval={k!r} is not valid; accepted range: integers >= 1")
    return out


# -- float64 facts about rationals ----------------------------------------------------------------------------

def round_fraction(x: Fraction) -> float:
    """``x`` correctly rounded to float64 (ties to even); +-inf where it overflows."""
    try:
        return float(x)  # numerator / denominator: CPython's int true division is correctly rounded
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def is_float64(x: Fraction) -> bool:
    """Whether the rational ``x`` is a (finite) float64 number."""
    n, d = abs(x.numerator), x.denominator
    if n == 0:
        return True
    if d & (d - 1):                                   # the denominator is not a power of two
        return False
    zeros = (n & -n).bit_length() - 1                 # x = odd 2^e
    odd, e = n >> zeros, zeros - (d.bit_length() - 1)
    return odd.bit_length() <= 53 and e >= -1074 and odd.bit_length() + e <= 1024


def _floor_log2(x: Fraction) -> int:
    """``e`` with ``2^e <= x < 2^(e+1)``, for ``x > 0``."""
    n, d = x.numerator, x.denominator
    e = n.bit_length() - d.bit_length()
    if (n << -e if e < 0 else n) < (d << e if e > 0 else d):
        e -= 1
    return e


def ulp_of(x: Fraction) -> Fraction:
    """The float64 ulp at magnitude ``|x|`` (``2^-1074`` below the normal range; past the overflow threshold
    the same formula, extended), as an exact rational."""
    if x == 0:
        return Fraction(1, 2**1074)
    return Fraction(2) ** max(_floor_log2(abs(x)) - 52, -1074)


def _sign(x: Fraction) -> int:
    return (x > 0) - (x < 0)


# -- two arithmetics for one rule: exact values only, or values with their error scales ----------------------

class _Values:
    """Exact rational arithmetic, nothing else (the fast path)."""

    @staticmethod
    def inp(v: Fraction) -> Fraction:
        return v

    const = inp

    @staticmethod
    def const_pow(v: Fraction) -> Fraction:
        return v

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def neg(a):
        return -a

    @staticmethod
    def mul(a, b):
        return a * b

    @staticmethod
    def floor_at(x, floor):
        return max(x, floor)

    @staticmethod
    def direction(m, d, c, clip_form):
        if m == 0:
            return _ZERO                                   # zero momentum never moves, whatever d is
        if d == 0:
            return c * _sign(m)                            # m / 0 = sign(m) infinity, clipped: sign(m) c
        r = m / d
        if clip_form == "sign_min" and d < 0:
            return r                                       # sign(m) |m| / d = m / d: the unbounded ascent
        return max(min(r, c), -c)                          # d > 0: sign(m) min(|m|/d, c) = clip(m/d, c)

    @staticmethod
    def div(a, d):
        return a / d

    @staticmethod
    def value(x) -> Fraction:
        return x


class _X:
    """An exact value ``v`` with its operand scale ``s``, first-order error magnitude ``b`` (mu), rounding
    count ``n`` (module docstring), and ``tiny``: whether a rounding on the path fell below the normal
    range. ``s`` and ``b`` None: singular."""

    __slots__ = ("v", "s", "b", "n", "tiny")

    def __init__(self, v: Fraction, s: Fraction | None = _ZERO, b: Fraction | None = _ZERO, n: int = 0,
                 tiny: bool = False):
        self.v, self.s, self.b, self.n, self.tiny = v, s, b, n, tiny

    @property
    def exact(self) -> bool:
        return self.b == 0


def _own(v: Fraction, exact_operands: bool, ulps: int = 1) -> Fraction:
    if exact_operands and is_float64(v):
        return _ZERO
    return ulps * max(abs(v), TINY)


def _max(*terms) -> Fraction | None:
    return None if any(t is None for t in terms) else max(terms)


def _sum(a, b, c) -> Fraction | None:
    return None if a is None or b is None else a + b + c


def _times(s: Fraction | None, k: Fraction) -> Fraction | None:
    return None if s is None else s * abs(k)


class _Tracked:
    """Exact values with their error scales (module docstring)."""

    @staticmethod
    def inp(v: Fraction) -> _X:
        return _X(v)

    @staticmethod
    def const(v: Fraction, ulps: int = 1) -> _X:
        """A constant the rule derives from float hyperparameters by one float64 operation (1 - b1, eta lam)."""
        o = _own(v, True, ulps)
        return _X(v, o, o, int(o != 0), o == TINY)

    @staticmethod
    def const_pow(v: Fraction) -> _X:
        return _Tracked.const(v, ulps=2)                   # a libm pow may err by an ulp, not half of one

    @staticmethod
    def add(a: _X, b: _X) -> _X:
        v = a.v + b.v
        o = _own(v, a.exact and b.exact)
        return _X(v, _max(a.s, b.s, o), _sum(a.b, b.b, o), a.n + b.n + (o != 0), a.tiny or b.tiny or o == TINY)

    @staticmethod
    def neg(a: _X) -> _X:
        return _X(-a.v, a.s, a.b, a.n, a.tiny)

    @staticmethod
    def mul(a: _X, b: _X) -> _X:
        if (a.v == 0 and a.exact) or (b.v == 0 and b.exact):
            return _X(_ZERO)                               # 0 times any float is 0: no rounding, no error
        v = a.v * b.v
        o = _own(v, a.exact and b.exact)
        return _X(v, _max(_times(a.s, b.v), _times(b.s, a.v), o), _sum(_times(a.b, b.v), _times(b.b, a.v), o),
                  a.n + b.n + (o != 0), a.tiny or b.tiny or o == TINY)

    @staticmethod
    def singular(d: _X) -> bool:
        """Whether d's float value may be far from d (first order fails), 0, or of the other sign."""
        return d.b is None or (d.b != 0 and abs(d.v) <= SINGULAR * U * d.b)

    @staticmethod
    def div(a: _X, d: _X) -> _X:
        """``a / d`` for ``d.v != 0``."""
        if a.v == 0 and a.exact:
            return _X(_ZERO)                               # 0 / a nonzero float is 0
        if _Tracked.singular(d) or a.b is None:
            return _X(a.v / d.v, None, None, a.n + d.n + 1)
        v = a.v / d.v
        o = _own(v, a.exact and d.exact)
        k = 1 / abs(d.v)
        return _X(v, _max(a.s * k, abs(v) * d.s * k, o), _sum(a.b * k, abs(v) * d.b * k, o), a.n + d.n + (o != 0),
                  a.tiny or d.tiny or o == TINY)

    @staticmethod
    def _beyond(past: Fraction, x: _X) -> bool:
        """Whether x is past a kink by more than its float value can err: the float result is the constant."""
        return x.b is not None and past > 2 * U * x.b

    @staticmethod
    def floor_at(x: _X, floor: Fraction) -> _X:
        """``max(x, floor)`` for an exact float ``floor`` (1-Lipschitz: x's error passes through)."""
        if x.v > floor:
            return x
        return _X(floor) if _Tracked._beyond(floor - x.v, x) else _X(floor, x.s, x.b, x.n, x.tiny)

    @staticmethod
    def clip(r: _X, c: Fraction) -> _X:
        """``max(min(r, c), -c)`` (1-Lipschitz)."""
        if abs(r.v) <= c:
            return r
        cc = c if r.v > 0 else -c
        return _X(cc) if _Tracked._beyond(abs(r.v) - c, r) else _X(cc, r.s, r.b, r.n, r.tiny)

    @staticmethod
    def direction(m: _X, d: _X, c: Fraction, clip_form: str) -> _X:
        """``u = clip(m / d, c)`` or ``sign(m) min(|m| / d, c)``; the same values as :meth:`_Values.direction`."""
        if m.v == 0 and m.exact:
            return _X(_ZERO)
        if d.v == 0:
            m_may_vanish = m.b is None or abs(m.v) <= 2 * U * m.b
            if not d.exact or m_may_vanish:                # the float d may be nonzero, or the float m zero
                return _X(c * _sign(m.v), None, None, m.n + d.n)
            return _X(c * _sign(m.v))
        r = _Tracked.div(m, d)
        if clip_form == "sign_min" and d.v < 0:
            return r
        return _Tracked.clip(r, c)

    @staticmethod
    def value(x: _X) -> Fraction:
        return x.v


# -- the oracle -----------------------------------------------------------------------------------------------

def _fractions(name: str, values: Sequence[float], n: int | None) -> list[Fraction]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, Fraction)) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite real numbers, got {v!r}")
        out.append(Fraction(v))
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} coordinates, expected {n}")
    return out


@dataclass(frozen=True)
class RoundedStep:
    """An :class:`ExactStep` with every exact value correctly rounded to float64 (+-inf where it overflows)."""

    t: int
    refreshed: bool
    m: tuple[float, ...]
    h: tuple[float, ...]
    u: tuple[float, ...]
    delta: tuple[float, ...]
    theta: tuple[float, ...]


@dataclass(frozen=True)
class ExactStep:
    """One step, exactly, per coordinate.

    ``m`` and ``h`` are the new state (``m_t``, ``h_t``); ``m_used``, ``h_used`` and ``d``
    what the step divides (bias-corrected m, the pre-refresh h in the ``next_step``
    phase, the denominator); ``u`` the direction; ``decay = eta lam theta``;
    ``delta = -decay - eta u``; ``theta = theta + delta`` (the new parameter); ``c`` the
    clip threshold. With error scales, for each of those quantities ``q``:
    ``scales[q][i]`` (largest operand magnitude ``S``), ``bounds[q][i]`` (first-order
    error magnitude ``mu``: ``|float - exact| <= U mu``), ``roundings[q][i]`` (``n``,
    ``mu <= n S``), ``subnormal_roundings[q][i]`` (whether one of them fell below the
    normal range, where it errs by up to 2^-1075 whatever the value); scales and bounds
    ``None`` where coordinate ``i`` is singular. Without error scales these are ``None``.
    """

    t: int
    refreshed: bool
    c: Fraction
    m: tuple[Fraction, ...]
    h: tuple[Fraction, ...]
    m_used: tuple[Fraction, ...]
    h_used: tuple[Fraction, ...]
    d: tuple[Fraction, ...]
    u: tuple[Fraction, ...]
    decay: tuple[Fraction, ...]
    delta: tuple[Fraction, ...]
    theta: tuple[Fraction, ...]
    scales: Mapping[str, tuple[Fraction | None, ...]] | None = None
    bounds: Mapping[str, tuple[Fraction | None, ...]] | None = None
    roundings: Mapping[str, tuple[int, ...]] | None = None
    subnormal_roundings: Mapping[str, tuple[bool, ...]] | None = None

    def rounded(self) -> RoundedStep:
        r = lambda xs: tuple(round_fraction(x) for x in xs)
        return RoundedStep(self.t, self.refreshed, r(self.m), r(self.h), r(self.u), r(self.delta), r(self.theta))


def is_refresh(t: int, k: int, refresh: str, estimate_given: bool) -> bool:
    """SPEC section 1: refresh on ``(t - 1) mod k == 0``; the caller phase refreshes when given an estimate."""
    return estimate_given if refresh == "caller" else (t - 1) % k == 0


_NAMES = ("m", "h", "m_used", "h_used", "d", "u", "decay", "delta", "theta")


def exact_step(knobs, hyper, step: int, m: Sequence[float], h: Sequence[float], theta: Sequence[float],
               g: Sequence[float], hhat: Sequence[float] | None = None, *, error_scales: bool = True) -> ExactStep:
    """One Sophia step of every coordinate, in exact rationals.

    ``knobs``: a mapping or object with the fields of ``sophia_ref.rule.Knobs`` (missing ones take the
    paper's values); ``hyper``: likewise for ``Hyper`` (``lr``, ``beta1``, ``beta2``, ``gamma`` (rho in
    the rho form) and ``eps`` required; ``weight_decay`` 0, ``hessian_interval`` 1, ``batch_size`` 1 by
    default). ``step`` is the number of completed steps (the state's counter): this is step
    ``t = step + 1``. ``m``, ``h`` are the state, ``theta`` the parameter, ``g`` the gradient, ``hhat``
    the Hessian-diagonal estimate (required on refresh steps, ignored on the others; in the ``caller``
    phase, giving one is what makes a refresh step). Inputs are lists of finite floats.
    ``error_scales=False`` skips the scales (several times faster).
    """
    kn, hp = _knobs(knobs), _hyper(hyper)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} is not valid; accepted range: integers >= 0")
    m0 = _fractions("m", m, None)
    n = len(m0)
    h0, th, gs = _fractions("h", h, n), _fractions("theta", theta, n), _fractions("g", g, n)
    t = step + 1
    refreshed = is_refresh(t, hp["hessian_interval"], kn["refresh"], hhat is not None)
    if refreshed and hhat is None:
        raise ValueError(f"step {t} refreshes the Hessian estimate (k={hp['hessian_interval']}) "
                         "but no estimate was given")
    hh = _fractions("hhat", hhat, n) if refreshed else None

    A = _Tracked if error_scales else _Values
    b1, b2, eta, lam, eps, gamma, B = (Fraction(hp[k]) for k in
                                       ("beta1", "beta2", "lr", "weight_decay", "eps", "gamma", "batch_size"))
    one_b1, one_b2, eta_lam = A.const(1 - b1), A.const(1 - b2), A.const(eta * lam)  # rounded by a float rule
    if kn["bias_correction"]:
        power = A.inp(b1) if t == 1 else A.const_pow(b1 ** t)     # b1^1 is b1 itself
        bias = A.add(A.inp(_ONE), A.neg(power))                   # 1 - b1^t > 0
    scale = A.inp(gamma if kn["form"] == "gamma" else _ONE)
    c = _ONE if kn["form"] == "gamma" else gamma
    if kn["batch_factor"] == "step":
        scale = A.mul(scale, A.inp(B))                            # gamma B, or B in the rho form
    B1, Eta, Eps = A.inp(b1), A.inp(eta), A.inp(eps)

    cols: dict[str, list] = {name: [] for name in _NAMES}
    for i in range(n):
        mi = A.inp(m0[i])
        for _ in range(kn["momentum_updates"]):
            mi = A.add(A.mul(mi, B1), A.mul(A.inp(gs[i]), one_b1))              # b1 m + (1 - b1) g
        hi = A.add(A.mul(A.inp(h0[i]), A.inp(b2)), A.mul(A.inp(hh[i]), one_b2)) if refreshed else A.inp(h0[i])
        h_used = A.inp(h0[i]) if kn["refresh"] == "next_step" else hi
        m_used = A.div(mi, bias) if kn["bias_correction"] else mi
        curvature = A.mul(h_used, scale)                                      # scale h
        d = A.floor_at(curvature, eps) if kn["eps_placement"] == "max" else A.add(curvature, Eps)
        u = A.direction(m_used, d, c, kn["clip_form"])
        decay = A.mul(A.inp(th[i]), eta_lam)                                  # eta lam theta
        delta = A.add(A.neg(decay), A.neg(A.mul(u, Eta)))                     # -eta lam theta - eta u
        new_theta = A.add(A.inp(th[i]), delta)
        for name, x in zip(_NAMES, (mi, hi, m_used, h_used, d, u, decay, delta, new_theta)):
            cols[name].append(x)

    vals = {name: tuple(A.value(x) for x in xs) for name, xs in cols.items()}
    extra = {}
    if error_scales:
        extra = dict(scales={name: tuple(x.s for x in xs) for name, xs in cols.items()},
                     bounds={name: tuple(x.b for x in xs) for name, xs in cols.items()},
                     roundings={name: tuple(x.n for x in xs) for name, xs in cols.items()},
                     subnormal_roundings={name: tuple(x.tiny for x in xs) for name, xs in cols.items()})
    return ExactStep(t=t, refreshed=refreshed, c=c, **vals, **extra)


# -- comparing a float64 result with the oracle ---------------------------------------------------------------

def distance_ulps(got: float, exact: Fraction, scale: Fraction | None = _ZERO, target: float | None = None) -> float:
    """``|got - round(exact)|`` in ulps of ``max(|exact|, scale)``: the distance to the correctly rounded value
    (0: correctly rounded; -0.0 and 0.0 are equal), at a larger scale than the result's own where ``scale``
    exceeds it. ``inf`` for a singular scale (None) with a nonzero distance. ``target``: round(exact), if known."""
    if target is None:
        target = round_fraction(exact)
    if got == target:
        return 0.0
    if scale is None:
        return math.inf
    return float(abs(Fraction(got) - Fraction(target)) / ulp_of(max(abs(exact), scale)))


def within_first_order_bound(got: float, exact: Fraction, mu: Fraction | None) -> bool:
    """``|got - exact| <= U mu`` (with 2^-16 relative room for second-order terms): the rigorous criterion."""
    if mu is None:
        return True
    return abs(Fraction(got) - exact) <= U * mu * (1 + SLACK)


class Tally:
    """Worst distances, categorized counts and skips of a comparison run; keys are (dialect, quantity).

    ``worst``: ulps at the error-magnitude scale ``max(|v|, mu)`` (the check's number); ``worst_operand``:
    ulps at the largest-operand scale ``max(|v|, S)``; ``worst_result``: ulps of the result itself;
    ``worst_case``: a description of the worst coordinate at the largest-operand scale. ``above_one`` and
    ``above_two``: (quantity, (roundings, S > |v|, subnormal rounding)) -> coordinates above 1 and 2 ulps at
    the largest-operand scale; ``cancelled``: quantity -> coordinates above 2 ulps of the result itself;
    ``outside_bound``: coordinates farther than ``U mu`` from the exact value;
    ``not_correctly_rounded_with_one_rounding``: coordinates with at most one rounding on the path that are
    not the correctly rounded value; ``skipped``: reason -> count; ``coordinates``, ``measured`` and
    ``correctly_rounded`` (in every quantity) counts.
    """

    def __init__(self):
        self.worst, self.worst_operand, self.worst_result, self.worst_case = {}, {}, {}, {}
        self.above_one, self.above_two, self.cancelled, self.skipped = Counter(), Counter(), Counter(), Counter()
        self.outside_bound: list[str] = []
        self.not_correctly_rounded_with_one_rounding: list[str] = []
        self.coordinates = self.measured = self.correctly_rounded = 0

    def overall(self, which: str = "worst") -> float:
        return max(getattr(self, which).values(), default=0.0)


def _categories(q: str, x: ExactStep, i: int) -> tuple[int, bool, bool]:
    """Why coordinate i of quantity q may exceed 1 ulp: (roundings on its path, S > |v| (cancellation, or an
    absolute subnormal rounding error upstream), a rounding in the subnormal range on the path)."""
    v, s = getattr(x, q)[i], x.scales[q][i]
    return x.roundings[q][i], s is not None and s > abs(v), x.subnormal_roundings[q][i]


def _describe(dialect, q, i, got, x, kn, hp, args) -> str:
    """Coordinate i of the inputs ``args``; ``x`` is the oracle of that one coordinate."""
    m, h, theta, g, hhat = args
    exact, s, mu = getattr(x, q)[0], x.scales[q][0], x.bounds[q][0]
    return (f"{dialect} {q}[{i}]: got {got!r}, correctly rounded {round_fraction(exact)!r} "
            f"({distance_ulps(got, exact, mu):.3g} ulp at scale max(|v|, mu), {distance_ulps(got, exact, s):.3g} at "
            f"max(|v|, S), {distance_ulps(got, exact):.3g} of the result, {x.roundings[q][0]} roundings); "
            f"t={x.t} knobs={kn} hyper={hp} m={m[i]!r} h={h[i]!r} theta={theta[i]!r} g={g[i]!r} "
            f"hhat={None if hhat is None else hhat[i]!r}")


def compare_one(tally: Tally, dialect: str, knobs, hyper, step: int, m, h, theta, g, hhat,
                ref: Mapping[str, Sequence[float]], bound: float = 2.0) -> list[str]:
    """Measure one reference step (``ref``: lists of floats for m, h, u, delta, theta) against the oracle.

    Returns descriptions of the coordinates that fail: farther than ``bound`` ulps at scale
    ``max(|v|, mu)``, or outside the first-order bound ``U mu``. Skipped and counted: coordinates
    where the reference overflowed (a non-finite output), where an exact value rounds to +-inf, and
    singular ones (a float denominator that may vanish or flip sign) not equal to the correctly
    rounded values. A coordinate equal to the correctly rounded values is within every bound
    (``mu >= |v|`` wherever ``v`` is not a float64), so its scales are not computed.
    """
    kn, hp = _knobs(knobs), _hyper(hyper)
    fast = exact_step(kn, hp, step, m, h, theta, g, hhat, error_scales=False)
    failures = []
    for i in range(len(m)):
        tally.coordinates += 1
        got = {q: ref[q][i] for q in QUANTITIES}
        if not all(math.isfinite(v) for v in got.values()):
            tally.skipped["the reference overflowed to inf (the exact value too: beyond float64 range)"] += 1
            continue
        if all(got[q] == round_fraction(getattr(fast, q)[i]) for q in QUANTITIES):
            tally.measured += 1
            tally.correctly_rounded += 1
            for q in QUANTITIES:
                for table in (tally.worst, tally.worst_operand, tally.worst_result):
                    table.setdefault((dialect, q), 0.0)
            continue
        one = lambda xs: None if xs is None else [xs[i]]
        args = ([m[i]], [h[i]], [theta[i]], [g[i]], one(hhat))
        x = exact_step(kn, hp, step, *args, error_scales=True)
        if any(x.bounds[q][0] is None for q in QUANTITIES):
            tally.skipped["singular: the float denominator may vanish or flip sign"] += 1
            continue
        if not all(math.isfinite(round_fraction(getattr(x, q)[0])) for q in QUANTITIES):
            tally.skipped["an exact value beyond float64 range, the reference finite"] += 1
            continue
        tally.measured += 1
        for q in QUANTITIES:
            exact, scale, mu = getattr(x, q)[0], x.scales[q][0], x.bounds[q][0]
            target = round_fraction(exact)
            if got[q] == target:                           # correctly rounded: within every bound (mu >= |v|
                for table in (tally.worst, tally.worst_operand, tally.worst_result):  # where v is no float64)
                    table.setdefault((dialect, q), 0.0)
                continue
            ulps, operand, own = (distance_ulps(got[q], exact, mu, target), distance_ulps(got[q], exact, scale, target),
                                  distance_ulps(got[q], exact, _ZERO, target))
            key = (dialect, q)
            tally.worst[key] = max(tally.worst.get(key, 0.0), ulps)
            tally.worst_result[key] = max(tally.worst_result.get(key, 0.0), own)
            if operand > tally.worst_operand.get(key, -1.0):
                tally.worst_operand[key] = operand
                tally.worst_case[key] = _describe(dialect, q, i, got[q], x, kn, hp, (m, h, theta, g, hhat))
            if operand > 1:
                tally.above_one[(q, _categories(q, x, 0))] += 1
            if operand > 2:
                tally.above_two[(q, _categories(q, x, 0))] += 1
            if own > 2:
                tally.cancelled[q] += 1
            if ulps > 0 and x.roundings[q][0] <= 1:
                tally.not_correctly_rounded_with_one_rounding.append(
                    _describe(dialect, q, i, got[q], x, kn, hp, (m, h, theta, g, hhat)))
            inside = within_first_order_bound(got[q], exact, mu)
            if not inside:
                tally.outside_bound.append(_describe(dialect, q, i, got[q], x, kn, hp, (m, h, theta, g, hhat)))
            if ulps > bound or not inside or (ulps > 0 and x.roundings[q][0] <= 1):
                failures.append(_describe(dialect, q, i, got[q], x, kn, hp, (m, h, theta, g, hhat)))
    return failures


def summarize(counter: Counter, threshold: str) -> list[str]:
    """One line per quantity of the coordinates counted in ``counter`` (keys: (q, (n, cancel, subnormal)))."""
    lines = []
    for q in QUANTITIES:
        items = [(cat, k) for (qq, cat), k in counter.items() if qq == q]
        if not items:
            continue
        total = sum(k for _, k in items)
        ns = [cat[0] for cat, _ in items]
        cancel = sum(k for cat, k in items if cat[1])
        sub = sum(k for cat, k in items if cat[2])
        lines.append(f"{total} coordinate(s) of {q} above {threshold} at the largest-operand scale, on paths of "
                     f"{min(ns)}-{max(ns)} roundings (each errs by at most U S < 1 ulp of S: bound n + 1/2 ulp "
                     f"from the rounded value); {cancel} with S > |v| (cancellation), {sub} with a rounding in the "
                     f"subnormal range on the path")
    return lines


# -- seeded random states, boundaries mixed in ----------------------------------------------------------------

SUBNORMALS = (5e-324, 1e-320, 2.2250738585072e-310, 2.2250738585072014e-308 / 2, 1e-310)


def _real(rng: random.Random, low: float = -20.0, high: float = 20.0) -> float:
    """A signed float, log-uniform in magnitude over [10^low, 10^high], sometimes a small integer or +-0."""
    r = rng.random()
    if r < 0.05:
        return rng.choice((0.0, -0.0))
    if r < 0.15:
        return float(rng.randint(-8, 8))
    return rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(low, high)


def _subnormal(rng: random.Random) -> float:
    if rng.random() < 0.5:
        return rng.choice((-1.0, 1.0)) * rng.choice(SUBNORMALS)
    return rng.choice((-1.0, 1.0)) * rng.randint(1, 2**52 - 1) * 2.0**-1074


def random_hyper(rng: random.Random) -> dict:
    """Hyperparameters with the boundary values drawn on purpose (b1 = 0, powers of two, eps = 0, ...)."""
    pick = lambda options, draw: rng.choice(options) if rng.random() < 0.7 else draw()
    return dict(
        lr=pick((1.0, 0.5, 1e-3, 6e-4), lambda: 10.0 ** rng.uniform(-6, 0)),
        beta1=pick((0.0, 0.0, 0.9, 0.96, 0.965, 0.5, 0.3), lambda: rng.uniform(0.0, 0.999)),
        beta2=pick((0.0, 0.99, 0.5, 0.999), lambda: rng.uniform(0.0, 0.999)),
        gamma=pick((0.01, 0.04, 0.05, 0.5, 0.25, 2.0**-7, 1.0, 2.0), lambda: 10.0 ** rng.uniform(-3, 1)),
        eps=rng.choice((0.0, 1e-15, 1e-12, 1e-8, 2.0**-30, 1e-3)),
        weight_decay=pick((0.0, 0.0, 0.1, 0.2), lambda: rng.uniform(0.0, 0.5)),
        hessian_interval=rng.randint(1, 4),
        batch_size=rng.choice((1.0, 4.0, 480.0, 5120.0)),
    )


KINDS = ("generic", "zero_h", "negative_h", "eps_boundary", "clip_boundary", "subnormal", "huge", "tiny", "zero_m")


def random_coordinate(rng: random.Random, hyper: dict, kind: str) -> tuple[float, float, float, float, float]:
    """(m, h, theta, g, hhat) of one coordinate of the given kind.

    ``eps_boundary``: ``h = hhat = +-eps / s`` for ``s`` one of the scales the dialects use (gamma,
    gamma B, 1, B): exactly ``scale h == eps`` (or ``== -eps``: d = 0 in the added-eps form) where the
    quotient is exact (powers of two); the refreshed ``b2 h + (1 - b2) hhat`` is the same value exactly.
    ``clip_boundary``: ``|g| = s h`` (+ eps sometimes), so with b1 = 0 (m_t = g) ``|m| / d`` is exactly
    the clip threshold (c = 1 in the gamma form; in the rho form ``|m| / h = rho`` is the same equation).
    ``huge``: magnitudes 1e250 to 1e300; ``tiny``: 1e-300 to 1e-250; ``subnormal``: some fields subnormal.
    """
    m, h, theta, g, hhat = (_real(rng) for _ in range(5))
    gamma, B, eps = hyper["gamma"], hyper["batch_size"], hyper["eps"]
    s = rng.choice((gamma, gamma * B, 1.0, B))
    if kind == "zero_h":
        h, hhat = rng.choice((0.0, -0.0)), rng.choice((0.0, -0.0, hhat))
    elif kind == "negative_h":
        h, hhat = -abs(h), -abs(hhat)
    elif kind == "eps_boundary":
        h = hhat = rng.choice((1.0, -1.0)) * (eps if eps > 0 else rng.choice((0.0, 1e-12))) / s
    elif kind == "clip_boundary":
        h = hhat = abs(_real(rng, -10, 10)) or 1.0
        g = rng.choice((1.0, -1.0)) * (s * h + (eps if rng.random() < 0.3 else 0.0))
    elif kind == "subnormal":
        values = [m, h, theta, g, hhat]
        for j in rng.sample(range(5), rng.randint(1, 5)):
            values[j] = _subnormal(rng)
        m, h, theta, g, hhat = values
    elif kind in ("huge", "tiny"):
        low, high = (250, 300) if kind == "huge" else (-300, -250)
        m, h, theta, g, hhat = (rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(low, high) if rng.random() < 0.7
                                else v for v in (m, h, theta, g, hhat))
    elif kind == "zero_m":
        m, g = rng.choice((0.0, -0.0)), rng.choice((0.0, -0.0))
    return m, h, theta, g, hhat


def random_case(rng: random.Random, n_max: int = 8) -> dict:
    """One state: hyperparameters, completed steps, (m, h, theta, g, hhat) lists of 1 to n_max coordinates of
    random kinds, and whether a caller-phase dialect is given the estimate."""
    hyper = random_hyper(rng)
    n = rng.randint(1, n_max)
    coords = [random_coordinate(rng, hyper, rng.choice(KINDS)) for _ in range(n)]
    m, h, theta, g, hhat = (list(col) for col in zip(*coords))
    return dict(hyper=hyper, step=rng.randint(0, 20), m=m, h=h, theta=theta, g=g, hhat=hhat,
                give_estimate=rng.random() < 0.6)


# -- the verify check: the reference against the oracle -------------------------------------------------------

def reference_step(knobs, hyper: dict, step: int, m, h, theta, g, hhat) -> dict[str, list[float]]:
    """The reference's one step (``sophia_ref.rule.update``) as lists of floats: m_t, h_t, u, delta, theta + delta."""
    import torch

    from sophia_ref import rule

    T = lambda xs: torch.tensor(xs, dtype=torch.float64)
    th = T(theta)
    new, delta, diag = rule.update(rule.State(step=step, m=T(m), h=T(h)), th, T(g), rule.Hyper(**hyper), knobs,
                                   None if hhat is None else T(hhat))
    return dict(m=new.m.tolist(), h=new.h.tolist(), u=diag.direction.tolist(), delta=delta.tolist(),
                theta=(th + delta).tolist())


def run_cases(examples: int, seed: int, bound: float = 2.0) -> tuple[Tally, list[str]]:
    """``examples`` seeded states (``random.Random(seed)``), each through every dialect's reference step and
    the oracle."""
    from sophia_ref.dialects import DIALECTS

    rng = random.Random(seed)
    tally, failures = Tally(), []
    for _ in range(examples):
        case = random_case(rng)
        for name, dialect in DIALECTS.items():
            knobs = dialect.knobs
            hhat = case["hhat"] if knobs.refresh != "caller" or case["give_estimate"] else None
            args = (case["hyper"], case["step"], case["m"], case["h"], case["theta"], case["g"], hhat)
            failures += compare_one(tally, name, knobs, *args, ref=reference_step(knobs, *args), bound=bound)
    return tally, failures


def check_step_oracle(examples: int = 300, seed: int = 0):
    """The reference's one step of every dialect against the exact-rational oracle, as one CheckResult.

    ``worst``: the largest distance, over every dialect and measured coordinate of m_t, h_t, u, delta
    and theta + delta, between the reference and the correctly rounded exact value, in ulps of
    ``max(|exact|, mu)``, ``mu`` the first-order error magnitude of the evaluation (module docstring):
    ulps of the result itself wherever nothing cancels and at most one rounding is on the path, ulps of
    a (sum of) operand magnitudes where cancellation or a chain of roundings makes the result's own ulps
    meaningless. ``passed``: that is at most 2 (first-order theory: 1 + 1/2), every coordinate is within
    its rigorous bound ``U mu`` of the exact value, and every coordinate with at most one rounding on its
    path is correctly rounded. The notes give the worst per dialect and quantity, the same at the
    largest-operand scale ``max(|exact|, S)``, the coordinates above 1 and 2 ulps there with their
    error sources, and what was skipped.
    """
    from verification.report import CheckResult

    bound = 2.0
    start = time.perf_counter()
    tally, failures = run_cases(examples, seed, bound)
    elapsed = time.perf_counter() - start
    worst = tally.overall()
    dialects = list(dict.fromkeys(d for d, _ in tally.worst))
    fmt = lambda table, d: ", ".join(f"{q} {table.get((d, q), 0.0):.3g}" for q in QUANTITIES)
    notes = [f"{examples} seeded states (seed {seed}) x {len(dialects)} dialects: {tally.coordinates} coordinates, "
             f"{tally.measured} measured, {tally.correctly_rounded} of them correctly rounded in every quantity; "
             f"boundaries drawn on purpose (h = +-0, h < 0, scale h = +-eps, |m| = scale h, subnormals, "
             f"magnitudes to 1e300, eps = 0); {elapsed:.1f} s",
             "ulps from the correctly rounded value at scale max(|exact|, mu), mu = the sum over the path's "
             "roundings of the magnitude rounded times its sensitivity (|float - exact| <= U mu to first order)"]
    notes += [f"worst, {d}: {fmt(tally.worst, d)}" for d in dialects]
    notes += [f"worst at the largest-operand scale max(|exact|, S), {d}: {fmt(tally.worst_operand, d)}"
              for d in dialects]
    notes += summarize(tally.above_one, "1 ulp") + summarize(tally.above_two, "2 ulp")
    if tally.cancelled:
        notes.append("more than 2 ulps of the result itself (cancellation; measured at operand scale): "
                     + ", ".join(f"{q} {n}" for q, n in sorted(tally.cancelled.items())))
    notes.append(f"{len(tally.outside_bound)} coordinate(s) outside the first-order bound U mu; "
                 f"{len(tally.not_correctly_rounded_with_one_rounding)} with at most one rounding not correctly "
                 "rounded")
    notes += [f"skipped {n} coordinate(s): {why}" for why, n in sorted(tally.skipped.items())]
    notes += [f"FAIL {f}" for f in failures[:5]]
    return CheckResult(problem="all dialects", check="one step vs exact rationals", worst=worst, bound=bound,
                       unit="ulp", passed=worst <= bound and not failures, notes=tuple(notes))
