"""Independent training runs in parallel worker processes, results in submission order.

Each job is ``(function, kwargs)`` with a module-level ``function``; each worker runs one job at a
time on one torch thread, so a run's result does not depend on how many workers there are (every
run seeds its own generators). Workers: ``SOPHIA_THEORY_WORKERS`` if set, else the number of CPU
cores (at most 8); with one worker the jobs run in this process, one after the other.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable


def workers() -> int:
    value = os.environ.get("SOPHIA_THEORY_WORKERS")
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"SOPHIA_THEORY_WORKERS={value!r} is not valid; accepted values: integers >= 1")
        return int(value)
    return max(1, min(8, os.cpu_count() or 1))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_jobs(jobs: list[tuple[Callable, dict]], done: Callable[[int, Any], None] | None = None,
             n_workers: int | None = None) -> list[Any]:
    """``[function(**kwargs) for function, kwargs in jobs]``, computed by up to ``n_workers`` processes;
    ``done(index, result)`` is called as each finishes (in completion order)."""
    n_workers = workers() if n_workers is None else n_workers
    results: list[Any] = [None] * len(jobs)
    if n_workers <= 1 or len(jobs) <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, (function, kwargs) in enumerate(jobs):
                results[i] = function(**kwargs)
                if done:
                    done(i, results[i])
        finally:
            torch.set_num_threads(threads)
        return results
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=context,
                             initializer=_one_thread) as pool:
        futures = {pool.submit(function, **kwargs): i for i, (function, kwargs) in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if done:
                done(i, results[i])
    return results
