"""How far a float64 evaluation of one Sophia step is from the exact-rational oracle.

For each measured coordinate and quantity ``q`` of ``QUANTITIES`` (``m_t``, ``h_t``, ``u``,
``delta``, ``theta + delta``), with ``v`` the exact value of :func:`~verification.oracles.step.exact_step`,
``round(v)`` its correctly rounded float64, ``S`` and ``mu`` its operand scale and first-order error
magnitude (see :mod:`verification.oracles.step`)::

    distance(q) = |got - round(v)| / ulp(max(|v|, scale))      scale = mu, S, or 0 (the result's own ulps)

and a coordinate passes when (1) ``|got - v| <= U mu`` (2^-16 relative room for second-order
terms), (2) ``distance <= bound`` at the ``mu`` scale, (3) a quantity with at most one rounding on
its path is correctly rounded. :class:`Tally` keeps the worst distances and why a coordinate is above
1 and 2 ulps at the largest-operand scale; nothing here runs an implementation.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Mapping, Sequence

from .step import QUANTITIES, SLACK, U, ExactStep, _hyper, _knobs, exact_step, round_fraction, ulp_of

_ZERO = Fraction(0)

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
    ``worst_case``: a description of the worst coordinate at the largest-operand scale, ``worst_roundings`` the
    number of roundings on its path (first order allows ``roundings + 1/2`` ulps there). ``above_one`` and
    ``above_two``: (quantity, (roundings, S > |v|, subnormal rounding)) -> coordinates above 1 and 2 ulps at
    the largest-operand scale; ``cancelled``: quantity -> coordinates above 2 ulps of the result itself;
    ``outside_bound``: coordinates farther than ``U mu`` from the exact value;
    ``not_correctly_rounded_with_one_rounding``: coordinates with at most one rounding on the path that are
    not the correctly rounded value; ``skipped``: reason -> count; ``coordinates``, ``measured`` and
    ``correctly_rounded`` (in every quantity) counts.
    """

    def __init__(self):
        self.worst, self.worst_operand, self.worst_result, self.worst_case = {}, {}, {}, {}
        self.worst_roundings: dict[tuple[str, str], int] = {}
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
            f"t={x.t} refreshes={x.refreshes - x.refreshed} knobs={kn} hyper={hp} m={m[i]!r} h={h[i]!r} "
            f"theta={theta[i]!r} g={g[i]!r} hhat={None if hhat is None else hhat[i]!r}")


def compare_one(tally: Tally, dialect: str, knobs, hyper, step: int, m, h, theta, g, hhat,
                ref: Mapping[str, Sequence[float]], bound: float = 2.0, refreshes: int = 0) -> list[str]:
    """Measure one float64 step (``ref``: lists of floats for m, h, u, delta, theta, and optionally
    ``refreshes``, the new state's refresh count) against the oracle; ``refreshes`` is the input state's.

    Returns descriptions of the coordinates that fail: farther than ``bound`` ulps at scale
    ``max(|v|, mu)``, or outside the first-order bound ``U mu``. Skipped and counted: coordinates
    where the reference overflowed (a non-finite output), where an exact value rounds to +-inf, and
    singular ones (a float denominator that may vanish or flip sign) not equal to the correctly
    rounded values. A coordinate equal to the correctly rounded values is within every bound
    (``mu >= |v|`` wherever ``v`` is not a float64), so its scales are not computed. A refresh count
    other than the oracle's fails the step.
    """
    kn, hp = _knobs(knobs), _hyper(hyper)
    fast = exact_step(kn, hp, step, m, h, theta, g, hhat, refreshes, error_scales=False)
    failures = []
    if "refreshes" in ref and ref["refreshes"] != fast.refreshes:
        failures.append(f"{dialect}: refresh count {ref['refreshes']!r} after step {fast.t}, the rule's is "
                        f"{fast.refreshes} (refreshes before the step {refreshes}, refreshed {fast.refreshed})")
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
        x = exact_step(kn, hp, step, *args, refreshes, error_scales=True)
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
                tally.worst_roundings[key] = x.roundings[q][0]
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
