"""The paper's 2-D illustration (SPEC section 3): Sophia vs Newton vs SignGD, deterministic.

``L(x, y) = L1(x) + L2(y)`` with ``L1(x) = 8 (x - 1)^2 (1.3 x^2 + 2 x + 1)``, sharp and
non-convex (minimum at x = 1 with L1'' = 68.8, maximum at 0, a local minimum near
-0.654, negative curvature for -0.366 < x < 0.596), and ``L2(y) = (y - 4)^2 / 2``,
flat. From a start with negative curvature in x, Newton's method runs to the
saddle (0, 4); SignGD moves every coordinate by lr and crawls; Sophia takes sign
steps where the curvature is negative and Newton-like steps where it is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .estimators import exact_diagonal
from .optim import SophiaRef

MINIMIZER = (1.0, 4.0)
SADDLE = (0.0, 4.0)


def toy_loss(theta: torch.Tensor) -> torch.Tensor:
    x, y = theta[0], theta[1]
    return 8 * (x - 1) ** 2 * (1.3 * x ** 2 + 2 * x + 1) + 0.5 * (y - 4) ** 2


@dataclass
class Trajectory:
    method: str
    points: list[tuple[float, float]]
    losses: list[float]

    def steps_to(self, target: tuple[float, float], tol: float = 1e-6) -> int | None:
        """First step whose iterate is within tol of target in every coordinate (None if never)."""
        for t, (x, y) in enumerate(self.points):
            if abs(x - target[0]) <= tol and abs(y - target[1]) <= tol:
                return t
        return None


def _trajectory(method: str, theta: torch.Tensor, steps: int, move) -> Trajectory:
    points, losses = [], []
    for t in range(steps + 1):
        point = theta.detach()
        points.append((float(point[0]), float(point[1])))
        losses.append(float(toy_loss(point)))
        if t < steps:
            move(theta)
    return Trajectory(method, points, losses)


def _grad(theta: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(toy_loss(point), point)
    return g


def sophia(start, steps: int, lr: float, gamma: float) -> Trajectory:
    """Deterministic Sophia (b1 = b2 = 0, exact Hessian diagonal every step, k = 1)."""
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = SophiaRef([theta], lr=lr, betas=(0.0, 0.0), gamma=gamma, eps=1e-12, hessian_interval=1,
                    hessian_estimator=lambda: exact_diagonal(lambda: toy_loss(theta), [theta]))

    def move(_):
        opt.zero_grad()
        toy_loss(theta).backward()
        opt.step()

    return _trajectory("Sophia", theta, steps, move)


def newton(start, steps: int) -> Trajectory:
    """Newton's method, ``theta -= H^{-1} grad`` (the Hessian is diagonal here)."""
    theta = torch.tensor(start, dtype=torch.float64)

    def move(th):
        hessian = torch.autograd.functional.hessian(toy_loss, th)
        th -= torch.linalg.solve(hessian, _grad(th))

    return _trajectory("Newton", theta, steps, move)


def signgd(start, steps: int, lr: float) -> Trajectory:
    """Sign descent, ``theta -= lr sign(grad)``."""
    theta = torch.tensor(start, dtype=torch.float64)

    def move(th):
        th -= lr * torch.sign(_grad(th))

    return _trajectory("SignGD", theta, steps, move)


def run(start=(0.3, 1.0), steps: int = 30, lr: float = 0.5, gamma: float = 0.5,
        sign_lr: float = 0.1) -> list[Trajectory]:
    """The three trajectories from one start point."""
    return [sophia(start, steps, lr, gamma), newton(start, steps), signgd(start, steps, sign_lr)]


def format_table(trajectories: list[Trajectory]) -> str:
    """Every step up to 10, then every 10th, and a verdict per method."""
    header = f"{'step':>4} " + " ".join(f"| {tr.method + ' (x, y)':<22} {'loss':>10} " for tr in trajectories)
    lines = [header, "-" * len(header)]
    steps = len(trajectories[0].points) - 1
    for t in sorted(set(range(min(steps, 10) + 1)) | set(range(0, steps + 1, 10)) | {steps}):
        cells = " ".join(f"| ({tr.points[t][0]:+9.6f}, {tr.points[t][1]:+9.6f}) {tr.losses[t]:10.3e} "
                         for tr in trajectories)
        lines.append(f"{t:>4} {cells}")
    lines.append("")
    for tr in trajectories:
        x, y = tr.points[-1]
        reached = tr.steps_to(MINIMIZER)
        saddle = tr.steps_to(SADDLE)
        if reached is not None:
            verdict = f"reached the minimizer (1, 4) to 1e-6 at step {reached}"
        elif saddle is not None:
            verdict = f"converged to the saddle (0, 4) at step {saddle}"
        else:
            verdict = f"ended at ({x:.6f}, {y:.6f}), not at the minimizer"
        lines.append(f"{tr.method:>7}: {verdict}")
    return "\n".join(lines)
