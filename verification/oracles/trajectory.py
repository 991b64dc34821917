"""Oracle: 200-step trajectories of the float64 reference against the paper's rule in mpmath at 50 digits.

The oracle is SPEC section 1, dialect ``paper``, written again here over mpmath numbers
(the zoo's :func:`~verification.oracles.zoo.mp_ops` context, 50 digits); it imports nothing of
``sophia_ref``. Per coordinate, with ``m_0 = h_0 = 0`` and ``t = 1, 2, ...``::

    m_t         = b1 m_{t-1} + (1 - b1) g_t
    h_t         = b2 h_{t-k} + (1 - b2) hhat_t      if (t - 1) mod k == 0, else h_{t-1}
    theta_{t+1} = theta_t - eta lam theta_t - eta clip(m_t / max(gamma h_t, eps), 1)

with the exact Hessian diagonal as ``hhat``, fed the 50-digit gradient and diagonal at the 50-digit
iterate. :func:`compare` measures a float64 run of the same rule (a :class:`Run`), started from the
same float64 point with the same float64 hyperparameters (taken as exact numbers by mpmath), so
every difference is that run's rounding propagated through the dynamics;
:mod:`verification.checks.trajectory` produces the reference's run and pairs the two.

The measure, per step t (theta(t) is the iterate after t steps)::

    e_t = max_i |theta_ref_i(t) - theta_mp_i(t)| / max(1, |theta_mp_i(t)|)

an error relative to the operand's own scale where the coordinate is larger than one, and
absolute below it (every iterate's rounding is of the size of its ulp; near zero the step's
rounding, of the size of eta times an ulp of an O(1) ratio, dominates). The check reports
``c = max_t e_t / (t 2^-52)`` and asserts ``c <= C_BOUND`` (see :data:`C_BOUND` for the derivation).

Clip-boundary flips, a step and coordinate where the reference's decision (clipped, ``|u| = 1``,
or floored, ``gamma h <= eps``) differs from the mpmath run's, are detected and listed, never
hidden. A flip is *explained* when the exact run sits on the boundary to within
:data:`FLIP_TOLERANCE` (the clip and the floor are continuous there, so such a flip moves the
step by a rounding-sized amount); an unexplained flip fails the check. The bound is evaluated on
the steps before the first flip; what happened after it is reported in the notes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

from ..report import CheckResult
from .zoo import (DoubleWell, LogisticRegression, Ops, PaperToy, Problem, RotatedQuadratic, Rosenbrock, Saddle,
                  SeparableQuadratic, SoftmaxRegression, TanhNetwork, mp_ops)

STEPS = 200
DPS = 50
UNIT = 2.0 ** -52
CHECK_NAME = "200-step trajectory vs mpmath 50 digits"

C_BOUND = 2.0
"""Asserted bound on ``c`` in ``e_t <= c t 2^-52`` (see :func:`bound_for` for the one exception).

Roundings per step and coordinate in the reference: ``m`` (3), ``h`` (3 on refresh steps),
``gamma h`` (1), ``m / d`` (1), ``eta u`` (1), the weight-decay product (2 when lam > 0) and the
final ``theta + delta`` (1), plus those of the float64 closed-form gradient and diagonal. Each is
at most ``2^-53`` relative to its operand. The step has ``|eta u| <= eta <= 0.05`` here, so the
roundings inside it add at most about ``10 * 0.05 * 2^-53`` to the iterate, and the final
addition at most ``2^-53 max(1, |theta|)``: a local error of at most about ``0.75 * 2^-52`` per
step in the unit of ``e_t``. Where the step is a clipped sign step (``u = +-1``, exact in both
runs) the iterate does not depend on the earlier error, so the local errors add up: the growth
is linear, and with a bias (``theta - eta`` repeated rounds the same way for many steps) it is
linear with a slope near the local error, not a random walk. Where the step is Newton-like near
a minimizer, the dynamics contract the error and ``e_t`` stops growing. So ``e_t <= c t 2^-52``
with ``c`` the local error per step, up to transient amplification by momentum.

