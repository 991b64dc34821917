"""Stage 4a, the battery: seeded scenarios and the data (gradients, estimates) each one feeds both sides.

A scenario is data, not code: parameter shapes, steps, hyperparameters, and how the gradients
and Hessian-diagonal estimates look. :func:`make_data` turns one into float64 tensors, with the
estimates in the dialect's own meaning (B-free where the batch factor lives at step time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sophia_ref.dialects import Dialect

from ..adapters.base import Adapter, Hyperparameters, Refresh

F64 = torch.float64


@dataclass(frozen=True)
class Scenario:
    """Seeded data for a run: parameter shapes, steps, hyperparameters, and how gradients and estimates look.

    ``estimates``: ``"gnb"`` (``B ghat^2``, never negative), ``"signed"`` (Hutchinson-like, some
    negative; only for implementations that accept any estimate), ``"near_floor"`` (``gamma hhat``
    within a factor 2 of eps, either side, and gradients of the size of eps, so the floor region is
    not all sign steps). ``grad_scale`` scales the gradients (1e8: huge gradients).

    Hyperparameters an implementation has built in (the official code's eps = 1e-15) replace the
    scenario's, for the reference too (:func:`hyperparameters`).
    """

    name: str
    shapes: tuple[tuple[int, ...], ...] = ((4, 5), (7,))
    steps: int = 12
    hyper: Hyperparameters = Hyperparameters(lr=0.01, beta1=0.9, beta2=0.95, gamma=0.05, eps=1e-12,
                                             weight_decay=0.1, hessian_interval=3, batch_size=8.0)
    seed: int = 0
    estimates: str = "gnb"
    grad_scale: float = 1.0
    non_contiguous: bool = False
    #: free-running: after this step, both sides save and reload their state (state_dict round trip)
    checkpoint_at: int | None = None
    #: a zoo problem (verification.oracles.zoo) whose gradient at the reference's point drives the run
    problem: str | None = None
    #: teacher-forced only: before each step, both sides are loaded with a signed random h (some h < 0),
    #: so implementations that fold only squares are tested where h < 0 too
    signed_state: bool = False
    #: one parameter group per tensor with these overrides (lr, weight_decay); None: a single group
    groups: tuple[dict, ...] | None = None


#: the ``--quick`` battery: one scenario per region of the rule (unclipped and clipped steps, odd shapes, a
#: refresh every step, the eps floor, h < 0, a checkpoint), chosen so that every deliberately wrong variant of
#: the test suite is still caught; the full battery adds weight-decay, scale, layout, group, zoo and long runs
QUICK = ("random tensors", "0-d, empty and long tensors", "refresh every step (k = 1)", "curvature near eps/gamma",
         "negative h (signed estimates)", "state_dict round trip mid-run")


def battery(quick: bool = False) -> list[Scenario]:
    """The scenarios every implementation is run through (:data:`QUICK` only, with ``quick``)."""
    base = Scenario("random tensors")
    out = [
        base,
        replace(base, name="0-d, empty and long tensors", shapes=((), (0,), (64,)), seed=1),
        replace(base, name="refresh every step (k = 1)", hyper=replace(base.hyper, hessian_interval=1), seed=2),
        replace(base, name="no weight decay", hyper=replace(base.hyper, weight_decay=0.0), seed=3),
        replace(base, name="huge gradients", grad_scale=1e8, seed=4),
        replace(base, name="curvature near eps/gamma", estimates="near_floor", seed=5,
                hyper=replace(base.hyper, beta2=0.0)),  # h = hhat: gamma h straddles eps; m / eps ~ 0.1
        replace(base, name="negative h (signed estimates)", estimates="signed", seed=6),
        replace(base, name="non-contiguous tensors", non_contiguous=True, seed=7),
        replace(base, name="negative h loaded into the state", signed_state=True, seed=12),
        replace(base, name="two parameter groups (lr, weight decay)", seed=13,
                groups=({"lr": 0.02, "weight_decay": 0.0}, {"lr": 0.005, "weight_decay": 0.3})),
        replace(base, name="state_dict round trip mid-run", checkpoint_at=5, seed=10),
        replace(base, name="zoo: tanh network (Gauss-Newton estimates)", problem="tanh network", steps=15,
                hyper=replace(base.hyper, lr=0.05, gamma=0.5, batch_size=8.0), seed=11),
    ]
    if quick:
        return [s for s in out if s.name in QUICK]
    out += [
        replace(base, name="refresh every 5 steps, 30 steps", steps=30,
                hyper=replace(base.hyper, hessian_interval=5), seed=8),
        replace(base, name="paper defaults (b1 0.96, b2 0.99, k 10)", steps=25,
                hyper=Hyperparameters(lr=0.02, beta1=0.96, beta2=0.99, gamma=0.01, eps=1e-12, weight_decay=0.0,
                                      hessian_interval=10, batch_size=8.0), seed=9),
    ]
    return out


def hyperparameters(scenario: Scenario, adapter: Adapter | None = None) -> Hyperparameters:
    """The scenario's hyperparameters, with those the implementation has built in (``adapter.fixed``)."""
    return replace(scenario.hyper, **(adapter.fixed if adapter is not None else {}))


def refresh_steps(dialect: Dialect, k: int, steps: int) -> list[int]:
    """The steps on which the harness hands out an estimate: the dialect's own schedule; for a caller-driven
    refresh, the official recipe's (after step k, 2k, ...: the refresh of steps k + 1, 2k + 1, ...)."""
    if dialect.knobs.refresh == "caller":
        return [t for t in range(1, steps + 1) if t > 1 and (t - 1) % k == 0]
    return [t for t in range(1, steps + 1) if (t - 1) % k == 0]


@dataclass
class Data:
    init: list[Tensor]
    grads: list[list[Tensor]]
    refreshes: dict[int, Refresh]


def make_data(scenario: Scenario, dialect: Dialect, hyper: Hyperparameters | None = None) -> Data:
    """Seeded float64 data; estimates in the dialect's own meaning (B-free where B lives at step time)."""
    gen = torch.Generator().manual_seed(scenario.seed)
    hyper = hyper or scenario.hyper

    def randn(shape):
        return torch.randn(shape, dtype=F64, generator=gen)

    if scenario.problem is not None:  # gradients and estimates come from the problem, step by step
        start = torch.tensor(_zoo(scenario.problem).start, dtype=F64)
        steps = refresh_steps(dialect, hyper.hessian_interval, scenario.steps)
        return Data([start], [], {t: None for t in steps})
    init = [randn(s) for s in scenario.shapes]
    scale = hyper.eps if scenario.estimates == "near_floor" else scenario.grad_scale
    grads = [[scale * randn(s) for s in scenario.shapes] for _ in range(scenario.steps)]
    refreshes = {}
    for t in refresh_steps(dialect, hyper.hessian_interval, scenario.steps):
        ghat = [0.3 * randn(s) for s in scenario.shapes]
        b = hyper.batch_size
        b_in_estimate = dialect.knobs.batch_factor == "estimate"
        if scenario.estimates == "gnb":
            hhat = [(b if b_in_estimate else 1.0) * g * g for g in ghat]
        elif scenario.estimates == "near_floor":  # gamma * h within a factor 2 of eps
            target = hyper.eps / hyper.gamma
            # z / (1 + |z|) rather than tanh: exact IEEE arithmetic only, so the data (and the exported test
            # vectors) are bit-identical on every machine, whatever its libm or vector unit
            hhat = [target * (1.0 + 0.5 * _softsign(randn(s))) for s in scenario.shapes]
            ghat = None
        else:
            hhat = [randn(s) for s in scenario.shapes]
            ghat = None
        refreshes[t] = Refresh(hhat=hhat, ghat=ghat, batch=b)
    if scenario.non_contiguous:
        init, grads = _strided(init), [_strided(g) for g in grads]
        refreshes = {t: Refresh(_strided(r.hhat), None if r.ghat is None else _strided(r.ghat), r.batch)
                     for t, r in refreshes.items()}
    return Data(init, grads, refreshes)


def _softsign(z: Tensor) -> Tensor:
    """``z / (1 + |z|)``, in (-1, 1): a squashing made of correctly rounded operations only."""
    return z / (1.0 + z.abs())


def _zoo(name: str):
    from ..oracles.zoo import all_problems

    return next(p for p in all_problems(quick=True) if p.name == name)


def _zoo_inputs(scenario: Scenario, dialect: Dialect, hyper: Hyperparameters, theta: Tensor,
                refresh: bool) -> tuple[list[Tensor], Refresh | None]:
    """The problem's float64 gradient at theta and, on refresh steps, its Gauss-Newton diagonal as a
    GNB-shaped estimate (``ghat = sqrt(gn / B)``, ``hhat = B ghat^2`` or ``ghat^2`` where B lives at step time)."""
    from ..oracles.zoo import FLOAT

    problem = _zoo(scenario.problem)
    x = [float(v) for v in theta.tolist()]
    grads = [torch.tensor(problem.grad(x, FLOAT), dtype=F64)]
    if not refresh:
        return grads, None
    b = hyper.batch_size
    gn = torch.tensor(problem.gauss_newton_diagonal(x, FLOAT), dtype=F64)
    ghat = torch.sqrt(gn / b)
    hhat = (b if dialect.knobs.batch_factor == "estimate" else 1.0) * ghat * ghat
    return grads, Refresh(hhat=[hhat], ghat=[ghat], batch=b)


def _strided(tensors: list[Tensor]) -> list[Tensor]:
    """The same values as views with a gap between elements (every other element of a buffer)."""
    out = []
    for t in tensors:
        buffer = torch.zeros(tuple(t.shape) + (2,), dtype=t.dtype)
        buffer[..., 0] = t
        out.append(buffer[..., 0])
    return out
