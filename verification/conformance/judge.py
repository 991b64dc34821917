"""Stage 5, judging: the tolerance model, the verdict and the ranked findings of one certificate.

Tolerances (ulps at operand scale; see :mod:`.run`):

- **float64, teacher-forced**: at most :data:`FLOAT64_STEP_ULPS` (8) per step: the roundings on one
  step's path, each of which two correct evaluations may place differently.
- **float64, free-running**: at most ``FLOAT64_STEP_ULPS * FLOAT64_GROWTH_ULPS_PER_STEP * steps``
  (16 ulps per step). Derivation: step t adds its own rounding difference (at most 8 ulps), and
  carries the earlier differences forward. Parameters carry theirs unchanged (the step itself is a
  function of m and h, not of theta, up to the weight-decay factor 1 - eta lam < 1); m and h are
  moving averages, so each carries its earlier differences times b1 or b2 < 1 plus its own; and the
  direction ``u = clip(m / d, c)`` is 1-Lipschitz in ``m / d``, so a relative difference in m or d
  moves ``eta u`` by at most that relative difference times ``eta |u| <= eta c``, the scale the
  parameters are measured at. Counting the carried m and h differences once more per step, as
  another step's worth of roundings, gives at most 2 x 8 ulps per step. Measured: 33 ulps over 12
  steps at worst (against 192).
- **low precision** (float32, bfloat16, float16 parameters): at most
  :data:`LOW_PRECISION_FACTOR` (2) times the error of the naive evaluation in the same run on the
  same inputs, plus :data:`LOW_PRECISION_FLOOR_ULPS` (2) ulps; parameters in ulps of their dtype, m
  and h in ulps of float32. A quantity the implementation computes natively in the dtype it is
  measured in (m and h, always float32; float32 parameters) may also use the float64 bounds above,
  counted in ulps of that dtype: their derivation is about two correct evaluations in one
  precision, whatever the precision. This matters free-running: there the naive evaluation's error
  is one sample of a random walk (m carries each step's rounding forward, damped by b1 only, so up
  to 1/(1-b1) = 29 steps' worth accumulate at b1 = 0.965), and an implementation that rounds each
  step differently, as ``lerp`` or a fused multiply-add does, walks another path of the same size;
  on a few coordinates the two maxima can differ several-fold (measured: the naive evaluation
  3.3 ulps, a lerp-based float32 step 28.8, against 192 here). Parameters stored in bfloat16 or
  float16 keep the naive bound alone: they are rounded to their dtype each step, and two correct
  implementations differ there only where a rounding tie falls differently, which the naive
  evaluation's error measures.

Verdicts (``Certificate.verdict``):

- ``conforms``: the battery ran and every scenario is within its bound of the dialect the
  implementation claims (``--dialect D``, its adapter's claim, or under ``--dialect auto`` the named
  preset detection found);
- ``departs``: detection found knobs that reproduce the implementation but match no preset (or not
  the preset it claims); the departures are listed;
- ``outside the knobs``: no setting of the knobs reproduces it (detection's cross-check), with the
  cross-check figure and the best-fitting knobs;
- ``fails``: it claims a dialect and does not compute it within tolerance, or it raised mid-run;
- ``error``: nothing could be certified: it cannot be imported or built, its API does not fit, or
  every scenario was skipped. Never a pass.

Findings are one line per cause, ranked: semantic departures from ``paper`` (knob, value, paper
value, the probe that showed it); unexplained residuals (what the chosen knobs leave, and where,
with the scenarios listed); precision (state dtype, the tolerance model); rounding-order
differences within the bounds above.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch

from sophia_ref.dialects import Dialect, get_dialect

from .run import ScenarioResult, _nanmax

F64 = torch.float64

#: float64: an independent float64 implementation may round differently at each operation of a step: m
#: (two roundings, or one where it fuses), h (two), the denominator (two), the quotient, the product by lr
#: and the final sum: nine half-ulps at operand scale, 4.5 ulps (measured: 4.5, the official code's fused
#: addcmul/add_(alpha=) in a group without weight decay). 8 leaves room and stays far below any departure
#: of dialect (1e4 ulps and more).
FLOAT64_STEP_ULPS = 8.0
#: free-running: the per-step bound is doubled for the earlier differences each step carries (module docstring)
FLOAT64_GROWTH_ULPS_PER_STEP = 2.0
#: low precision: at most twice the naive same-dtype evaluation's error, plus a floor of 2 ulps
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_FLOOR_ULPS = 2.0


VERDICTS = ("conforms", "departs", "outside the knobs", "fails", "error")
SEVERITIES = ("semantic", "precision", "rounding")
QUANTITIES = ("parameters", "m", "h")


#: low precision: the quantities computed natively in the dtype their errors are counted in, by parameter dtype
NATIVE_QUANTITIES = {"float32": ("parameters", "m", "h"), "bfloat16": ("m", "h"), "float16": ("m", "h")}


def bounds(result: ScenarioResult) -> dict[str, float]:
    """The largest error allowed for parameters, m and h in one scenario and tier (the module docstring)."""
    same_precision = FLOAT64_STEP_ULPS * (1 if result.tier == "teacher-forced"
                                          else FLOAT64_GROWTH_ULPS_PER_STEP * result.steps)
    if result.naive is None:
        return {"parameters": same_precision, "m": same_precision, "h": same_precision}
    native = NATIVE_QUANTITIES.get(result.dtype, ())
    limits = {k: LOW_PRECISION_FACTOR * w.ulps + LOW_PRECISION_FLOOR_ULPS for k, w in result.naive.items()}
    return {k: max(v, same_precision) if k in native else v for k, v in limits.items()}


def violations(result: ScenarioResult):
    """``[(quantity, worst, bound)]`` for each quantity over its bound (none for a skipped or failed run)."""
    if result.skipped or result.error:
        return []
    limit = bounds(result)
    got = {"parameters": result.params, "m": result.m, "h": result.h}
    return [(k, got[k], limit[k]) for k in QUANTITIES if not got[k].ulps <= limit[k]]


def _jsonable(value):
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def knob_departures(dialect: Dialect, evidence: str) -> list[dict]:
    """The dialect's knobs that differ from ``paper``, as certificate departures."""
    paper = asdict(get_dialect("paper").knobs)
    return [dict(knob=k, value=_jsonable(v), paper=_jsonable(paper[k]), severity="semantic", evidence=evidence)
            for k, v in asdict(dialect.knobs).items() if v != paper[k]]


