"""Stage 5, judging: the tolerance model, the verdict and the findings of one certificate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sophia_ref.dialects import Dialect, get_dialect

from ..adapters.base import Adapter
from .run import ScenarioResult, _nanmax, run_scenario
from .scenarios import battery

F64 = torch.float64

#: float64: an independent float64 implementation may round differently at each operation of a step: m
#: (two roundings, or one where it fuses), h (two), the denominator (two), the quotient, the product by lr
#: and the final sum: nine half-ulps at operand scale, 4.5 ulps (measured: 4.5, the official code's fused
#: addcmul/add_(alpha=) in a group without weight decay). 8 leaves room and stays far below any departure
#: of dialect (1e4 ulps and more).
FLOAT64_STEP_ULPS = 8.0
#: free-running: rounding differences may compound by about one ulp per step (see the trajectory oracle)
FLOAT64_GROWTH_ULPS_PER_STEP = 2.0
#: low precision: at most twice the naive same-dtype evaluation's error, plus a floor of 2 ulps
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_FLOOR_ULPS = 2.0

def bounds(result: ScenarioResult) -> dict[str, float]:
    """The largest error allowed for parameters, m and h in one scenario and tier (the module docstring)."""
    if result.naive is None:
        per_step = FLOAT64_STEP_ULPS * (1 if result.tier == "teacher-forced" else FLOAT64_GROWTH_ULPS_PER_STEP * result.steps)
        return {"parameters": per_step, "m": per_step, "h": per_step}
    return {k: LOW_PRECISION_FACTOR * w.ulps + LOW_PRECISION_FLOOR_ULPS for k, w in result.naive.items()}


def violations(result: ScenarioResult):
    """``[(quantity, worst, bound)]`` for each quantity over its bound."""
    limit = bounds(result)
    got = {"parameters": result.params, "m": result.m, "h": result.h}
    return [(k, got[k], limit[k]) for k in got if not got[k].ulps <= limit[k]]


def departures_from_paper(dialect: Dialect) -> list[str]:
    """The dialect's departures from ``paper`` in plain language (a preset's own list, or the knobs that differ)."""
    from dataclasses import asdict

    if dialect.departures:
        return [f"departs from paper: {d}" for d in dialect.departures]
    paper = asdict(get_dialect("paper").knobs)
    return [f"departs from paper: {k} = {v!r} (paper: {paper[k]!r})" for k, v in asdict(dialect.knobs).items()
            if v != paper[k]]


@dataclass
class Certificate:
    implementation: str
    version: str
    dialect: str
    dtype: str
    device: str
    seed: int
    conforms: bool
    metrics: dict
    findings: list[str]
    tool_version: str
    results: list[ScenarioResult] = field(default_factory=list)
