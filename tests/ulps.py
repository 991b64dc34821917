"""Units in the last place, for comparing float64 results against exact values."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

U = Fraction(1, 2**53)  # unit roundoff of float64: one rounding has relative error at most U


def ulp(x: float) -> float:
    return math.ulp(abs(x))


def ulps_between(a: float, b: float) -> float:
    """|a - b| in ulps of b."""
    return abs(Fraction(a) - Fraction(b)) / Fraction(ulp(b)) if a != b else 0.0


def as_list(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]
