"""The stages in order, for one implementation: resolve, discover, detect, run, judge (the caller reports)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from sophia_ref.dialects import DIALECTS, Dialect, get_dialect

from ..adapters.base import Adapter
from .judge import Certificate, decide, error_certificate
from .resolve import KNOWN, Unavailable, resolve
from .run import ScenarioResult, run_scenario
from .scenarios import battery

F64 = torch.float64
TIERS = ("teacher-forced", "free-running")


def run_battery(adapter: Adapter, dialect: Dialect, quick: bool = False, dtype: torch.dtype = F64,
                device: str = "cpu", on_scenario: Callable[[str], None] | None = None) -> list[ScenarioResult]:
    """Stage 4: every scenario of the battery in both tiers."""
    results = []
    for scenario in battery(quick):
        if on_scenario:
            on_scenario(scenario.name)
        for tier in TIERS:
            if scenario.signed_state and tier != "teacher-forced":
                continue  # a loaded state is a teacher-forced scenario: there is no free-running tier to run
            results.append(run_scenario(adapter, dialect, scenario, tier, dtype, device))
    return results


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def certify(adapter: Adapter, dialect: str | Dialect | None = None, quick: bool = False,
            dtype: torch.dtype = F64, device: str = "cpu",
            on_scenario: Callable[[str], None] | None = None) -> Certificate:
    """Stages 4 and 5 for an adapter in hand: the battery against ``dialect`` (default: the adapter's claim,
    else ``paper``), then the verdict. ``on_scenario`` is called with each scenario's name (progress)."""
    preset = get_dialect(dialect or adapter.dialect or "paper")
    results = run_battery(adapter, preset, quick, dtype, device, on_scenario)
    return decide(adapter.name, adapter.version, preset, results, _dtype_name(dtype), device,
                  claim=preset.name, auto=False)


def _discover(adapter: Adapter):
    """Stage 2, where the discovery stage is available: ``(discovery dict or None, findings)``; raises
    :class:`Unavailable` with the adapter skeleton when the API does not fit."""
    try:
        from . import discover
    except ImportError:
        return None, []
    try:
        found = discover.discover(adapter)
    except discover.DoesNotFit as error:
        raise Unavailable(f"{error.args[0]}\n{error.template}" if getattr(error, "template", None) else str(error))
    summary = found.as_dict() if hasattr(found, "as_dict") else None
    return summary, list(getattr(found, "findings", []) or [])


def _held_to(detection, claim: str | None) -> Dialect:
    """Under ``--dialect auto``: the preset detection named (the claimed one among equals), or the knobs it
    found, or its best fit."""
    if detection.consistent and detection.preset:
        return get_dialect(claim if claim in detection.matches else detection.preset)
    knobs = detection.knobs
    best = getattr(detection, "best_fit", None)
    if not detection.consistent and best is not None and getattr(best, "knobs", None) is not None:
        knobs = best.knobs
    if knobs is None:
        raise ValueError("dialect detection could not determine every knob: "
                         + detection.describe().replace("\n", "; "))
    defaults = dict(DIALECTS["paper"].defaults)
    name = "detected" if detection.consistent else "best fit"
    return Dialect(name, knobs, defaults, "unknown", f"the knobs {'detected' if detection.consistent else 'fitting best'}")


def certify_spec(spec: str, dialect: Dialect | None, *, auto: bool, quick: bool = False,
                 dtype: torch.dtype = F64, device: str = "cpu",
                 on_scenario: Callable[[str], None] | None = None) -> Certificate:
    """Every stage for one IMPL string. ``dialect``: the one to hold it to (``--dialect D``), or None with
    ``auto`` (detect it) or without (the adapter's claim, else paper). Never raises for a bad implementation:
    an implementation that cannot be certified gets the verdict ``error``."""
    dtype_name = _dtype_name(dtype)
    claim = None if dialect is None else dialect.name
    try:
        adapter = resolve(spec)                                          # 1. resolve
    except Unavailable as error:
        return error_certificate(spec, f"cannot certify {spec}: {error}", claim, dtype_name, device)
    name = spec if spec not in KNOWN else adapter.name
    if claim is None:
        claim = adapter.dialect if isinstance(adapter.dialect, str) else None
    try:
        discovery, notes = _discover(adapter)                           # 2. discover
    except Unavailable as error:
        return error_certificate(name, f"its API does not fit the harness: {error}", claim, dtype_name, device)
    detection = None
    try:
        from .detect import detect

        detection = detect(adapter)                                       # 3. detect
    except Exception as error:  # detection is evidence, not a precondition of a claimed dialect
        if auto:
            return error_certificate(name, f"dialect detection failed: {type(error).__name__}: {error}", claim,
                                     dtype_name, device)
        notes.append(f"dialect detection failed ({type(error).__name__}: {error}); the battery still decides")
    if auto:
        try:
            held = _held_to(detection, claim)
        except ValueError as error:
            return error_certificate(name, str(error), claim, dtype_name, device)
        notes.append(f"dialect detected by behaviour ({detection.probes} probes, {detection.seconds:.1f} s)")
    else:
        held = dialect if dialect is not None else get_dialect(claim or "paper")
        if claim is None:
            notes.append("it claims no dialect: held to paper")
    if held.name in DIALECTS or held.name.split(",")[0] in DIALECTS:
        adapter.dialect = held.name
    results = run_battery(adapter, held, quick, dtype, device, on_scenario)  # 4. run
    cert = decide(name, adapter.version, held, results, dtype_name, device,  # 5. judge
                  claim=claim if (claim or not auto) else None, auto=auto, detection=detection,
                  discovery=discovery, notes=notes)
    return cert
