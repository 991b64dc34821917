"""Focused tests of verification/conformance/judge.py, each pinning behaviour a surviving mutant changed
(docs/MUTATION.md, "Results"). They build ScenarioResults by hand, so they run in milliseconds."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import pytest

from sophia_ref.dialects import get_dialect
from sophia_ref.rule import Knobs
from verification.conformance import judge
from verification.conformance.run import ScenarioResult, Worst


def ok(tier="teacher-forced", ulps=0.0, steps=1, name="s", **kw):
    """A float64 scenario run within its bound (8 ulps teacher-forced)."""
    return ScenarioResult(name, tier, steps, params=Worst(ulps, 0.0, "p[0]"), m=Worst(0.0), h=Worst(0.0), **kw)


def low(tier, naive_ulps, name="s"):
    """A low-precision run whose naive float32 evaluation erred by naive_ulps on every quantity."""
    return ScenarioResult(name, tier, 1, naive={q: Worst(naive_ulps) for q in judge.QUANTITIES})


def detection(consistent=True, preset="paper", matches=("paper",), knobs=None, departures=()):
    return SimpleNamespace(consistent=consistent, preset=preset, matches=list(matches), knobs=knobs,
                           cross_check=0.0, best_fit=None, evidence={}, departures=lambda: list(departures))


def decide(results=None, dialect="paper", claim=None, auto=False, det=None, notes=None):
    return judge.decide("impl", "1.0", get_dialect(dialect), [ok()] if results is None else results, "float64",
                        "cpu", claim=claim, auto=auto, detection=det, notes=notes)


# _jsonable: numbers, bools, strings and None pass through unchanged; anything else becomes its str
def test_jsonable_keeps_plain_values_and_strs_the_rest():
    assert judge._jsonable(2) == 2 and type(judge._jsonable(2)) is int
    assert judge._jsonable(0.5) == 0.5 and judge._jsonable(True) is True and judge._jsonable(None) is None
    assert judge._jsonable((1, 2)) == "(1, 2)"


# knob_departures lists exactly the knobs where the dialect differs from paper (none for paper itself)
def test_knob_departures_are_the_knobs_that_differ_from_paper():
    assert judge.knob_departures(get_dialect("paper"), "e") == []
    got = judge.knob_departures(get_dialect("official"), "e")
    assert {d["knob"] for d in got} == {"eps_placement", "clip_form", "refresh", "batch_factor"}
    assert all(d["value"] != d["paper"] and d["evidence"] == "e" for d in got)


# an error cause is blamed on the harness when the first run with that message was a harness error
def test_error_finding_names_the_first_runs_cause():
    results = [ScenarioResult("a", "teacher-forced", 1, error="boom", harness_error=True),
               ScenarioResult("b", "teacher-forced", 1, error="boom", harness_error=False)]
    [line] = judge.residual_findings(results, "paper")
    assert "the harness could not write the reference's state into it in 2 scenario runs" in line


# the rounding line reports the largest error among the runs within bounds, not the first run's
def test_rounding_findings_report_the_worst_run_within_bounds():
    lines = judge.rounding_findings([ok(ulps=1.0, name="a"), ok(ulps=3.0, name="b")])
    assert lines == ["rounding: teacher-forced, within bounds: at most 3 ulps (bound 8 in b)"]


# the clip-boundary line counts every explained disagreement and quotes the first as the example
def test_boundary_line_quotes_the_first_explained_note():
    results = [ok(name="a", boundary=["n1; explained"]), ok(name="b", boundary=["n2; explained"])]
    [_, line] = judge.rounding_findings(results)
    assert line.startswith("rounding: 2 clip-boundary disagreements") and line.endswith("e.g. n1; explained")


# precision_findings only looks at low-precision runs (naive set): a float64 battery adds no precision line
def test_precision_findings_ignore_float64_runs():
    assert judge.precision_findings([ok()], "float64", []) == []
    [line] = judge.precision_findings([ok(error="x"), low("teacher-forced", 3.0)], "float32", [])
    assert "(naive: up to 3 ulps); parameters, m, h, computed natively" in line
    [line] = judge.precision_findings([low("teacher-forced", 3.0)], "bfloat16", [])
    assert "(naive: up to 3 ulps); m, h, computed natively" in line


# metrics_of splits the naive errors by tier
def test_metrics_split_naive_errors_by_tier():
    got = judge.metrics_of([low("teacher-forced", 1.0), low("free-running", 5.0)])
    assert got["naive_teacher_forced_max_ulps"] == 1.0 and got["naive_free_running_max_ulps"] == 5.0


# battery_verdict: each of its outcomes
def test_battery_verdicts():
    skipped = ScenarioResult("a", "teacher-forced", 1, skipped="declared", skip_kind="declared")
    assert judge.battery_verdict([skipped])[0] == "error"                          # nothing ran
    harness = ScenarioResult("a", "teacher-forced", 1, error="x", harness_error=True)
    assert judge.battery_verdict([harness]) == (
        "error", "the harness could not drive it (see the error findings): nothing is blamed on it")
    assert judge.battery_verdict([ok()]) == ("conforms", None)
    assert judge.battery_verdict([ok(ulps=100.0)]) == ("fails", None)
    not_tf = ScenarioResult("a", "teacher-forced", 1, skipped="x", skip_kind="not teacher-forceable")
    assert judge.battery_verdict([ok("free-running"), not_tf]) == ("conforms", None)  # free-running decided
    assert judge.battery_verdict([not_tf])[0] == "error"


# decide without detection: departures carry the "confirmed" evidence when the battery conforms
def test_decide_evidence_and_claim():
    cert = decide(dialect="official", claim="official")
    assert cert.verdict == "conforms" and cert.matches_claim == "yes"
    assert {d["evidence"] for d in cert.departures} == {
        "the knobs of the dialect it is held to, confirmed by the battery"}
    assert decide().matches_claim == "no claim"
    assert decide(notes=["hello"]).findings[-1] == "note: hello"


# detection changes the verdict only under --dialect auto, and only when it is given
def test_decide_detection_only_under_auto():
    inconsistent = detection(consistent=False)
    assert decide(det=inconsistent, auto=False).verdict == "conforms"
    assert decide(det=inconsistent, auto=True).verdict == "outside the knobs"
    assert decide(det=None, auto=True).verdict == "conforms"
    assert decide(det=detection(preset=None, matches=()), auto=True).verdict == "departs"
    # a battery that errored stays "error" even when the knobs match no preset
    harness = ScenarioResult("a", "teacher-forced", 1, error="x", harness_error=True)
    assert decide([harness], det=detection(preset=None, matches=()), auto=True).verdict == "error"


# a semantic departure names the claimed dialect's own value for that knob
def test_semantic_line_names_the_claimed_value():
    dep = dict(knob="eps_placement", value="add", paper="max", severity="semantic", evidence="probe")
    cert = decide(claim="optax", det=detection(departures=[dep]))
    assert "semantic: eps_placement = 'add' (paper: 'max'; optax has 'max'): probe" in cert.findings


# the certificate carries detection's knobs as a dict
def test_detected_knobs_in_certificate():
    cert = decide(det=detection(knobs=Knobs()))
    assert cert.detected_knobs == asdict(Knobs())
    assert decide(det=detection(knobs=None)).detected_knobs is None


# the worst violation is ranked NaN first, then any error where exactness (bound 0) was demanded, then by ratio
def test_excess_ranks_nan_then_exactness_then_ratio():
    nan, exact, far, near = (None, Worst(float("nan")), 8.0), (None, Worst(0.5), 0.0), (None, Worst(800.0), 8.0), \
        (None, Worst(16.0), 8.0)
    ranked = sorted([near, far, exact, nan], key=judge._excess, reverse=True)
    assert ranked == [nan, exact, far, near]
    assert judge._excess(far) == (0, 100.0)


# residual findings quote the run furthest over its bound as the worst
def test_residual_finding_names_the_worst_run():
    results = [ok(ulps=20.0, name="a"), ok(ulps=900.0, name="b"), ok(ulps=30.0, name="c")]
    [line] = judge.residual_findings(results, "paper")
    assert "by up to 900 ulps" in line and "worst in b (teacher-forced)" in line and "in 3 scenario runs" in line


# annotate: a run that errored did not pass (False), one that was skipped has no verdict (None)
def test_annotate_marks_errors_failed_and_skips_unknown():
    errored = ScenarioResult("e", "teacher-forced", 1, error="boom")
    skipped = ScenarioResult("s", "teacher-forced", 1, skipped="declared", skip_kind="declared")
    good, bad = ok(), ok(ulps=100.0)
    judge.annotate([errored, skipped, good, bad])
    assert (errored.passed, skipped.passed, good.passed, bad.passed) == (False, None, True, False)
    assert errored.bound is None and skipped.bound is None and good.bound is not None


# with no claim, a semantic departure is listed without naming a claimed dialect's value
def test_semantic_line_without_a_claim():
    dep = dict(knob="eps_placement", value="add", paper="max", severity="semantic", evidence="")
    assert judge._semantic_lines([dep], None) == ["semantic: eps_placement = 'add' (paper: 'max')"]
    assert judge._semantic_lines([dict(dep, severity="precision")], None) == []


# outside the knobs: "matches its claim" says no claim when there is none, and names the claim when there is one
def test_outside_the_knobs_matches_claim():
    inconsistent = detection(consistent=False)
    assert decide(det=inconsistent, auto=True).matches_claim == "no claim"
    assert decide(det=inconsistent, auto=True, claim="paper").matches_claim == (
        "no (it computes none of the dialects, paper included)")


# knobs matching no preset: a conforming or failing battery becomes "departs"; an error stays an error
def test_custom_knobs_depart_whatever_the_battery_says():
    custom = detection(preset=None, matches=())
    assert decide([ok(ulps=100.0)], det=custom, auto=True).verdict == "departs"
    assert decide([ok()], det=custom, auto=True, claim="paper").matches_claim == (
        "no (it computes a custom dialect, not paper)")


# a detected preset that is not the claim: departs, and says what it computes
def test_claim_other_than_detected_preset_departs():
    cert = decide(det=detection(preset="optax", matches=("optax",)), auto=True, claim="paper")
    assert cert.verdict == "departs" and cert.matches_claim == "no (it computes optax, not paper)"


# the claim detected, but the battery failed or errored: never "yes"
def test_claim_detected_but_battery_not_confirming():
    harness = ScenarioResult("a", "teacher-forced", 1, error="x", harness_error=True)
    assert decide([harness], det=detection(), auto=True, claim="paper").matches_claim == (
        "not measured (nothing was certified)")
    assert decide([harness], det=detection(), auto=True).matches_claim == "no claim"
    failed = decide([ok(ulps=100.0)], det=detection(), auto=True, claim="paper")
    assert failed.verdict == "fails" and failed.matches_claim == "no (it does not compute paper)"
    assert decide([ok()], det=detection(), auto=True, claim="paper").matches_claim == "yes"


# outside the knobs with no cross-check figure: the finding says n/a rather than failing to format
def test_outside_the_knobs_without_a_figure():
    det = detection(consistent=False)
    det.cross_check = None
    [line] = [f for f in decide(det=det, auto=True).findings if f.startswith("outside the knobs")]
    assert "cross-check deviation n/a of" in line


# with a detection, the semantic lines are detection's (with their evidence), not the held dialect's own list
def test_semantic_lines_come_from_detection_when_there_is_one():
    dep = dict(knob="refresh", value="caller", paper="immediate", severity="semantic", evidence="probe says")
    cert = decide(dialect="official", det=detection(departures=[dep]))
    semantic = [f for f in cert.findings if f.startswith("semantic:")]
    assert semantic == ["semantic: refresh = 'caller' (paper: 'immediate'): probe says"]
    without = [f for f in decide(dialect="official").findings if f.startswith("semantic:")]
    assert without and all(f.startswith("semantic: departs from paper: ") for f in without)


# an implementation that refused to be built for every scenario certified nothing: error, never fails or conforms
def test_refused_to_build_everywhere_is_an_error():
    refused = [ScenarioResult(n, "teacher-forced", 1, error="building it failed: ValueError: no float64",
                              build_error=True) for n in "ab"]
    verdict, why = judge.battery_verdict(refused)
    assert verdict == "error" and "could not be built for any scenario" in why and "no float64" in why
    # built for one scenario and run: the other refusal is a failure of the implementation
    assert judge.battery_verdict(refused[:1] + [ok()])[0] == "fails"


# low precision: a quantity computed natively in the dtype it is counted in may use the same-precision bound
# (8 per teacher-forced step, 16 per free-running step); bfloat16 parameters keep the naive bound alone
def test_low_precision_bounds_by_dtype_and_tier():
    def run(tier, dtype, naive_ulps, steps=12):
        return ScenarioResult("s", tier, steps, naive={q: Worst(naive_ulps) for q in judge.QUANTITIES}, dtype=dtype)

    assert judge.bounds(run("teacher-forced", "float32", 1.0)) == {"parameters": 8.0, "m": 8.0, "h": 8.0}
    assert judge.bounds(run("teacher-forced", "float32", 10.0)) == {"parameters": 22.0, "m": 22.0, "h": 22.0}
    assert judge.bounds(run("free-running", "float32", 3.0)) == {"parameters": 192.0, "m": 192.0, "h": 192.0}
    assert judge.bounds(run("free-running", "bfloat16", 3.0)) == {"parameters": 8.0, "m": 192.0, "h": 192.0}
    assert judge.bounds(run("teacher-forced", "float16", 0.5)) == {"parameters": 3.0, "m": 8.0, "h": 8.0}
    # float64 runs have no naive evaluation: the same-precision bound alone
    assert judge.bounds(ScenarioResult("s", "free-running", 12)) == {"parameters": 192.0, "m": 192.0, "h": 192.0}
