"""Step-time ratio of a Sophia to its AdamW baseline, measured interleaved in one run; fails over budget.

    python benchmarks/step_ratio.py [--pair reference|fast] [--params N] [--repeats R] [--batch S]
                                    [--threads T] [--budget X]

Two pairs:

- ``--pair reference`` (default): SophiaRef against ``AdamW(foreach=False)``, torch's per-tensor loop, on
  float64 parameters (default: about 1M, see ``_problem.layout``: 768x768 + 512x768 + 768 + 512 + 768 +
  768 = 985,856); budget 3.0 (the float64 reference may be at most 3x slower);
- ``--pair fast``: ``sophia_ref.fast.Sophia(backend="foreach")`` against ``AdamW(foreach=True)`` on float32
  parameters (default: about 10M, 2432x2432 + 1621x2432 + 2432 + 1621 + 2432 + 2432 = 9,865,813); budget
  1.0 (the production step must not be slower than torch's foreach AdamW).

Both optimizers get their own copy of the same parameters with the same fixed random gradients, and
``torch.set_num_threads(T)`` (default 1) for both. The Sophia (lr=1e-3, gamma=0.05, weight_decay=0.1,
hessian_interval=10, its default nan_policy="raise") gets a precomputed estimate list on every call;
AdamW has lr=1e-3, weight_decay=0.1.

Measurement: after one warm-up batch each, R rounds; each round times one batch of S consecutive steps of
each optimizer (S = 10 by default, so every Sophia batch holds exactly one refresh step and the batch
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

import torch

import _problem  # benchmarks/ is sys.path[0] when this file is run as a script

#: per pair: (Sophia label, AdamW label, parameter dtype, default size, budget)
PAIRS = {
    "reference": ("SophiaRef", "AdamW(foreach=False)", "float64", _problem.DEFAULT_PARAMS, 3.0),
    "fast": ("fast.Sophia", "AdamW(foreach=True)", "float32", _problem.FAST_PARAMS, 1.0),
}


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
    parser.add_argument("--pair", choices=sorted(PAIRS), default="reference",
                        help="reference: SophiaRef vs AdamW(foreach=False), float64, budget 3.0; fast: "
                             "sophia_ref.fast.Sophia(foreach) vs AdamW(foreach=True), float32, budget 1.0 "
                             "(default %(default)s)")
    parser.add_argument("--params", type=int, default=None,
                        help="approximate parameter count (default 1e6 for reference, 1e7 for fast; the layout "
                             "rounds it)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--batch", type=int, default=_problem.HESSIAN_INTERVAL,
                        help="steps per timed batch (default %(default)s = hessian_interval: one refresh per batch)")
    parser.add_argument("--threads", type=int, default=_problem.DEFAULT_THREADS,
                        help="torch.set_num_threads for both optimizers (default %(default)s)")
    parser.add_argument("--budget", type=float, default=None,
                        help="largest accepted Sophia/AdamW ratio of medians (default 3.0 for reference, 1.0 for "
                             "fast)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--repeats, --batch and --threads must be at least 1")
    sophia_name, adamw_name, dtype, default_params, default_budget = PAIRS[args.pair]
    params = default_params if args.params is None else args.params
    budget = default_budget if args.budget is None else args.budget

    _problem.set_threads(args.threads)
    problem = _problem.make_problem(params, dtype=getattr(torch, dtype))
    if args.pair == "fast":
        sophia, estimate = _problem.make_fast(problem)
        adamw = _problem.make_adamw(problem, **_problem.FAST_ADAMW_KWARGS)
    else:
        sophia, estimate = _problem.make_sophia(problem)
        adamw = _problem.make_adamw(problem)
    runners = {sophia_name: lambda: sophia.step(hessian_estimate=estimate), adamw_name: adamw.step}
    print(f"step_ratio: {_problem.describe(problem)}")
    print(f"  {args.repeats} interleaved rounds x {args.batch} steps each; {sophia_name} hessian_interval="
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
        print(f"error: {sophia_name} refreshed {sophia.diagnostics.refreshes} times in {sophia._step} steps, "
              f"expected {expected}", file=sys.stderr)
        return 2

    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        q1, q3 = _quartiles(ts) if len(ts) > 1 else (ts[0], ts[0])
        print(f"  {name:<21} median {med[name] * 1e3:8.3f} ms/step   (IQR {q1 * 1e3:.3f}-{q3 * 1e3:.3f}, "
              f"min {min(ts) * 1e3:.3f}, max {max(ts) * 1e3:.3f})")
    ratio = med[sophia_name] / med[adamw_name]
    paired = statistics.median(s / a for s, a in zip(times[sophia_name], times[adamw_name]))
    verdict = "OK" if ratio <= budget else "OVER BUDGET"
    print(f"  ratio {sophia_name}/{adamw_name} (of medians) {ratio:.2f}  [median of per-round ratios "
          f"{paired:.2f}]  budget {budget:.1f}: {verdict}")
    return 0 if ratio <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
