"""Cost of one optimizer step on ~1M float64 parameters: SophiaRef vs torch.optim.AdamW(foreach=False).

Run explicitly (these are not collected by the normal test suite, whose testpaths is ["tests"])::

    python -m pytest benchmarks/ --benchmark-only

Set-up: the tensors of ``_problem.layout()`` (768x768 + 512x768 + 768 + 512 + 768 + 768 = 985,856 float64
parameters), fixed random gradients assigned once, ``torch.set_num_threads(1)`` (override with the environment
variable SOPHIA_BENCH_THREADS). SophiaRef(lr=1e-3, gamma=0.05, weight_decay=0.1, hessian_interval=10) is given
the same precomputed estimate list on every call; it uses it on refresh steps (t = 1, 11, 21, ...) only.

Each round times 10 consecutive steps (``iterations=10``) and pytest-benchmark reports the time per step, so every
round, and hence min, median and mean alike, includes exactly one refresh step in ten. Both optimizers take one
warm-up round (10 steps: AdamW creates its state, SophiaRef its state and first h) before timing.

For a SophiaRef/AdamW ratio measured in one interleaved run (more robust on a noisy machine), use
``python benchmarks/step_ratio.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

import _problem

THREADS = int(os.environ.get("SOPHIA_BENCH_THREADS", _problem.DEFAULT_THREADS))
STEPS_PER_ROUND = _problem.HESSIAN_INTERVAL  # one refresh in every round
ROUNDS = int(os.environ.get("SOPHIA_BENCH_ROUNDS", 30))
GROUP = "step-1M-float64"


@pytest.fixture(scope="module")
def problem():
    _problem.set_threads(THREADS)
    problem = _problem.make_problem()
    print(f"\n[step cost] {_problem.describe(problem)}")
    return problem


def _record(benchmark, problem, name):
    benchmark.extra_info.update(numel=problem.numel, shapes=[list(s) for s in problem.shapes], threads=THREADS,
                                torch=torch.__version__, steps_per_round=STEPS_PER_ROUND, optimizer=name)


@pytest.mark.benchmark(group=GROUP)
def test_sophia_ref_step(benchmark, problem):
    opt, estimate = _problem.make_sophia(problem)
    _record(benchmark, problem, "SophiaRef")
    benchmark.extra_info["hessian_interval"] = _problem.HESSIAN_INTERVAL

    def step():
        opt.step(hessian_estimate=estimate)

    benchmark.pedantic(step, rounds=ROUNDS, iterations=STEPS_PER_ROUND, warmup_rounds=1)

    t = opt.diagnostics.step
    assert t == opt._step and t >= 1
    assert opt.diagnostics.refreshes == (t - 1) // _problem.HESSIAN_INTERVAL + 1  # every 10th call did refresh
    assert all(bool(torch.isfinite(p).all()) for group in opt.param_groups for p in group["params"])


@pytest.mark.benchmark(group=GROUP)
def test_adamw_step(benchmark, problem):
    opt = _problem.make_adamw(problem)
    _record(benchmark, problem, "AdamW(foreach=False)")

    benchmark.pedantic(opt.step, rounds=ROUNDS, iterations=STEPS_PER_ROUND, warmup_rounds=1)

    assert all(bool(torch.isfinite(p).all()) for group in opt.param_groups for p in group["params"])
