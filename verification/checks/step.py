"""The reference's one step (``sophia_ref.rule.update``) against the exact-rational oracle.

Seeded random states (:mod:`verification.checks.step_states`) go through the reference and through
:func:`verification.oracles.step.exact_step` for every dialect of :data:`dialects`: each preset of
:data:`sophia_ref.dialects.DIALECTS`, and ``paper`` with one knob changed to each value that no preset
uses (``h_bias_correction`` "steps" and "refreshes", ``estimate_clamp`` "zero" and "abs",
``weight_decay_form`` "after" and "coupled", ``refresh`` "never"). Each coordinate is measured by
:func:`verification.oracles.step_distance.compare_one`: within ``U mu`` of the exact value, at most
2 ulps from the correctly rounded value at scale ``max(|v|, mu)``, and correctly rounded where at
most one rounding is on its path; the new state's refresh count must be the rule's.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable

import torch

from sophia_ref import rule
from sophia_ref.dialects import DIALECTS, PAPER

from ..oracles.step_distance import Tally, compare_one, summarize
from ..oracles.step import QUANTITIES
from ..report import CheckResult
from .step_states import random_case

NEW_KNOB_VALUES = (("h_bias_correction", "steps"), ("h_bias_correction", "refreshes"), ("estimate_clamp", "zero"),
                   ("estimate_clamp", "abs"), ("weight_decay_form", "after"), ("weight_decay_form", "coupled"),
                   ("refresh", "never"))
"""Knob values no preset uses; each gets a derived dialect: ``paper`` with that one knob changed."""


def derived_dialects() -> dict[str, rule.Knobs]:
    """``paper+knob=value`` -> ``paper``'s knobs with that one knob changed, for each of :data:`NEW_KNOB_VALUES`."""
    return {f"paper+{name}={value}": dataclasses.replace(PAPER.knobs, **{name: value})
            for name, value in NEW_KNOB_VALUES}


def dialects() -> dict[str, rule.Knobs]:
    """Every preset's knobs, then the derived dialects."""
    return {**{name: d.knobs for name, d in DIALECTS.items()}, **derived_dialects()}


def reference_step(knobs, hyper: dict, step: int, m, h, theta, g, hhat, refreshes: int = 0) -> dict:
    """The reference's one step (``sophia_ref.rule.update``) as lists of floats: m_t, h_t, u, delta,
    theta + delta, and the new state's refresh count."""
    T = lambda xs: torch.tensor(xs, dtype=torch.float64)
    th = T(theta)
    state = rule.State(step=step, m=T(m), h=T(h), refreshes=refreshes)
    new, delta, diag = rule.update(state, th, T(g), rule.Hyper(**hyper), knobs, None if hhat is None else T(hhat))
    return dict(m=new.m.tolist(), h=new.h.tolist(), u=diag.direction.tolist(), delta=delta.tolist(),
                theta=(th + delta).tolist(), refreshes=new.refreshes)


def run_case(tally: Tally, name: str, knobs, case: dict, bound: float = 2.0) -> list[str]:
    """One state through the reference and the oracle for one dialect; the failing coordinates' descriptions."""
    hhat = case["hhat"] if knobs.refresh != "caller" or case["give_estimate"] else None
    args = (case["hyper"], case["step"], case["m"], case["h"], case["theta"], case["g"], hhat)
    refreshes = case.get("refreshes", 0)
    ref = reference_step(knobs, *args, refreshes)
    return compare_one(tally, name, knobs, *args, ref=ref, bound=bound, refreshes=refreshes)


def run_cases(examples: int, seed: int, bound: float = 2.0,
              which: dict[str, rule.Knobs] | None = None) -> tuple[Tally, list[str]]:
    """``examples`` seeded states (``random.Random(seed)``), each through every dialect's (``which``: name ->
    knobs; default :func:`dialects`) reference step and the oracle."""
    which = dialects() if which is None else which
    rng = random.Random(seed)
    tally, failures = Tally(), []
    for _ in range(examples):
        case = random_case(rng)
        for name, knobs in which.items():
            failures += run_case(tally, name, knobs, case, bound)
    return tally, failures


def check_step_oracle(examples: int = 300, seed: int = 0) -> CheckResult:
    """The reference's one step of every dialect against the exact-rational oracle, as one CheckResult.

    ``worst``: the largest distance, over every dialect and measured coordinate of m_t, h_t, u, delta
    and theta + delta, between the reference and the correctly rounded exact value, in ulps of
    ``max(|exact|, mu)``, ``mu`` the first-order error magnitude of the evaluation
    (:mod:`verification.oracles.step`): ulps of the result itself wherever nothing cancels and at most
    one rounding is on the path, ulps of a (sum of) operand magnitudes where cancellation or a chain of
    roundings makes the result's own ulps meaningless. ``passed``: that is at most 2 (first-order
    theory: 1 + 1/2), every coordinate is within its rigorous bound ``U mu`` of the exact value, every
    coordinate with at most one rounding on its path is correctly rounded, and every refresh count is
    the rule's. The notes give the worst per dialect and quantity, the same at the largest-operand scale
    ``max(|exact|, S)``, the coordinates above 1 and 2 ulps there with their error sources, and what was
    skipped.
    """
    bound = 2.0
    start = time.perf_counter()
    tally, failures = run_cases(examples, seed, bound)
    elapsed = time.perf_counter() - start
    worst = tally.overall()
    names = list(dict.fromkeys(d for d, _ in tally.worst))
    fmt = lambda table, d: ", ".join(f"{q} {table.get((d, q), 0.0):.3g}" for q in QUANTITIES)
    notes = [f"{examples} seeded states (seed {seed}) x {len(names)} dialects ({len(DIALECTS)} presets, "
             f"{len(NEW_KNOB_VALUES)} derived from paper with one new knob value each): {tally.coordinates} "
             f"coordinates, {tally.measured} measured, {tally.correctly_rounded} of them correctly rounded in every "
             f"quantity; boundaries drawn on purpose (h = +-0, h < 0, scale h = +-eps, |m| = scale h, g = -lam theta, "
             f"subnormals, magnitudes to 1e300, eps = 0, refresh counts on and off schedule); {elapsed:.1f} s",
             "ulps from the correctly rounded value at scale max(|exact|, mu), mu = the sum over the path's "
             "roundings of the magnitude rounded times its sensitivity (|float - exact| <= U mu to first order)"]
    notes += [f"worst, {d}: {fmt(tally.worst, d)}" for d in names]
    notes += [f"worst at the largest-operand scale max(|exact|, S), {d}: {fmt(tally.worst_operand, d)}"
              for d in names]
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


def checks(quick: bool) -> list[tuple[str, Callable[[], CheckResult]]]:
    """The one row: 300 seeded states quick, 5000 full."""
    examples = 300 if quick else 5000
    return [(f"one step vs exact rationals ({examples} states)",
             lambda: check_step_oracle(examples=examples, seed=0))]