def departures_from_paper(dialect: Dialect) -> list[str]:
    """The dialect's departures from ``paper`` in plain language (a preset's own list, or the knobs that differ)."""
    if dialect.departures:
        return [f"departs from paper: {d}" for d in dialect.departures]
    return [f"departs from paper: {d['knob']} = {d['value']!r} (paper: {d['paper']!r})"
            for d in knob_departures(dialect, "")]


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
    #: one of :data:`VERDICTS`
    verdict: str = "error"
    #: the dialect it claims (``--dialect D`` or its adapter's), or None
    claimed_dialect: str | None = None
    #: "yes" (measured so), "no (...)", "no claim", or "not measured (...)"
    matches_claim: str = "not measured"
    #: the :class:`~sophia_ref.rule.Knobs` fields detection found (None when detection did not run)
    detected_knobs: dict | None = None
    #: ``{knob, value, paper, severity, evidence}`` per departure from paper
    departures: list[dict] = field(default_factory=list)
    #: ``{consistent, explained, figure, best_fit}``: did the detected knobs reproduce it, and do the
    #: departures listed explain every difference from the reference
    cross_check: dict | None = None
    #: what discovery found about its API and state (constructor keywords, state slots)
    discovery: dict | None = None


def _scenarios(runs) -> str:
    names = [f"{r.scenario} ({r.tier})" for r in runs]
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _excess(hit) -> tuple[int, float]:
    """How far a violation ``(result, worst, bound)`` is over its bound, for ranking: NaN first, then a
    nonzero error where the bound is 0 (exactness demanded), then the largest ratio to the bound."""
    _, worst, bound = hit
    if math.isnan(worst.ulps):
        return 2, 0.0
    if bound == 0:
        return 1, worst.ulps
    return 0, worst.ulps / bound


def residual_findings(results: list[ScenarioResult], label: str) -> list[str]:
    """One line per quantity over its bound, the scenarios listed, worst first; one per distinct error."""
    lines = []
    for quantity in QUANTITIES:
        hits = [(r, worst, bound) for r in results for what, worst, bound in violations(r) if what == quantity]
        if not hits:
            continue
        r, worst, bound = max(hits, key=_excess)
        naive = "" if r.naive is None else f"; the naive float32 evaluation: {r.naive[quantity].ulps:.3g} ulps"
        lines.append(f"residual: {quantity} off {label} by up to {worst.ulps:.3g} ulps (bound {bound:.3g}{naive}) "
                     f"in {len(hits)} scenario runs: {_scenarios(h[0] for h in hits)}; worst in {r.scenario} "
                     f"({r.tier}) at {worst.where}")
    errors: dict[str, list[ScenarioResult]] = {}
    for r in results:
        if r.error:
            message = r.error.split(": ", 1)[-1] if r.error.startswith("step ") else r.error
            errors.setdefault(re.sub(r"\d[\w.+-]*", "#", message), []).append(r)  # one cause, whatever the numbers
    for message, runs in errors.items():
        who = "the harness could not write the reference's state into it" if runs[0].harness_error \
            else "the implementation failed"
        lines.append(f"error: {who} in {len(runs)} scenario runs ({_scenarios(runs)}); first: {runs[0].error}")
    return lines


