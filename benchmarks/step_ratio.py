"""Step-time ratio SophiaRef / AdamW(foreach=False), measured interleaved in one run; fails over budget.

    python benchmarks/step_ratio.py [--params N] [--repeats R] [--batch S] [--threads T] [--budget X]

Both optimizers get their own copy of the same float64 parameters (default: about 1M, see
``_problem.layout``: 768x768 + 512x768 + 768 + 512 + 768 + 768 = 985,856) with the same fixed random
gradients, and ``torch.set_num_threads(T)`` (default 1) for both. SophiaRef(lr=1e-3, gamma=0.05,
weight_decay=0.1, hessian_interval=10) gets a precomputed estimate list on every call;
AdamW(lr=1e-3, weight_decay=0.1, foreach=False) is torch's per-tensor loop.

Measurement: after one warm-up batch each, R rounds; each round times one batch of S consecutive steps of
each optimizer (S = 10 by default, so every SophiaRef batch holds exactly one refresh step and the batch
average is the amortized per-step cost), alternating which one goes first. The per-step time of a batch is
its wall time / S; the script reports the median over rounds of each, the ratio of the two medians, and
exits 1 if that ratio exceeds the budget (3.0: the reference may be at most 3x slower than AdamW).

Why interleave: on a small, shared, noisy machine the speed available drifts over seconds (other tenants,
frequency scaling, page-cache and allocator state). Timing all of one optimizer and then all of the other
lets such a drift land on one side only and move the ratio; alternating short batches exposes both to the
same conditions, and medians discard the batches hit by a burst of noise. The median of the per-round
ratios (each from two adjacent batches) is printed too, as a second, pairwise estimate.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import _problem  # benchmarks/ is sys.path[0] when this file is run as a script

BUDGET = 3.0


def _batch(step, steps: int) -> float:
    """Seconds per step over `steps` consecutive calls."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=_problem.DEFAULT_PARAMS,
                        help="approximate parameter count (default %(default)s; the layout rounds it)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--batch", type=int, default=_problem.HESSIAN_INTERVAL,
                        help="steps per timed batch (default %(default)s = hessian_interval: one refresh per batch)")
    parser.add_argument("--threads", type=int, default=_problem.DEFAULT_THREADS,
                        help="torch.set_num_threads for both optimizers (default %(default)s)")
    parser.add_argument("--budget", type=float, default=BUDGET,
                        help="largest accepted SophiaRef/AdamW ratio of medians (default %(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--repeats, --batch and --threads must be at least 1")

    _problem.set_threads(args.threads)
    problem = _problem.make_problem(args.params)
    sophia, estimate = _problem.make_sophia(problem)
    adamw = _problem.make_adamw(problem)
    runners = {"SophiaRef": lambda: sophia.step(hessian_estimate=estimate), "AdamW": adamw.step}
    print(f"step_ratio: {_problem.describe(problem)}")
    print(f"  {args.repeats} interleaved rounds x {args.batch} steps each; SophiaRef hessian_interval="
          f"{_problem.HESSIAN_INTERVAL}, estimate passed on every call")

    for run in runners.values():  # warm-up: state creation, first refresh, allocator
        _batch(run, args.batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(args.repeats):
            for name in order:
                times[name].append(_batch(runners[name], args.batch))
            order.reverse()
    finally:
        if gc_was_enabled:
            gc.enable()

    expected = (sophia._step - 1) // _problem.HESSIAN_INTERVAL + 1
    if sophia.diagnostics.refreshes != expected:
        print(f"error: SophiaRef refreshed {sophia.diagnostics.refreshes} times in {sophia._step} steps, "
              f"expected {expected}", file=sys.stderr)
        return 2

    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        q1, q3 = _quartiles(ts) if len(ts) > 1 else (ts[0], ts[0])
        print(f"  {name:<10} median {med[name] * 1e3:8.3f} ms/step   (IQR {q1 * 1e3:.3f}-{q3 * 1e3:.3f}, "
              f"min {min(ts) * 1e3:.3f}, max {max(ts) * 1e3:.3f})")
    ratio = med["SophiaRef"] / med["AdamW"]
    paired = statistics.median(s / a for s, a in zip(times["SophiaRef"], times["AdamW"]))
    verdict = "OK" if ratio <= args.budget else "OVER BUDGET"
    print(f"  ratio SophiaRef/AdamW (of medians) {ratio:.2f}  [median of per-round ratios {paired:.2f}]  "
          f"budget {args.budget:.1f}: {verdict}")
    return 0 if ratio <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