Measured (200 steps, hyperparameters of :func:`hyper_for`): ``c <= 0.69`` (Rosenbrock) on every
zoo problem but the rotated quadratic at kappa = 1e8 (1.50; 0.54 at kappa = 1e6). ``C_BOUND = 2``
is the per-step estimate above (0.75) with a margin of about 2.7, and 2.9 times the largest
measured value it covers.
"""

C_BOUND_ILL_CONDITIONED = 4.0
"""The bound for the rotated quadratics with kappa >= 1e6: c measured 1.50 at kappa = 1e8, at step
17, with exactly rounded float64 gradients as well as with the zoo's float64 closed form (so it is
the rule's own rounding, amplified): while h is still small (``h_t = (1 - b2^t) diag A``) the
Newton-like steps ``eta m / (gamma h)`` see ``A delta_theta`` with off-diagonal entries up to kappa
times the diagonal ones, and momentum with b1 = 0.96 amplifies that transiently before the dynamics
settle. Bound: 1.5 times a margin of about 2.7, as above.
"""

FLIP_TOLERANCE = 1e-8
"""A flip is explained when the exact ratio ``|m / d|`` is within this of 1 (clip), or the exact
``gamma h`` is within this times ``gamma max_i |hhat_i|`` of eps (floor): far above the
reference's relative rounding error (``C_BOUND * 200 * 2^-52 < 2e-13``), far below any real
departure from the rule."""


# -- hyperparameters --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hyper:
    """Paper Sophia's hyperparameters as plain float64 numbers (mpmath takes them as exact)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    gamma: float = 1.0
    eps: float = 1e-12
    weight_decay: float = 0.0
    k: int = 1
    why: str = ""

    def describe(self) -> str:
        return (f"eta={self.lr:g}, b1={self.beta1:g}, b2={self.beta2:g}, gamma={self.gamma:g}, eps={self.eps:g}, "
                f"lam={self.weight_decay:g}, k={self.k}")


def hyper_for(problem: Problem) -> Hyper:
    """The per-problem hyperparameters of the 200-step runs (chosen so that the run moves, crosses from
    clipped to mostly unclipped, and, where the problem allows, converges; see ``why``)."""
    if isinstance(problem, SeparableQuadratic):
        return Hyper(0.05, 0.9, 0.99, 1.0, why="start 1-3 away: ~40 clipped sign steps, then Newton-like "
                                                 "steps with momentum (|x - c| < 0.87 gamma is unclipped)")
    if isinstance(problem, RotatedQuadratic):
        return Hyper(0.05, 0.96, 0.99, 1.0, k=2, why="paper b1; k = 2 exercises the refresh schedule; "
                                                       "sign steps, then a mix (diagonal preconditioning "
                                                       "cannot undo the rotation)")
    if isinstance(problem, LogisticRegression):
        return Hyper(0.05, 0.9, 0.99, 0.5, weight_decay=0.01, why="with decoupled weight decay lam = 0.01")
    if isinstance(problem, SoftmaxRegression):
        return Hyper(0.05, 0.96, 0.99, 0.5, k=3, why="paper b1, refresh every 3 steps")
    if isinstance(problem, PaperToy):
        return Hyper(0.05, 0.9, 0.99, 1.0, why="x starts in negative curvature (floored sign steps), "
                                                "then Newton-like at the minimizer (1, 4)")
    if isinstance(problem, Rosenbrock):
        return Hyper(0.05, 0.9, 0.99, 0.1, why="small gamma: the clip decisions change often (14 times) while the "
                                                 "run follows the curved valley")
    if isinstance(problem, DoubleWell):
        return Hyper(0.05, 0.9, 0.99, 1.0, why="both coordinates start in negative curvature (floored)")
    if isinstance(problem, Saddle):
        return Hyper(0.05, 0.9, 0.99, 1.0, why="y has negative curvature: floored sign steps, |y| grows "
                                                "linearly; x converges Newton-like")
    if isinstance(problem, TanhNetwork):
        return Hyper(0.02, 0.96, 0.99, 1.0, weight_decay=0.01, k=2,
                     why="paper b1, weight decay, k = 2; mixed curvature signs")
    return Hyper(0.01, why="default")