def rounding_findings(results: list[ScenarioResult]) -> list[str]:
    """What is left within the bounds: the largest errors, and clip-boundary flips explained."""
    ran = [r for r in results if not r.skipped and not r.error]
    lines = []
    for tier in ("teacher-forced", "free-running"):
        runs = [r for r in ran if r.tier == tier and not violations(r)]
        if runs:
            worst = max(runs, key=lambda r: r.worst_ulps if not math.isnan(r.worst_ulps) else math.inf)
            lines.append(f"rounding: {tier}, within bounds: at most {worst.worst_ulps:.3g} ulps "
                         f"(bound {max(bounds(worst).values()):.3g} in {worst.scenario})")
    explained = [(r, note) for r in ran for note in r.boundary if "; explained" in note]
    if explained:
        r, note = explained[0]
        lines.append(f"rounding: {len(explained)} clip-boundary disagreements, each explained (the reference's "
                     f"|m/d| within {1e-12:g} of the threshold), in {_scenarios(x[0] for x in explained)}; e.g. {note}")
    return lines


def precision_findings(results: list[ScenarioResult], dtype: str, departures: list[dict]) -> list[str]:
    lines = [f"precision: {d['knob']} = {d['value']} in a {dtype} run (paper: {d['paper']}): {d['evidence']}"
             for d in departures if d.get("severity") == "precision"]
    naive = [r for r in results if r.naive is not None and not r.skipped and not r.error]
    if naive:
        worst = _nanmax(_nanmax(w.ulps for w in r.naive.values()) for r in naive)
        native = NATIVE_QUANTITIES.get(dtype, ())
        native = (f"; {', '.join(native)}, computed natively in the dtype they are counted in, may instead use the "
                  f"same-precision bounds ({FLOAT64_STEP_ULPS:g} ulps per teacher-forced step, "
                  f"{FLOAT64_STEP_ULPS * FLOAT64_GROWTH_ULPS_PER_STEP:g} per free-running step)") if native else ""
        lines.append(f"precision: {dtype} parameters are held to the tolerance model: at most "
                     f"{LOW_PRECISION_FACTOR:g}x the naive float32 evaluation's error plus "
                     f"{LOW_PRECISION_FLOOR_ULPS:g} ulps, per quantity and scenario (naive: up to {worst:.3g} ulps)"
                     f"{native}")
    return lines


