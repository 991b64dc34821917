"""The stages in order: resolve, discover, detect, run, judge (report is the caller's)."""

from __future__ import annotations

from typing import Callable

import torch

from sophia_ref.dialects import Dialect, get_dialect

from ..adapters.base import Adapter
from .judge import Certificate, _nanmax, departures_from_paper, violations
from .run import run_scenario
from .scenarios import battery

F64 = torch.float64


def certify(adapter: Adapter, dialect: str | Dialect | None = None, quick: bool = False,
            dtype: torch.dtype = F64, device: str = "cpu",
            on_scenario: Callable[[str], None] | None = None) -> Certificate:
    """Run the battery for one implementation against one dialect and decide.

    ``on_scenario`` is called with each scenario's name before it runs (for progress bars).
    """
    from sophia_ref import __version__

    preset = get_dialect(dialect or adapter.dialect or "paper")
    results = []
    for scenario in battery(quick):
        if on_scenario:
            on_scenario(scenario.name)
        for tier in ("teacher-forced", "free-running"):
            results.append(run_scenario(adapter, preset, scenario, tier, dtype, device))
    findings, ok = departures_from_paper(preset), True
    for r in results:
        if r.skipped:
            continue
        if r.error:
            ok = False
            findings.append(f"does not conform: {r.scenario} ({r.tier}): the implementation failed: {r.error}")
            continue
        for note in r.boundary:
            if note.split("; ", 1)[1].startswith("explained"):
                findings.append(f"clip boundary: {r.scenario} ({r.tier}): {note}")
        for what, worst, bound in violations(r):
            ok = False
            naive = "" if r.naive is None else f"; the naive float32 evaluation: {r.naive[what].ulps:.3g} ulps"
            findings.append(f"does not conform: {r.scenario} ({r.tier}): {what} off by {worst.ulps:.3g} ulps (bound {bound:.3g}{naive}) "
                            f"at {worst.where}")
    ran = [r for r in results if not r.skipped and not r.error]
    naive_runs = [r for r in ran if r.naive is not None]
    metrics = {
        "naive_teacher_forced_max_ulps": _nanmax(_nanmax(w.ulps for w in r.naive.values()) for r in naive_runs
                                                 if r.tier == "teacher-forced"),
        "naive_free_running_max_ulps": _nanmax(_nanmax(w.ulps for w in r.naive.values()) for r in naive_runs
                                               if r.tier == "free-running"),
        "teacher_forced_max_ulps": _nanmax(r.worst_ulps for r in ran if r.tier == "teacher-forced"),
        "free_running_max_ulps": _nanmax(r.worst_ulps for r in ran if r.tier == "free-running"),
        "max_relative_error": _nanmax(_nanmax([r.params.relative, r.m.relative, r.h.relative]) for r in ran),
        "scenarios_run": len(ran),
        "scenarios_skipped": sum(1 for r in results if r.skipped),
        "scenarios_failed": sum(1 for r in results if r.error),
    }
    return Certificate(adapter.name, adapter.version, preset.name, str(dtype).replace("torch.", ""), device, 0, ok,
                       metrics, findings, __version__, results)