# -- the mpmath rule (SPEC section 1, written independently) -----------------------------------------------------

@dataclass
class Run:
    """One trajectory: ``thetas[t]`` is the iterate after t steps (``thetas[0]`` the start);
    ``clipped[t-1][i]`` / ``floored[t-1][i]`` are step t's decisions for coordinate i; ``ratios`` the
    ratio ``m / d`` (mpmath run) or the direction ``u`` (a float64 run); ``curvature`` ``gamma h`` and
    ``scale`` ``gamma max_i |hhat_i|`` of the last refresh (mpmath run only)."""

    thetas: list[list] = field(default_factory=list)
    clipped: list[list[bool]] = field(default_factory=list)
    floored: list[list[bool]] = field(default_factory=list)
    ratios: list[list] = field(default_factory=list)
    curvature: list[list] = field(default_factory=list)
    scale: list = field(default_factory=list)
    seconds: float = 0.0


def mp_step(t: int, m: list, h: list, theta: list, grad: list, hhat: list | None, hp: Hyper, ops: Ops):
    """Step t of the paper's rule over mpmath numbers: returns ``(m_t, h_t, theta_{t+1}, ratios, clipped,
    floored)``, where ``ratios`` is ``m_t / max(gamma h_t, eps)`` before the clip."""
    num = ops.num
    b1, b2, eta, lam, gamma, eps = (num(v) for v in (hp.beta1, hp.beta2, hp.lr, hp.weight_decay, hp.gamma, hp.eps))
    one = num(1.0)
    refresh = (t - 1) % hp.k == 0
    if refresh and hhat is None:
        raise ValueError(f"step {t} refreshes h (k={hp.k}) but no Hessian diagonal was given")
    m = [b1 * mi + (one - b1) * gi for mi, gi in zip(m, grad)]                  # m_t = b1 m_{t-1} + (1-b1) g_t
    if refresh:
        h = [b2 * hi + (one - b2) * ei for hi, ei in zip(h, hhat)]              # h_t = b2 h_{t-k} + (1-b2) hhat_t
    new_theta, ratios, clipped, floored = [], [], [], []
    for mi, hi, xi in zip(m, h, theta):
        curv = gamma * hi
        d = max(curv, eps)                                                       # max(gamma h_t, eps)
        if d > 0:
            z = mi / d
        else:                                                                    # eps = 0, gamma h <= 0
            z = num(0.0) if mi == 0 else (num(math.inf) if mi > 0 else num(-math.inf))
        u = max(min(z, one), -one)                                               # clip(z, 1)
        new_theta.append(xi - eta * lam * xi - eta * u)                          # theta - eta lam theta - eta u
        ratios.append(z)
        clipped.append(abs(z) >= one)
        floored.append(curv <= eps)
    return m, h, new_theta, ratios, clipped, floored


def run_mpmath(problem: Problem, hp: Hyper, steps: int = STEPS, start: Sequence[float] | None = None,
               dps: int = DPS) -> Run:
    """The paper's rule in mpmath at ``dps`` digits, fed the exact gradient and Hessian diagonal."""
    began = time.perf_counter()
    ops = mp_ops(dps)
    theta = problem.convert(problem.start if start is None else start, ops)
    zero = ops.num(0.0)
    m, h = [zero] * problem.dim, [zero] * problem.dim
    run = Run(thetas=[theta])
    scale = zero
    for t in range(1, steps + 1):
        grad = problem.grad(theta, ops)
        hhat = problem.hessian_diagonal(theta, ops) if (t - 1) % hp.k == 0 else None
        if hhat is not None:
            scale = ops.num(hp.gamma) * max(abs(v) for v in hhat)
        m, h, theta, ratios, clipped, floored = mp_step(t, m, h, theta, grad, hhat, hp, ops)
        run.thetas.append(theta)
        run.ratios.append(ratios)
        run.clipped.append(clipped)
        run.floored.append(floored)
        run.curvature.append([ops.num(hp.gamma) * v for v in h])
        run.scale.append(scale)
    run.seconds = time.perf_counter() - began
    return run


