"""The reference's 200-step trajectories against the paper's rule in mpmath at 50 digits.

The side checked is ``sophia_ref.rule.update`` with the paper's knobs, fed the zoo's float64
closed-form gradient and diagonal at its own float64 iterate; the oracle is
:func:`verification.oracles.trajectory.run_mpmath`, and :func:`~verification.oracles.trajectory.compare`
measures ``e_t = max_i |theta_ref_i(t) - theta_mp_i(t)| / max(1, |theta_mp_i(t)|)`` against
``c t 2^-52`` with every clip-boundary flip listed (see :mod:`verification.oracles.trajectory`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Sequence

import torch

from sophia_ref import rule

from ..oracles.trajectory import (CHECK_NAME, DPS, STEPS, Hyper, Run, bound_for, compare, hyper_for, movement,
                                  result, run_mpmath)
from ..oracles.zoo import FLOAT, Problem, all_problems
from ..report import CheckResult

__all__ = ["CHECK_NAME", "QUICK_PROBLEMS", "check_problem", "checks", "run_reference"]


def run_reference(problem: Problem, hp: Hyper, steps: int = STEPS, start: Sequence[float] | None = None,
                  update: Callable | None = None, knobs=None) -> Run:
    """The float64 reference: ``sophia_ref.rule.update`` (or ``update``, a function of the same signature,
    for tests that break the rule on purpose) with the paper's knobs, fed the zoo's float64 closed forms.
    The iterate is advanced as ``theta + delta``, as :class:`sophia_ref.SophiaRef` does."""
    update = rule.update if update is None else update
    knobs = rule.Knobs() if knobs is None else knobs
    hyper = rule.Hyper(lr=hp.lr, beta1=hp.beta1, beta2=hp.beta2, gamma=hp.gamma, eps=hp.eps,
                       weight_decay=hp.weight_decay, hessian_interval=hp.k)
    began = time.perf_counter()
    theta = torch.tensor([float(v) for v in (problem.start if start is None else start)], dtype=torch.float64)
    state = rule.init(theta)
    run = Run(thetas=[theta.tolist()])
    for t in range(1, steps + 1):
        x = theta.tolist()
        grad = torch.tensor(problem.grad(x, FLOAT), dtype=torch.float64)
        hhat = (torch.tensor(problem.hessian_diagonal(x, FLOAT), dtype=torch.float64)
                if (t - 1) % hp.k == 0 else None)
        state, delta, diagnostics = update(state, theta, grad, hyper, knobs, hhat)
        theta = theta + delta
        u = diagnostics.direction
        run.thetas.append(theta.tolist())
        run.ratios.append(u.tolist())
        run.clipped.append((u.abs() == 1.0).tolist())
        run.floored.append((torch.mul(state.h, hp.gamma) <= hp.eps).tolist())
    run.seconds = time.perf_counter() - began
    return run


def check_problem(problem: Problem, steps: int = STEPS, hp: Hyper | None = None,
                  bound: float | None = None) -> CheckResult:
    """Run both trajectories of ``problem`` and compare them."""
    hp = hyper_for(problem) if hp is None else hp
    bound = bound_for(problem) if bound is None else bound
    exact = run_mpmath(problem, hp, steps)
    reference = run_reference(problem, hp, steps)
    comparison = compare(problem, hp, reference, exact)
    check = result(comparison, bound, [movement(problem, exact),
                                       f"{steps} steps; mpmath run {exact.seconds:.2f} s, "
                                       f"reference run {reference.seconds:.2f} s"])
    if steps != STEPS:
        check = replace(check, check=f"{steps}-step trajectory vs mpmath {DPS} digits")
    return check


QUICK_PROBLEMS = ("separable quadratic, kappa=1e+08", "rotated quadratic, kappa=1e+08", "logistic regression",
                  "paper 2-D problem", "Rosenbrock", "quartic double well", "pure saddle")


def checks(quick: bool) -> list[tuple[str, Callable[[], CheckResult]]]:
    """One named thunk per problem, 200 steps each: quick, the cheap problems (the worst-conditioned
    quadratics, logistic regression and the 2-D non-convex ones, about 4 s); full, every zoo problem
    (about 10 s on one core)."""
    problems = all_problems(quick=False)
    if quick:
        problems = [p for p in problems if p.name in QUICK_PROBLEMS]
    return [(f"trajectory: {p.name}", (lambda p=p: check_problem(p))) for p in problems]
