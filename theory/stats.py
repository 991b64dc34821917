"""Statistics the training experiments share: paired ratios with t-intervals, and learning-rate grids
that are extended until their best point is strictly inside.

Intervals are Student-t intervals over seeds (n - 1 degrees of freedom; two-sided 95%), on log ratios
for speed-ups (a ratio of step counts is positive and its noise is multiplicative) and on plain
differences for losses.
"""

from __future__ import annotations

import math

import numpy as np

#: two-sided 95% Student-t quantiles t_{0.975, df}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t_975(df: int) -> float:
    """t_{0.975, df}, the tabulated value at the largest tabulated df <= df (conservative); 1.96 beyond 30."""
    if df < 1:
        raise ValueError(f"df={df} is not valid; a t-interval needs at least 2 samples")
    return 1.96 if df > 30 else T_975[max(k for k in T_975 if k <= df)]


def log_ratio_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio a/b over paired seeds with a 95% t-interval on the log ratios (nan bounds for n < 2)."""
    logs = np.log(np.asarray(a, float) / np.asarray(b, float))
    n = len(logs)
    mean = float(logs.mean())
    if n < 2:
        return math.exp(mean), float("nan"), float("nan")
    half = t_975(n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean with a 95% t-interval (nan bounds for n < 2)."""
    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = t_975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def extend_grid(scores: dict[float, float], ratio: float, added: dict[str, int], cap: int) -> list[float]:
    """The points to add to a geometric grid so that its best point (lowest score) becomes strictly inside.

    ``scores``: point -> score (inf for a diverged or missing result); ``added``: how many points have been
    added below ("low") and above ("high") so far, updated in place; at most ``cap`` per side. Returns [] when
    the best point is inside, or when the cap is reached (the caller then reports the best as at the edge)."""
    points = sorted(scores)
    finite = {p: v for p, v in scores.items() if math.isfinite(v)}
    if not finite:
        return []
    best = min(finite, key=finite.get)
    if best == points[0] and added.get("low", 0) < cap:
        added["low"] = added.get("low", 0) + 1
        return [points[0] / ratio]
    if best == points[-1] and added.get("high", 0) < cap:
        added["high"] = added.get("high", 0) + 1
        return [points[-1] * ratio]
    return []


def at_edge(scores: dict[float, float]) -> bool:
    """Whether the best point of a grid of at least 3 points sits at its edge (a 1- or 2-point grid always does)."""
    finite = {p: v for p, v in scores.items() if math.isfinite(v)}
    points = sorted(scores)
    if len(points) < 3 or not finite:
        return True
    return min(finite, key=finite.get) in (points[0], points[-1])