# -- the comparison ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flip:
    step: int
    coordinate: int
    kind: str            # "clip" or "floor"
    reference: bool      # the reference's decision (clipped / floored)
    exact: float         # the mpmath run's |m / d| (clip) or gamma h (floor)
    distance: float      # how far the exact run is from the boundary, in FLIP_TOLERANCE's terms
    explained: bool

    def describe(self) -> str:
        what = "clipped" if self.kind == "clip" else "floored"
        return (f"step {self.step}, coordinate {self.coordinate}: reference {'' if self.reference else 'not '}"
                f"{what}, exact {'|m/d|' if self.kind == 'clip' else 'gamma h'} = {self.exact:.17g} "
                f"({'explained' if self.explained else 'UNEXPLAINED'}: {self.distance:.2g} from the boundary)")


@dataclass
class Comparison:
    """``errors[t-1]`` = e_t, ``constants[t-1]`` = e_t / (t 2^-52), for t = 1..steps."""

    problem: str
    hyper: Hyper
    errors: list[float]
    constants: list[float]
    worst_coordinates: list[int]
    flips: list[Flip]
    clipped_at_end: int
    floored_at_end: int
    dim: int

    @property
    def first_flip(self) -> int | None:
        return min((f.step for f in self.flips), default=None)

    @property
    def measured_c(self) -> float:
        """max e_t / (t 2^-52) over the steps before the first flip (all steps if none)."""
        last = len(self.constants) if self.first_flip is None else self.first_flip - 1
        return max(self.constants[:last], default=0.0)

    @property
    def worst_step(self) -> int:
        last = len(self.constants) if self.first_flip is None else self.first_flip - 1
        if last == 0:
            return 0
        return max(range(last), key=lambda i: self.constants[i]) + 1

    def growth(self) -> str:
        """e_t at a few steps, in units of 2^-52, to show the shape of the growth."""
        marks = sorted({t for t in (1, 10, 50, 100, 150, 200, len(self.errors)) if 1 <= t <= len(self.errors)})
        return ", ".join(f"t={t}: {self.errors[t - 1] / UNIT:.3g}" for t in marks)


def compare(problem: Problem, hp: Hyper, reference: Run, exact: Run) -> Comparison:
    """e_t per step, the constant e_t / (t 2^-52), and every clip or floor decision that differs."""
    steps = len(exact.thetas) - 1
    if len(reference.thetas) != steps + 1:
        raise ValueError(f"the reference ran {len(reference.thetas) - 1} steps, the mpmath run {steps}")
    errors, constants, where, flips = [], [], [], []
    for t in range(1, steps + 1):
        worst, at = 0.0, 0
        for i, (r, x) in enumerate(zip(reference.thetas[t], exact.thetas[t])):
            rel = abs(x.__class__(r) - x) / max(1, abs(x))
            value = float(rel) if math.isfinite(r) else math.inf
            if value > worst or i == 0:
                worst, at = value, i
        errors.append(worst)
        constants.append(worst / (t * UNIT))
        where.append(at)
        for i in range(problem.dim):
            if reference.clipped[t - 1][i] != exact.clipped[t - 1][i]:
                z = abs(exact.ratios[t - 1][i])
                distance = float(abs(z - 1))
                flips.append(Flip(t, i, "clip", reference.clipped[t - 1][i], float(z), distance / FLIP_TOLERANCE,
                                  distance <= FLIP_TOLERANCE))
            if reference.floored[t - 1][i] != exact.floored[t - 1][i]:
                curv = exact.curvature[t - 1][i]
                distance = float(abs(curv - curv.__class__(hp.eps)) / max(exact.scale[t - 1], 1e-300))
                flips.append(Flip(t, i, "floor", reference.floored[t - 1][i], float(curv),
                                  distance / FLIP_TOLERANCE, distance <= FLIP_TOLERANCE))
    return Comparison(problem.name, hp, errors, constants, where, flips, sum(exact.clipped[-1]),
                      sum(exact.floored[-1]), problem.dim)


