"""The scipy / Newton oracle: deterministic Sophia reaches trust-exact's minimizers, ends at local
minimizers of the non-convex problems, escapes the saddle Newton runs to; and the checks can fail:
a saddle or a maximum is not accepted as a minimizer, a run that stops short or that does not follow
the diagonal model is flagged, and nothing escapes a saddle from exactly on its stable manifold."""

from __future__ import annotations

import numpy as np
import pytest

from verification.checks import minimizers as C
from verification.oracles import minimizers as M
from verification.oracles.zoo import DoubleWell, PaperToy, RotatedQuadratic, Rosenbrock, Saddle

QUICK = C.checks(quick=True)


@pytest.mark.parametrize("name, thunk", QUICK, ids=[name for name, _ in QUICK])
def test_quick_checks_pass(name, thunk):
    results = thunk()
    results = results if isinstance(results, list) else [results]
    assert results
    for r in results:
        assert r.passed, (name, r.check, r.worst, r.bound, r.notes)


def test_a_saddle_is_not_a_local_minimizer():
    grad, eig = M.local_minimizer_results(PaperToy(), [0.0, 4.0])
    assert grad.passed and grad.worst == 0.0  # stationary ...
    assert not eig.passed and eig.worst < 0  # ... but L1''(0) = -27.2
    assert any("a saddle point" in note for note in eig.notes)


def test_a_maximum_and_a_non_stationary_point_are_rejected():
    well = DoubleWell()
    # the critical point of each coordinate between the wells: 4x^3 - 4x + b = 0, |x| < 1/sqrt(3)
    top = [min(np.roots([4.0, 0.0, -4.0, b]), key=abs).real for b in well.tilt]
    grad, eig = M.local_minimizer_results(well, top)
    assert grad.worst < 1e-12 and not eig.passed
    assert any("a local maximum" in note for note in eig.notes)
    grad, _ = M.local_minimizer_results(Rosenbrock(), [0.9, 0.8])
    assert not grad.passed


def test_stopping_short_of_the_minimizer_is_flagged():
    problem = RotatedQuadratic(100.0)
    (ok,) = C.convex_check(problem)
    (short,) = C.convex_check(problem, setting=M.Setting(0.779, 1.0, budget=100))
    assert ok.passed and ok.worst <= M.TOL_X
    assert not short.passed and short.worst > 1e3 * M.TOL_X


def test_a_run_off_the_diagonal_model_is_flagged():
    """The model is b1 = 0 Sophia; with momentum the same run parts from it."""
    problem = RotatedQuadratic(1e6)
    xstar = M.scipy_minimizer(problem).x
    plain = M.Setting(0.4, 1.0, budget=300)
    momentum = M.Setting(0.4, 1.0, beta1=0.5, budget=300)
    assert C.rotated_model_check(problem, xstar, plain, []).passed
    off = C.rotated_model_check(problem, xstar, momentum, [])
    assert not off.passed and off.worst > 1e-3


def test_the_ill_conditioned_rotated_quadratics_are_reported_as_findings():
    (result,) = C.convex_check(RotatedQuadratic(1e8), quick=True)
    assert result.passed and result.check.endswith("follows the Jacobi (diagonal) model")
    finding = next(note for note in result.notes if note.startswith("FINDING"))
    assert "2.22e+08 steps" in finding


def test_nothing_escapes_from_exactly_on_the_stable_manifold():
    """From y = 0 exactly the gradient in y is 0, so m = 0 and Sophia never moves y: the escape check fails."""
    problem = Saddle()
    problem.start = [0.5, 0.0]
    escape, newton = C.saddle_check(problem)
    assert not escape.passed and escape.worst == 0.0
    assert newton.passed


def test_paper_problem_end_points():
    """Sophia never ends at the saddle; Newton does from the paper's start, but not from every start."""
    results = C.paper_toy_check()
    summary = results[-1]
    assert summary.passed
    ends = next(note for note in summary.notes if note.startswith("Newton's end points"))
    assert "(0.3, 1) -> saddle (0, 4)" in ends and "(0.1, 7) -> saddle (0, 4)" in ends
    assert "(0.45, 0) -> minimizer (1, 4)" in ends and "(0.55, 6) -> local minimum (-0.6538, 4)" in ends
    sophia = [r for r in results if r.check.startswith("Sophia from")]
    assert len(sophia) == len(PaperToy.NONCONVEX_STARTS) and all(r.passed for r in sophia)
