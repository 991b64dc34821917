"""The README's promises: its training loop runs, its dialects table is the generated one,
and its first code block holds exactly the two newcomer commands that CI runs."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from sophia_ref.dialects import table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]


def test_training_loop_snippet_runs_and_learns():
    (snippet,) = [b for b in code_blocks("python") if "SophiaRef" in b and "gnb" in b]
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 15
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    # a uniform prediction over 8 classes has loss log 8; training must do clearly better
    assert namespace["loss"].item() < 0.5 * math.log(8)
    diagnostics = namespace["opt"].diagnostics
    assert diagnostics.step == 200 and diagnostics.refreshes == 20 and 0.0 <= diagnostics.win_rate <= 1.0


def test_dialects_table_is_the_generated_one():
    start = README.index("<!-- dialects-table")
    end = README.index("<!-- end dialects-table -->")
    body = README[start:end].split("\n", 1)[1].strip()
    assert body == table()


def test_first_block_has_the_two_newcomer_commands_and_ci_runs_the_second():
    first = code_blocks()[0]
    commands = [line for line in first.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "sophia-ref" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_test_command" in ci  # .ci/run executes the README's line, not a copy of it


def test_cli_demo_prints_the_table_and_verdicts():
    out = subprocess.run([sys.executable, "-m", "sophia_ref.cli", "demo", "--steps", "12"],
                         capture_output=True, text=True, check=True).stdout
    assert "Sophia: reached the minimizer (1, 4)" in out
    assert "Newton: converged to the saddle (0, 4)" in out
    assert "SignGD: ended at" in out


def test_cli_rejects_bad_hyperparameters_without_a_traceback():
    run = subprocess.run([sys.executable, "-m", "sophia_ref.cli", "demo", "--gamma", "-1"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "gamma=-1.0 is not valid; accepted range: (0.0, inf)" in run.stderr and "Traceback" not in run.stderr