def metrics_of(results: list[ScenarioResult]) -> dict:
    ran = [r for r in results if not r.skipped and not r.error]
    naive_runs = [r for r in ran if r.naive is not None]
    return {
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


def annotate(results: list[ScenarioResult]) -> None:
    """Set each result's ``bound`` and ``passed`` (None where it did not run)."""
    for r in results:
        ran = not r.skipped and not r.error
        r.bound = bounds(r) if ran else None
        r.passed = (not violations(r)) if ran else (False if r.error else None)


def battery_verdict(results: list[ScenarioResult]) -> tuple[str, str | None]:
    """``(verdict, why)`` of the battery alone: conforms, fails, or error (nothing certified)."""
    ran = [r for r in results if not r.skipped and not r.error]
    errors = [r for r in results if r.error]
    if errors and all(r.harness_error for r in errors):
        return "error", "the harness could not drive it (see the error findings): nothing is blamed on it"
    if errors and all(r.build_error for r in errors) and not ran:
        return "error", (f"it could not be built for any scenario, so nothing was certified ({errors[0].error}); "
                         "if it does not take these settings (a dtype, a device), certify it with ones it takes")
    if errors:
        return "fails", None
    if not ran:
        kinds = sorted({f"{r.skipped}" for r in results})
        return "error", f"nothing was certified: every scenario was skipped ({'; '.join(kinds[:3])})"
    if not any(r.tier == "free-running" for r in ran) and any(r.skip_kind == "not teacher-forceable" for r in results):
        return "error", "nothing was certified: not teacher-forceable, and no free-running scenario ran"
    return ("conforms" if not any(violations(r) for r in results) else "fails"), None


def detected_departures(detection) -> list[dict]:
    """Detection's departures from paper, each with the evidence of the probe that showed it."""
    return list(detection.departures())


def _semantic_lines(departures: list[dict], claimed: Dialect | None) -> list[str]:
    claimed_knobs = asdict(claimed.knobs) if claimed is not None else {}
    lines = []
    for d in departures:
        if d.get("severity") != "semantic":
            continue
        note = ""
        if d["knob"] in claimed_knobs and claimed_knobs[d["knob"]] != d["value"] and claimed.name != "paper":
            note = f"; {claimed.name} has {claimed_knobs[d['knob']]!r}"
        evidence = f": {d['evidence']}" if d.get("evidence") else ""
        lines.append(f"semantic: {d['knob']} = {d['value']!r} (paper: {d['paper']!r}{note}){evidence}")
    return lines


def decide(name: str, version: str, dialect: Dialect, results: list[ScenarioResult], dtype: str, device: str, *,
           claim: str | None, auto: bool, detection=None, discovery: dict | None = None,
           notes: list[str] | None = None) -> Certificate:
    """The certificate: verdict, claim, departures, cross-check and ranked findings.

    ``dialect`` is what the battery held the implementation to; ``claim`` what it claims (``--dialect``
    or its adapter); ``auto``: the dialect came from ``detection`` (a
    :class:`~verification.conformance.detect.Detection`), which then also decides the verdict.
    """
    from sophia_ref import __version__

    annotate(results)
    verdict, why = battery_verdict(results)
    consistent = None if detection is None else bool(detection.consistent)
    if detection is not None:
        departures = detected_departures(detection)
    else:
        evidence = ("the knobs of the dialect it is held to, confirmed by the battery" if verdict == "conforms"
                    else "the knobs of the dialect it is held to (not confirmed: see the residuals)")
        departures = knob_departures(dialect, evidence)
    explained = verdict == "conforms"
    matches = "no claim" if claim is None else ("yes" if verdict == "conforms" and claim == dialect.name
                                                  else f"no (it does not compute {claim})")
    lines = [] if why is None else [f"error: {why}"]
    if auto and detection is not None:
        if not consistent:
            verdict = "outside the knobs" if verdict != "error" else verdict
            figure = "n/a" if detection.cross_check is None else f"{detection.cross_check:.3g}"
            best = getattr(detection, "best_fit", None)
            lines.append(f"outside the knobs: no setting of the knobs reproduces it (cross-check deviation {figure} of "
                         f"max(|theta|, lr), consistent at <= 1e-10); the battery held it to the best fit, "
                         f"{dialect.name}{'' if best is None else f' ({best})'}")
            matches = "no claim" if claim is None else f"no (it computes none of the dialects, {claim} included)"
        elif detection.preset is None:
            verdict = "departs" if verdict in ("conforms", "fails") else verdict
            lines.append("departs: its knobs match no preset; each departure from paper is listed")
            matches = "no claim" if claim is None else f"no (it computes a custom dialect, not {claim})"
        elif claim is not None and claim not in detection.matches:
            verdict = "departs" if verdict in ("conforms", "fails") else verdict
            lines.append(f"departs: it claims {claim}, but its behaviour is {', '.join(detection.matches)}")
            matches = f"no (it computes {detection.preset}, not {claim})"
    if verdict == "error" and claim is not None:
        matches = "not measured (nothing was certified)"
    semantic = _semantic_lines(departures, None if claim is None else _known(claim))
    if detection is None and dialect.departures and semantic:
        semantic = [f"semantic: departs from paper: {d}" for d in dialect.departures]
    findings = (lines + semantic + residual_findings(results, f"{dialect.name}")
                + precision_findings(results, dtype, departures) + rounding_findings(results)
                + [f"note: {n}" for n in (notes or [])])
    cross = None
    if detection is not None:
        best = getattr(detection, "best_fit", None)
        cross = dict(consistent=consistent, explained=explained, figure=detection.cross_check,
                     best_fit=None if best is None else _jsonable_fit(best))
    knobs = None if detection is None or detection.knobs is None else {k: _jsonable(v) for k, v in asdict(detection.knobs).items()}
    return Certificate(name, version, dialect.name, dtype, device, 0, verdict == "conforms", metrics_of(results),
                       findings, __version__, results, verdict=verdict, claimed_dialect=claim, matches_claim=matches,
                       detected_knobs=knobs, departures=departures, cross_check=cross, discovery=discovery)


def _known(name: str) -> Dialect | None:
    try:
        return get_dialect(name)
    except ValueError:
        return None


def _jsonable_fit(best) -> object:
    if hasattr(best, "as_dict"):
        return best.as_dict()
    if isinstance(best, dict):
        return {k: _jsonable(v) if not isinstance(v, dict) else v for k, v in best.items()}
    if hasattr(best, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(best).items()}
    return str(best)


def error_certificate(name: str, why: str, claim: str | None, dtype: str, device: str,
                      findings: list[str] | None = None) -> Certificate:
    """Nothing could be certified (cannot import, cannot build, API does not fit): verdict ``error``."""
    from sophia_ref import __version__

    return Certificate(name, "?", claim or "?", dtype, device, 0, False, metrics_of([]),
                       [f"error: {why}"] + list(findings or []), __version__, [], verdict="error",
                       claimed_dialect=claim, matches_claim="not measured (nothing ran)")
