"""``sophia-ref verify``: the table, the exit status, and a broken check as a failed row."""

from __future__ import annotations

import json
import subprocess
import sys

from verification import run
from verification.report import CheckResult


def test_quick_subset_runs_and_exits_zero(tmp_path):
    out = tmp_path / "verify.json"
    proc = subprocess.run([sys.executable, "-m", "sophia_ref.cli", "verify", "--quick", "--only", "trajectory",
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["problem", "check", "worst", "error", "bound", "result", "unit"]
    assert "0 failed" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] and data["results"] and all(r["passed"] for r in data["results"])
    assert "verify" in proc.stderr  # the progress lines go to stderr


def test_a_failing_or_raising_check_is_a_failed_row_and_the_run_goes_on():
    good = CheckResult("p", "fine", 1.0, 2.0, "ulp", True)
    bad = CheckResult("p", "too far", 3.0, 2.0, "ulp", False, ("coordinate 4 at step 7",))

    def broken():
        raise ZeroDivisionError("boom")

    results = run.run([("good", lambda: good), ("broken", broken), ("bad", lambda: [bad])])
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].check == "raised" and "ZeroDivisionError: boom" in results[1].notes[0]
    table = run.format_table(results)
    assert "FAIL" in table and "coordinate 4 at step 7" in table and "ZeroDivisionError" in table


def test_unknown_filter_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "sophia_ref.cli", "verify", "--quick", "--only", "no such check"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no check matches" in proc.stdout
