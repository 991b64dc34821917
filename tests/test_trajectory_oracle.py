"""The 200-step trajectory oracle: the reference tracks the paper's rule in mpmath at 50 digits within
the measured bound, and the comparison catches a reference that is off by an ulp per step, has a
wrong eps (value or placement) or no clip, and reports, rather than hides, a clip-boundary flip."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sophia_ref import rule
from verification.checks import trajectory as C
from verification.oracles import trajectory as T
from verification.oracles.zoo import Saddle, SeparableQuadratic

QUICK = C.checks(quick=True)


@pytest.mark.parametrize("name, thunk", QUICK, ids=[name for name, _ in QUICK])
def test_quick_checks_pass(name, thunk):
    result = thunk()
    assert result.check == T.CHECK_NAME
    assert result.unit == "t*2^-52"
    assert result.passed, (name, result.worst, result.bound, result.notes)
    assert 0 < result.worst <= result.bound


def test_the_oracle_side_never_imports_the_reference():
    """run_mpmath (the oracle) runs in a fresh interpreter without sophia_ref ever being imported."""
    code = ("import sys; from verification.oracles import trajectory as T;"
            "from verification.oracles.zoo import PaperToy; T.run_mpmath(PaperToy(), T.Hyper(0.05), 5);"
            "assert not [m for m in sys.modules if m.startswith('sophia_ref')], 'sophia_ref imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- a reference that is off by n ulps per step --------------------------------------------------------------

def _sign_step_problem():
    """Every coordinate in [1.65, 1.9] for 200 steps of clipped sign steps (z = x + 5 ~ 7 >> gamma h):
    the ulp of every iterate is 2^-52, and a sign step does not depend on the iterate's error."""
    problem = SeparableQuadratic(1.0, dim=3)
    problem.c = [-5.0, -5.0, -5.0]
    start = [1.9, 1.875, 1.85]
    return problem, start, T.Hyper(1e-3, 0.9, 0.99, 1e-3)


def _shifted(n_ulps: int):
    def update(state, theta, grad, hyper, knobs, hhat):
        new, delta, diagnostics = rule.update(state, theta, grad, hyper, knobs, hhat)
        ulps = torch.tensor([math.ulp(v) for v in theta.tolist()], dtype=torch.float64)
        return new, delta + n_ulps * ulps, diagnostics
    return update


@pytest.mark.parametrize("n_ulps, flagged", [(1, False), (8, True)])
def test_an_ulp_per_step_grows_linearly_and_a_larger_drift_is_flagged(n_ulps, flagged):
    problem, start, hp = _sign_step_problem()
    exact = T.run_mpmath(problem, hp, start=start)
    assert all(all(c) for c in exact.clipped)  # the whole run is sign steps
    clean = C.run_reference(problem, hp, start=start)
    shifted = C.run_reference(problem, hp, start=start, update=_shifted(n_ulps))
    for t in range(1, T.STEPS + 1):  # the perturbation itself: exactly n ulps more per step
        assert max(abs(a - b) for a, b in zip(shifted.thetas[t], clean.thetas[t])) == n_ulps * t * 2.0 ** -52
    base = T.compare(problem, hp, clean, exact)
    pert = T.compare(problem, hp, shifted, exact)
    assert not base.flips and not pert.flips
    assert base.measured_c <= 0.6
    # e_t = n t 2^-52 / |theta| (|theta| in [1.65, 1.9]) up to the clean run's own error
    assert n_ulps / 1.9 - base.measured_c <= pert.measured_c <= n_ulps / 1.65 + base.measured_c
    assert pert.errors[-1] >= pert.errors[99] * 1.9  # linear: doubling t doubles e_t
    assert T.result(pert).passed is (not flagged)
    assert T.result(base).passed


# -- wrong rules ---------------------------------------------------------------------------------------------

def _no_clip(state, theta, grad, hyper, knobs, hhat):
    new, _, diagnostics = rule.update(state, theta, grad, hyper, knobs, hhat)
    u = new.m / torch.clamp(new.h * hyper.gamma, min=hyper.eps)
    return new, -hyper.lr * u, diagnostics._replace(direction=u)


def _tiny_saddle():
    """y starts at 1e-13: |m| = 1e-14 < eps = 1e-12 on a floored coordinate, so the paper's first step in y
    is eta m / eps = eta / 100, not a sign step: eps is visible."""
    problem = Saddle()
    problem.start = [0.5, 1e-13]
    return problem, T.Hyper(0.05, 0.9, 0.99, 1.0, eps=1e-12)


def test_the_correct_rule_passes_where_eps_matters():
    problem, hp = _tiny_saddle()
    comparison = T.compare(problem, hp, C.run_reference(problem, hp, 40), T.run_mpmath(problem, hp, 40))
    assert not comparison.flips
    assert T.result(comparison).passed


@pytest.mark.parametrize("how", ["eps=1e-15", "eps added", "no clip"])
def test_a_wrong_rule_is_flagged(how):
    problem, hp = _tiny_saddle()
    kwargs = {}
    ref_hp = hp
    if how == "eps=1e-15":
        ref_hp = T.Hyper(hp.lr, hp.beta1, hp.beta2, hp.gamma, eps=1e-15)
    elif how == "eps added":
        kwargs["knobs"] = rule.Knobs(eps_placement="add")
    else:
        problem = SeparableQuadratic(1.0)  # far from the minimizer: the first steps are clipped
        hp = ref_hp = T.hyper_for(problem)
        kwargs["update"] = _no_clip
    exact = T.run_mpmath(problem, hp, 40)
    comparison = T.compare(problem, hp, C.run_reference(problem, ref_hp, 40, **kwargs), exact)
    result = T.result(comparison)
    assert not result.passed
    assert any(not f.explained for f in comparison.flips)
    assert max(comparison.constants) > 1e6  # and the trajectories part by far more than rounding
    assert any("UNEXPLAINED" in note for note in result.notes)


# -- a flip at the clip boundary is reported, not hidden -------------------------------------------------------

def test_a_flip_at_the_boundary_is_reported_and_explained():
    """g = x - c with x = 1, c = 2^-60: exactly 1 - 2^-60 (unclipped), 1.0 in float64 (clipped)."""
    problem = SeparableQuadratic(1.0, dim=2)
    problem.c = [2.0 ** -60, 0.0]
    hp = T.Hyper(0.5, 0.0, 0.0, 1.0)
    exact = T.run_mpmath(problem, hp, 20, start=[1.0, 0.5])
    comparison = T.compare(problem, hp, C.run_reference(problem, hp, 20, start=[1.0, 0.5]), exact)
    assert [(f.step, f.coordinate, f.kind, f.reference, f.explained) for f in comparison.flips] == [
        (1, 0, "clip", True, True)]
    assert abs(comparison.flips[0].exact - (1 - 2.0 ** -60)) < 1e-30
    result = T.result(comparison)
    assert result.passed and result.worst == 0.0  # no step before the flip
    assert any("step 1, coordinate 0: reference clipped" in note for note in result.notes)
    assert any("from the first flip on" in note and "within the bound" in note for note in result.notes)
