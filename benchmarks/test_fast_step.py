"""Cost of one production step on ~10M float32 parameters: sophia_ref.fast.Sophia(backend="foreach") vs
torch.optim.AdamW(foreach=True), in the same run.

Run explicitly (not collected by the test suite, whose testpaths is ["tests"])::

    python -m pytest benchmarks/test_fast_step.py --benchmark-only

Set-up: the tensors of ``_problem.layout(10_000_000)`` (2432x2432 + 1621x2432 + 2432 + 1621 + 2432 + 2432 =
9,865,813 float32 parameters), fixed random gradients assigned once, ``torch.set_num_threads(1)`` (override with
SOPHIA_BENCH_THREADS). Sophia(lr=1e-3, gamma=0.05, weight_decay=0.1, hessian_interval=10), default
nan_policy="raise" (one non-finite check per step), gets the same precomputed estimate list on every call and uses
it on refresh steps only; AdamW(lr=1e-3, weight_decay=0.1, foreach=True). Each round times 10 consecutive steps,
so each includes one refresh. The target is a ratio of at most 1.0 (Sophia's step moves fewer bytes); for the
ratio measured interleaved, which a noisy machine needs, run ``python benchmarks/step_ratio.py --pair fast``.
"""

from __future__ import annotations

import os

import pytest
import torch

import _problem

THREADS = int(os.environ.get("SOPHIA_BENCH_THREADS", _problem.DEFAULT_THREADS))
STEPS_PER_ROUND = _problem.HESSIAN_INTERVAL
ROUNDS = int(os.environ.get("SOPHIA_BENCH_ROUNDS", 20))
GROUP = "step-10M-float32"


@pytest.fixture(scope="module")
def problem():
    _problem.set_threads(THREADS)
    problem = _problem.make_problem(_problem.FAST_PARAMS, dtype=torch.float32)
    print(f"\n[fast step cost] {_problem.describe(problem)}")
    return problem


def _record(benchmark, problem, name):
    benchmark.extra_info.update(numel=problem.numel, threads=THREADS, torch=torch.__version__,
                                steps_per_round=STEPS_PER_ROUND, optimizer=name, dtype="float32")


@pytest.mark.benchmark(group=GROUP)
def test_fast_sophia_foreach_step(benchmark, problem):
    opt, estimate = _problem.make_fast(problem, backend="foreach")
    _record(benchmark, problem, "sophia_ref.fast.Sophia(foreach)")
    benchmark.pedantic(lambda: opt.step(hessian_estimate=estimate), rounds=ROUNDS, iterations=STEPS_PER_ROUND,
                       warmup_rounds=1)
    assert opt.diagnostics.refreshes == (opt._step - 1) // _problem.HESSIAN_INTERVAL + 1
    assert 0.0 <= opt.diagnostics.win_rate <= 1.0
    assert all(bool(torch.isfinite(p).all()) for group in opt.param_groups for p in group["params"])


@pytest.mark.benchmark(group=GROUP)
def test_adamw_foreach_step(benchmark, problem):
    opt = _problem.make_adamw(problem, **_problem.FAST_ADAMW_KWARGS)
    _record(benchmark, problem, "AdamW(foreach=True)")
    benchmark.pedantic(opt.step, rounds=ROUNDS, iterations=STEPS_PER_ROUND, warmup_rounds=1)
    assert all(bool(torch.isfinite(p).all()) for group in opt.param_groups for p in group["params"])