def bound_for(problem: Problem) -> float:
    """The asserted c for ``problem``: :data:`C_BOUND_ILL_CONDITIONED` for the rotated quadratics with
    kappa >= 1e6, :data:`C_BOUND` otherwise."""
    if isinstance(problem, RotatedQuadratic) and problem.kappa >= 1e6:
        return C_BOUND_ILL_CONDITIONED
    return C_BOUND


def result(comparison: Comparison, bound: float = C_BOUND, extra_notes: Sequence[str] = ()) -> CheckResult:
    """The comparison as a :class:`CheckResult`: passes when every reference iterate is finite, the
    measured c (before any flip) is within ``bound`` and every flip is explained."""
    c = comparison.measured_c
    unexplained = [f for f in comparison.flips if not f.explained]
    finite = all(math.isfinite(e) for e in comparison.errors)
    passed = finite and c <= bound and not unexplained
    worst_at = comparison.worst_step
    notes = [f"hyperparameters: {comparison.hyper.describe()} ({comparison.hyper.why})",
             f"worst c at step {worst_at}, coordinate "
             f"{comparison.worst_coordinates[worst_at - 1] if worst_at else '-'}",
             f"e_t in units of 2^-52: {comparison.growth()}",
             f"at step {len(comparison.errors)}: {comparison.clipped_at_end}/{comparison.dim} coordinates clipped, "
             f"{comparison.floored_at_end} floored"]
    if not finite:
        notes.append("the reference produced a non-finite iterate")
    if comparison.flips:
        first = comparison.first_flip
        after = comparison.constants[first - 1:]
        notes.append(f"{len(comparison.flips)} clip-boundary flip(s), {len(unexplained)} unexplained; bound "
                     f"evaluated on steps 1..{first - 1}; from the first flip on, max e_t/(t 2^-52) = {max(after):.3g}"
                     + (" (within the bound: the runs did not separate)" if max(after) <= bound
                        else " (ABOVE the bound: the runs separated at the flip)"))
        notes += [f.describe() for f in comparison.flips[:10]]
        if len(comparison.flips) > 10:
            notes.append(f"... and {len(comparison.flips) - 10} more flips")
    else:
        notes.append("no clip-boundary flips")
    notes += list(extra_notes)
    return CheckResult(comparison.problem, CHECK_NAME, c, bound, "t*2^-52", passed, tuple(notes))


def movement(problem: Problem, exact: Run) -> str:
    """How far the exact run moved and what it did to the loss, and how often a clip or floor decision
    changed along it (each change is a chance for a flip)."""
    ops = mp_ops(DPS)
    first, last = exact.thetas[0], exact.thetas[-1]
    moved = max(abs(a - b) for a, b in zip(first, last))
    changes = sum(a != b for run in (exact.clipped, exact.floored)
                  for now, then in zip(run, run[1:]) for a, b in zip(now, then))
    floored = [sum(f) for f in exact.floored]
    last_clipped = max((t + 1 for t, c in enumerate(exact.clipped) if any(c)), default=0)
    return (f"exact run: moved {float(moved):.3g} (max-norm), loss {float(problem.value(first, ops)):.6g} -> "
            f"{float(problem.value(last, ops)):.6g}, max |grad| at the end "
            f"{float(max(abs(g) for g in problem.grad(last, ops))):.3g}; some coordinate clipped up to step "
            f"{last_clipped}, floored on {sum(1 for f in floored if f)} steps (at most {max(floored)} at once); "
            f"clip/floor decisions changed {changes} times along the run")
