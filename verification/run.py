"""``sophia-ref verify``: every oracle check, a table of results, and an exit status.

Each module of :mod:`verification.checks` (the reference against one oracle) offers
``checks(quick) -> [(name, thunk)]``; a thunk returns one
:class:`~verification.report.CheckResult` or a list of them. A check that raises is a
failed row (with the exception in its notes), never a crash of the whole run.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict
from typing import Callable, Iterable

from .progress import Progress
from .report import CheckResult

Thunk = Callable[[], "CheckResult | list[CheckResult]"]


def collect(quick: bool) -> list[tuple[str, Thunk]]:
    """Every named check, in the order the table shows them."""
    from .checks import estimators, minimizers, step, trajectory

    items: list[tuple[str, Thunk]] = []
    for module in (step, estimators, trajectory, minimizers):
        items += module.checks(quick)
    return items


def run(items: Iterable[tuple[str, Thunk]], progress: Progress | None = None) -> list[CheckResult]:
    results: list[CheckResult] = []
    for name, thunk in items:
        if progress:
            progress.update(name)
        try:
            out = thunk()
            results += out if isinstance(out, list) else [out]
        except Exception as error:  # a broken check is a failed row, and the run goes on
            last = traceback.format_exc().strip().splitlines()[-1]
            results.append(CheckResult(name, "raised", float("nan"), float("nan"), "", False,
                                       (f"{type(error).__name__}: {error}", last)))
        if progress:
            progress.advance()
    if progress:
        progress.close()
    return results


def format_table(results: list[CheckResult], verbose: bool = False) -> str:
    """The results as an aligned table; notes follow for failed rows (for every row when verbose)."""
    header = ("problem", "check", "worst error", "bound", "result", "unit")
    rows = [header] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    out = [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows[1:]]
    noted = [r for r in results if r.notes and (verbose or not r.passed)]
    if noted:
        out += ["", "Notes:"]
        for r in noted:
            out += [f"  [{r.problem} / {r.check}]"] + [f"    - {n}" for n in r.notes]
    elif any(r.notes for r in results):
        out += ["", "(--verbose prints the notes behind every row: seeds, sample counts, findings.)"]
    return "\n".join(out)


def main(quick: bool, json_path: str | None = None, only: str | None = None, verbose: bool = False) -> int:
    started = time.monotonic()
    items = collect(quick)
    if only:
        items = [(name, thunk) for name, thunk in items if only.lower() in name.lower()]
        if not items:
            print(f"sophia-ref verify: no check matches --only {only!r}")
            return 2
    results = run(items, Progress(len(items), "verify"))
    print(format_table(results, verbose))
    failed = [r for r in results if not r.passed]
    elapsed = time.monotonic() - started
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
          f"({'quick' if quick else 'full'} run, {elapsed:.1f} s)")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"quick": quick, "seconds": elapsed, "results": [asdict(r) for r in results]}, f, indent=2)
    return 1 if failed else 0
