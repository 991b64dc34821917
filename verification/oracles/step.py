"""One step of the Sophia rule, every dialect, in exact rational arithmetic.

The oracle (:func:`exact_step`) is written from SPEC.md sections 1 and 5 and from
the documented semantics of the knobs, not from the reference's code: it imports
nothing of ``sophia_ref``. Every operation of the rule is rational (products,
sums, quotients, max/min, sign, abs, clip, the bias corrections ``1 - b1^t`` and
``1 - b2^n``), so :class:`fractions.Fraction` evaluates it exactly; each result
is rounded once to float64 by :meth:`ExactStep.rounded` (``float(Fraction)`` is
``numerator / denominator``, and CPython's integer true division is correctly
rounded, ties to even, subnormals included).

What "exact" means here
    The real-number rule applied to the float64 inputs taken as exact rationals:
    every input (``m``, ``h``, ``theta``, ``g``, ``hhat``) *and every
    hyperparameter* (``lr``, ``beta1``, ... are float64 numbers too) is read as the
    rational it denotes, and every constant the rule derives from them (``1 - b1``,
    ``1 - b2``, ``eta lam``, ``gamma B``, ``b1^t``, ``1 - b1^t``, ``b2^n``,
    ``1 - b2^n``) is computed exactly. A float64 implementation rounds
    those constants as well, so its distance to this oracle includes their
    roundings: that is the honest distance to the rule it claims to compute.

The rule, one coordinate, with the knobs of ``sophia_ref.rule.Knobs`` as plain data
(``r`` is the number of refreshes folded into ``h`` so far, an input)::

    t        = step + 1                                    (step = completed steps)
    g_used   = g + lam theta               if weight_decay_form == "coupled" else g
    m_t      = b1 m + (1 - b1) g_used, applied momentum_updates times
    refresh  = hhat given                  (refresh == "caller")
             = false                       (refresh == "never": hhat is ignored)
             = (t - 1) mod k == 0          (otherwise; hhat is then required)
    e        = max(hhat, 0) | |hhat| | hhat              (estimate_clamp "zero" | "abs" | "none")
    h_t      = b2 h + (1 - b2) e           if refresh else h
    r_t      = r + 1                       if refresh else r
    h_used   = h (the pre-refresh h)       if refresh == "next_step" else h_t
    m_used   = m_t / (1 - b1^t)            if bias_correction else m_t
    n        = t                           (h_bias_correction "steps")
             = r if refresh == "next_step" else r_t      ("refreshes": the refreshes folded into h_used)
             = 0                           ("none")
    h_div    = h_used / (1 - b2^n)         if n > 0 else h_used      (the stored h_t stays uncorrected)
    scale, c = gamma, 1 (form "gamma")  |  1, gamma (form "rho": gamma holds rho)
    scale    = scale B                     if batch_factor == "step"
    d        = max(scale h_div, eps)  (eps_placement "max")  |  scale h_div + eps  ("add")
    u        = clip(m_used / d, c)                          (clip_form "clip")
             = sign(m_used) min(|m_used| / d, c)            (clip_form "sign_min")
    theta'   = theta - eta lam theta - eta u       (weight_decay_form "before")
             = (theta - eta u) (1 - eta lam)      ("after")
             = theta - eta u                      ("coupled")
    delta    = -eta lam theta - eta u             ("before")
             = -eta lam (theta - eta u) - eta u   ("after": theta' - theta, without forming theta')
             = -eta u                             ("coupled")

with ``clip(z, c) = max(min(z, c), -c)``; :func:`exact_step` returns ``theta + delta``
as ``theta`` (equal to ``theta'``, exactly). Where ``m_used = 0`` the direction is 0
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
    above (each operation correctly rounded; ``lam theta``, ``b2^n``, ``1 - b2^n``,
    ``eta u`` and ``theta - eta u`` each a rounded operation of their own):

    - ``S`` (``scales``): the largest operand magnitude on the path, "the operand
      scale": the largest of the magnitudes rounded, each weighted by how it reaches
      the result (``a + b``: ``max(S_a, S_b, own)``; ``a b``: ``max(S_a |b|, |a| S_b, own)``;
      ``a / d``: ``max(S_a / |d|, |a / d| S_d / |d|, own)``);
    - ``mu`` (``bounds``): the same terms summed instead of maxed, the first-order
      running error bound: ``|float - exact| <= U mu`` (``U = 2^-53``) to first order;
    - ``n`` (``roundings``): the number of roundings on the path, so ``mu <= n S``.

    ``own`` is what an operation's own rounding adds: nothing when its operands are
    exact and its exact result is a float64 (IEEE operations are correctly rounded),
    else ``|v|``, or ``2^-1022`` below the normal range, where one rounding errs by
    up to ``2^-1075 = U 2^-1022`` rather than ``U |v|``. Inputs are exact (0), and so
    is the clamp of an estimate (``max(hhat, 0)``, ``|hhat|``). A product with an exact
    zero, or a quotient of one, is an exact 0. ``max(x, eps)`` and the clip are
    1-Lipschitz and pass the scales through, except where the exact value is past
    the kink by more than ``2 U mu``: the float result is then the constant (``eps``,
    ``+-c``) exactly. A quotient by a denominator whose bound exceeds ``2^-20`` of it
    (the float denominator may be 0 or of the other sign, or first order fails), and
    ``m / 0`` with ``m`` inexact, are *singular*: scales ``None``.

    Where nothing cancels and no rounding is subnormal, ``S <= |v|`` (to rounding) and
    ``mu <= n |v|``: ulps at scale ``max(|v|, S)`` are then ulps of the result itself.
    A 2-ulp bound at the largest-operand scale is *not* something a float64 evaluation
    can promise: n roundings each up to ``U S < 1 ulp(S)`` allow ``n + 1/2`` ulps from the
    correctly rounded value, and 3 to 3.5 are measured (paths of 5 to 20 roundings). At
    scale ``max(|v|, mu)`` first-order theory gives at most ``1 + 1/2``: that is the scale
    the pairing check holds to 2 ulps.

Measuring a float64 step against this oracle is :mod:`verification.oracles.step_distance`;
running the reference through both is :mod:`verification.checks.step`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, is_dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

__all__ = [
    "ExactStep", "RoundedStep", "exact_step", "is_refresh", "h_power", "clamp_estimate", "round_fraction", "ulp_of",
    "is_float64", "KNOB_DEFAULTS", "KNOB_VALUES", "QUANTITIES", "U",
]

U = Fraction(1, 2**53)            # unit roundoff of float64
TINY = Fraction(1, 2**1022)       # smallest normal float64; below it one rounding errs by up to 2^-1075 = U TINY
SINGULAR = 2**20                  # a denominator whose error bound exceeds 2^-20 of it is singular
SLACK = Fraction(1, 2**16)        # relative room for second-order terms in the first-order bound
_ONE, _ZERO = Fraction(1), Fraction(0)

KNOB_DEFAULTS: Mapping[str, Any] = {  # SPEC section 1: the paper
    "form": "gamma", "eps_placement": "max", "clip_form": "clip", "bias_correction": False,
    "refresh": "immediate", "batch_factor": "estimate", "momentum_updates": 1,
    "h_bias_correction": "none", "estimate_clamp": "none", "weight_decay_form": "before",
}
KNOB_VALUES: Mapping[str, tuple[str, ...]] = {  # the accepted values of the string-valued knobs
    "form": ("gamma", "rho"), "eps_placement": ("max", "add"), "clip_form": ("clip", "sign_min"),
    "refresh": ("immediate", "next_step", "caller", "never"), "batch_factor": ("estimate", "step"),
    "h_bias_correction": ("none", "steps", "refreshes"), "estimate_clamp": ("none", "zero", "abs"),
    "weight_decay_form": ("before", "after", "coupled"),
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
    for name, accepted in KNOB_VALUES.items():
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
    refreshes: int
    m: tuple[float, ...]
    h: tuple[float, ...]
    u: tuple[float, ...]
    delta: tuple[float, ...]
    theta: tuple[float, ...]


@dataclass(frozen=True)
class ExactStep:
    """One step, exactly, per coordinate.

    ``refreshes`` is ``r_t``, the refresh count of the new state, and ``h_power`` the ``n`` of
    ``1 - b2^n`` (0: no correction). ``m`` and ``h`` are the new state (``m_t``, ``h_t``);
    ``g_used`` the gradient the momentum absorbs (``g + lam theta`` in the coupled form);
    ``m_used``, ``h_used``, ``h_div`` and ``d`` what the step divides (bias-corrected m, the
    pre-refresh h in the ``next_step`` phase, that h divided by ``1 - b2^n``, the
    denominator); ``u`` the direction; ``decay`` the decoupled decay term (``eta lam theta``
    before the step, ``eta lam (theta - eta u)`` after it, 0 when coupled); ``delta`` the
    parameter change; ``theta = theta + delta`` (the new parameter); ``c`` the clip
    threshold. With error scales, for each of those quantities ``q``: ``scales[q][i]``
    (largest operand magnitude ``S``), ``bounds[q][i]`` (first-order error magnitude ``mu``:
    ``|float - exact| <= U mu``), ``roundings[q][i]`` (``n``, ``mu <= n S``),
    ``subnormal_roundings[q][i]`` (whether one of them fell below the normal range, where it
    errs by up to 2^-1075 whatever the value); scales and bounds ``None`` where coordinate
    ``i`` is singular. Without error scales these are ``None``.
    """

    t: int
    refreshed: bool
    refreshes: int
    h_power: int
    c: Fraction
    g_used: tuple[Fraction, ...]
    m: tuple[Fraction, ...]
    h: tuple[Fraction, ...]
    m_used: tuple[Fraction, ...]
    h_used: tuple[Fraction, ...]
    h_div: tuple[Fraction, ...]
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
        return RoundedStep(self.t, self.refreshed, self.refreshes, r(self.m), r(self.h), r(self.u), r(self.delta),
                           r(self.theta))


def is_refresh(t: int, k: int, refresh: str, estimate_given: bool) -> bool:
    """SPEC section 1: refresh on ``(t - 1) mod k == 0``; the caller phase refreshes when given an estimate;
    ``never`` does not refresh."""
    if refresh == "never":
        return False
    return estimate_given if refresh == "caller" else (t - 1) % k == 0


def h_power(t: int, refreshes_before: int, refreshed: bool, h_bias_correction: str, refresh: str) -> int:
    """The ``n`` of ``h_used / (1 - b2^n)``: ``t``, or the refreshes folded into the h the step divides by
    (the count before this step's refresh in the ``next_step`` phase, after it otherwise), or 0."""
    if h_bias_correction == "steps":
        return t
    if h_bias_correction == "refreshes":
        return refreshes_before if refresh == "next_step" else refreshes_before + refreshed
    return 0


def clamp_estimate(e: Fraction, estimate_clamp: str) -> Fraction:
    """``max(e, 0)`` ("zero"), ``|e|`` ("abs") or ``e`` ("none")."""
    if estimate_clamp == "zero":
        return max(e, _ZERO)
    if estimate_clamp == "abs":
        return abs(e)
    return e


_NAMES = ("g_used", "m", "h", "m_used", "h_used", "h_div", "d", "u", "decay", "delta", "theta")


def exact_step(knobs, hyper, step: int, m: Sequence[float], h: Sequence[float], theta: Sequence[float],
               g: Sequence[float], hhat: Sequence[float] | None = None, refreshes: int = 0, *,
               error_scales: bool = True) -> ExactStep:
    """One Sophia step of every coordinate, in exact rationals.

    ``knobs``: a mapping or object with the fields of ``sophia_ref.rule.Knobs`` (missing ones take the
    paper's values); ``hyper``: likewise for ``Hyper`` (``lr``, ``beta1``, ``beta2``, ``gamma`` (rho in
    the rho form) and ``eps`` required; ``weight_decay`` 0, ``hessian_interval`` 1, ``batch_size`` 1 by
    default). ``step`` is the number of completed steps (the state's counter): this is step
    ``t = step + 1``. ``m``, ``h`` are the state, ``theta`` the parameter, ``g`` the gradient, ``hhat``
    the Hessian-diagonal estimate (required on refresh steps, ignored on the others; in the ``caller``
    phase, giving one is what makes a refresh step; never used with ``refresh="never"``), ``refreshes``
    the state's refresh count ``r`` (refreshes folded into ``h`` so far; only
    ``h_bias_correction="refreshes"`` reads it). Inputs are lists of finite floats.
    ``error_scales=False`` skips the scales (several times faster).
    """
    kn, hp = _knobs(knobs), _hyper(hyper)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} is not valid; accepted range: integers >= 0")
    if isinstance(refreshes, bool) or not isinstance(refreshes, int) or refreshes < 0:
        raise ValueError(f"refreshes={refreshes!r} is not valid; accepted range: integers >= 0")
    m0 = _fractions("m", m, None)
    n = len(m0)
    h0, th, gs = _fractions("h", h, n), _fractions("theta", theta, n), _fractions("g", g, n)
    t = step + 1
    refreshed = is_refresh(t, hp["hessian_interval"], kn["refresh"], hhat is not None)
    if refreshed and hhat is None:
        raise ValueError(f"step {t} refreshes the Hessian estimate (k={hp['hessian_interval']}) "
                         "but no estimate was given")
    hh = [clamp_estimate(e, kn["estimate_clamp"]) for e in _fractions("hhat", hhat, n)] if refreshed else None
    power_n = h_power(t, refreshes, refreshed, kn["h_bias_correction"], kn["refresh"])
    wd_form = kn["weight_decay_form"]

    A = _Tracked if error_scales else _Values
    b1, b2, eta, lam, eps, gamma, B = (Fraction(hp[k]) for k in
                                       ("beta1", "beta2", "lr", "weight_decay", "eps", "gamma", "batch_size"))
    one_b1, one_b2, eta_lam = A.const(1 - b1), A.const(1 - b2), A.const(eta * lam)  # rounded by a float rule
    if kn["bias_correction"]:
        power = A.inp(b1) if t == 1 else A.const_pow(b1 ** t)     # b1^1 is b1 itself
        bias = A.add(A.inp(_ONE), A.neg(power))                   # 1 - b1^t > 0
    if power_n > 0:
        power2 = A.inp(b2) if power_n == 1 else A.const_pow(b2 ** power_n)
        bias2 = A.add(A.inp(_ONE), A.neg(power2))                 # 1 - b2^n > 0
    scale = A.inp(gamma if kn["form"] == "gamma" else _ONE)
    c = _ONE if kn["form"] == "gamma" else gamma
    if kn["batch_factor"] == "step":
        scale = A.mul(scale, A.inp(B))                            # gamma B, or B in the rho form
    B1, Eta, Eps, Lam = A.inp(b1), A.inp(eta), A.inp(eps), A.inp(lam)

    cols: dict[str, list] = {name: [] for name in _NAMES}
    for i in range(n):
        theta_i = A.inp(th[i])
        gi = A.add(A.inp(gs[i]), A.mul(theta_i, Lam)) if wd_form == "coupled" else A.inp(gs[i])  # g + lam theta
        mi = A.inp(m0[i])
        for _ in range(kn["momentum_updates"]):
            mi = A.add(A.mul(mi, B1), A.mul(gi, one_b1))                         # b1 m + (1 - b1) g
        hi = A.add(A.mul(A.inp(h0[i]), A.inp(b2)), A.mul(A.inp(hh[i]), one_b2)) if refreshed else A.inp(h0[i])
        h_used = A.inp(h0[i]) if kn["refresh"] == "next_step" else hi
        m_used = A.div(mi, bias) if kn["bias_correction"] else mi
        h_div = A.div(h_used, bias2) if power_n > 0 else h_used               # h_used / (1 - b2^n)
        curvature = A.mul(h_div, scale)                                       # scale h
        d = A.floor_at(curvature, eps) if kn["eps_placement"] == "max" else A.add(curvature, Eps)
        u = A.direction(m_used, d, c, kn["clip_form"])
        move = A.mul(u, Eta)                                                  # eta u
        if wd_form == "before":
            decay = A.mul(theta_i, eta_lam)                                   # eta lam theta
            delta = A.add(A.neg(decay), A.neg(move))                          # -eta lam theta - eta u
        elif wd_form == "after":
            stepped = A.add(theta_i, A.neg(move))                             # theta - eta u
            decay = A.mul(stepped, eta_lam)                                   # eta lam (theta - eta u)
            delta = A.add(A.neg(decay), A.neg(move))                          # -eta lam (theta - eta u) - eta u
        else:
            decay = A.inp(_ZERO)
            delta = A.neg(move)                                               # -eta u
        new_theta = A.add(theta_i, delta)
        for name, x in zip(_NAMES, (gi, mi, hi, m_used, h_used, h_div, d, u, decay, delta, new_theta)):
            cols[name].append(x)

    vals = {name: tuple(A.value(x) for x in xs) for name, xs in cols.items()}
    extra = {}
    if error_scales:
        extra = dict(scales={name: tuple(x.s for x in xs) for name, xs in cols.items()},
                     bounds={name: tuple(x.b for x in xs) for name, xs in cols.items()},
                     roundings={name: tuple(x.n for x in xs) for name, xs in cols.items()},
                     subnormal_roundings={name: tuple(x.tiny for x in xs) for name, xs in cols.items()})
    return ExactStep(t=t, refreshed=refreshed, refreshes=refreshes + refreshed, h_power=power_n, c=c, **vals,
                     **extra)
