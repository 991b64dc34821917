"""Shared set-up of the step-cost benchmarks: parameter layout, fixed data, optimizers.

Imported by ``test_step_cost.py`` (pytest puts ``benchmarks/`` on ``sys.path``,
see ``conftest.py``) and by ``step_ratio.py`` (run as a script, so its own
folder is ``sys.path[0]``).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch

try:
    import sophia_ref  # noqa: F401  (installed, or the repository root is already on sys.path)
except ImportError:  # run from a checkout without installing: use the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sophia_ref import SophiaRef  # noqa: E402

DEFAULT_PARAMS = 1_000_000  # a target: the layout rounds it, see layout(); 1e6 gives width 768, 985,856 parameters
DEFAULT_THREADS = 1         # intra-op threads for both optimizers; 1 keeps a 2-core noisy machine quieter
HESSIAN_INTERVAL = 10
SEED = 0

SOPHIA_KWARGS = dict(lr=1e-3, gamma=0.05, weight_decay=0.1, hessian_interval=HESSIAN_INTERVAL)
ADAMW_KWARGS = dict(lr=1e-3, weight_decay=0.1, foreach=False)
#: the production pair: sophia_ref.fast.Sophia(backend="foreach") against torch's foreach AdamW, float32
FAST_PARAMS = 10_000_000  # gives width 2432: 2432x2432 + 1621x2432 + 2432 + 1621 + 2432 + 2432 = 9,865,813
FAST_ADAMW_KWARGS = dict(lr=1e-3, weight_decay=0.1, foreach=True)


def layout(target: int = DEFAULT_PARAMS) -> list[tuple[int, ...]]:
    """Tensor shapes of one transformer-ish block slice totalling about ``target`` parameters.

    A ``d x d`` projection, a ``(2d/3) x d`` projection, their biases and a
    LayerNorm weight and bias: ``5/3 d^2 + 11/3 d`` parameters. ``d`` is rounded
    to a multiple of 64 once it is at least 128, so the default target of 1e6
    gives ``d = 768`` (768x768 + 512x768 + 768 + 512 + 768 + 768 = 985,856).
    """
    if target < 10:
        raise ValueError(f"--params {target} is too small; need at least 10")
    d = math.sqrt(3 * target / 5)
    d = max(64, 64 * round(d / 64)) if d >= 128 else max(3, round(d))
    d2 = max(1, round(2 * d / 3))
    return [(d, d), (d2, d), (d,), (d2,), (d,), (d,)]


def numel(shapes: list[tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes)


@dataclass
class Problem:
    """Fixed float64 data: initial values, gradients and one Hessian-diagonal estimate per tensor."""

    shapes: list[tuple[int, ...]]
    init: list[torch.Tensor]
    grads: list[torch.Tensor]
    hhat: list[torch.Tensor]

    @property
    def numel(self) -> int:
        return numel(self.shapes)


def make_problem(target: int = DEFAULT_PARAMS, seed: int = SEED, dtype: torch.dtype = torch.float64) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    shapes = layout(target)

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=dtype)

    init = [0.02 * randn(s) for s in shapes]
    grads = [1e-3 * randn(s) for s in shapes]
    # Positive curvature of the size a GNB estimate would give for these gradients (B g^2, B = 480), kept off 0.
    # Which coordinates end up clipped does not change the work: every op of the step is dense.
    hhat = [480 * g * g + 1e-6 * randn(s).abs() for g, s in zip(grads, shapes)]
    return Problem(shapes, init, grads, hhat)


def make_params(problem: Problem) -> list[torch.nn.Parameter]:
    """Fresh parameters (own storage) holding the problem's initial values and its fixed gradients."""
    params = []
    for x, g in zip(problem.init, problem.grads):
        p = torch.nn.Parameter(x.clone())
        p.grad = g.clone()
        params.append(p)
    return params


def make_sophia(problem: Problem) -> tuple[SophiaRef, list[torch.Tensor]]:
    """A SophiaRef on fresh parameters and the estimate list to pass to every step() call."""
    return SophiaRef(make_params(problem), **SOPHIA_KWARGS), [h.clone() for h in problem.hhat]


def make_adamw(problem: Problem, **overrides) -> torch.optim.AdamW:
    return torch.optim.AdamW(make_params(problem), **{**ADAMW_KWARGS, **overrides})


def make_fast(problem: Problem, backend: str = "foreach"):
    """A sophia_ref.fast.Sophia on fresh parameters, with the estimate list to pass to every step() call."""
    from sophia_ref.fast import Sophia

    return Sophia(make_params(problem), backend=backend, **SOPHIA_KWARGS), [h.clone() for h in problem.hhat]


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"torch.set_num_threads({threads}) did not take: {torch.get_num_threads()} threads")


def describe(problem: Problem) -> str:
    shapes = " + ".join("x".join(map(str, s)) for s in problem.shapes)
    return (f"{problem.numel:,} {str(problem.init[0].dtype).replace('torch.', '')} parameters ({shapes}); "
            f"torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s)")
