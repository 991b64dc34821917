"""The mutation tester (verification/mutation.py) on a tiny package written to tmp_path."""

from __future__ import annotations

import json
import py_compile
import textwrap
from pathlib import Path

import pytest

from verification import mutation

CALC = textwrap.dedent('''\
    """A tiny module: add is tested, double is not."""


    def add(a, b):
        return a + b


    def double(x):
        return x * 2
''')
SLOW = textwrap.dedent('''\
    import time

    DELAY = 0


    def pause():
        time.sleep(DELAY * 60)
''')
TESTS = textwrap.dedent('''\
    from tiny.calc import add
    from tiny.slow import pause


    def test_add():
        assert add(2, 3) == 5


    def test_pause():
        pause()
''')
KILLED = "tiny/calc.py:5:14:Add->Sub"
SURVIVOR = "tiny/calc.py:9:14:Mult->Div"
SLOW_MUTANT = "tiny/slow.py:3:9:0->1"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "__init__.py").write_text("")
    (tmp_path / "tiny" / "calc.py").write_text(CALC)
    (tmp_path / "tiny" / "slow.py").write_text(SLOW)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_tiny.py").write_text(TESTS)
    return tmp_path


def _args(root: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--target", "tiny/calc.py", "--target", "tiny/slow.py",
            "--tests", "tests/test_tiny.py", *extra]


def test_list_is_stable_and_skips_text(project, capsys):
    assert mutation.main(_args(project, "--list")) == 0
    first = capsys.readouterr().out
    assert mutation.main(_args(project, "--list")) == 0
    assert capsys.readouterr().out == first
    ids = [line for line in first.splitlines() if not line.startswith(" ")]
    assert KILLED in ids and SURVIVOR in ids and SLOW_MUTANT in ids
    assert "tiny/calc.py:9:16:2->3" in ids and "tiny/calc.py:5:12:Return->None" in ids


def test_nothing_in_messages_annotations_or_docstrings():
    source = textwrap.dedent('''\
        """Docstring with 1 + 2 < 3."""
        def f(x: int = 1, y: "float" = 0.5) -> dict[str, int]:
            """x - 1 > 0"""
            if x < 0:  # a comment: x + 1
                raise ValueError(f"x={x - 1} must be >= {0 + 1}" + str(2 * x))
            print("value", x * 2)
            assert x, f"{x + 1}"
            label = ", ".join(str(v + 1) for v in range(3)) + " done"
            return x  # pragma: no mutate
    ''')
    labels = sorted((m.line, m.operator) for m in mutation.find_mutants(source, "m.py"))
    assert labels == [(2, "0.5->0.51"), (2, "0.5->1.5"), (2, "1->0"), (4, "0->1"), (4, "Lt->LtE")]


def test_killed_survivor_equivalent_and_restored(project, tmp_path, capsys):
    calc = project / "tiny" / "calc.py"
    original = calc.read_bytes()
    py_compile.compile(str(calc), doraise=True)   # a .pyc of the original must not hide a same-size mutant
    report = tmp_path / "report.json"
    rc = mutation.main(_args(project, "--only", KILLED, "--only", SURVIVOR, "--json", str(report)))
    out = capsys.readouterr().out
    assert rc == 0
    assert calc.read_bytes() == original
    data = json.loads(report.read_text())
    status = {m["id"]: m["status"] for m in data["mutants"]}
    assert status == {KILLED: "killed", SURVIVOR: "survived"}
    assert (data["killed_all"], data["total"], data["equivalent"], data["score"]) == (1, 2, 0, 0.5)
    assert "Survivors (1):" in out and SURVIVOR in out and "return x / 2" in out and KILLED not in out

    equivalents = tmp_path / "equivalents.txt"
    equivalents.write_text(f"# header\n{SURVIVOR}  # double() is not part of the tested contract\n")
    rc = mutation.main(_args(project, "--only", SURVIVOR, "--equivalent", str(equivalents), "--json", str(report),
                             "--no-baseline", "--timeout", "30"))
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert rc == 0 and "Survivors" not in out and "Equivalent, not counted (1):" in out
    assert [m["status"] for m in data["mutants"]] == ["equivalent"]
    assert (data["survived"], data["equivalent"], data["score"]) == (0, 1, None)
    assert calc.read_bytes() == original


def test_timeout_counts_as_killed_and_restores(project, tmp_path, capsys):
    slow = project / "tiny" / "slow.py"
    original = slow.read_bytes()
    report = tmp_path / "report.json"
    rc = mutation.main(_args(project, "--only", SLOW_MUTANT, "--no-baseline", "--timeout", "3",
                             "--json", str(report)))
    capsys.readouterr()
    assert rc == 0
    assert slow.read_bytes() == original
    data = json.loads(report.read_text())
    assert [m["status"] for m in data["mutants"]] == ["timeout"]
    assert (data["killed_all"], data["score"]) == (1, 1.0)


def test_interrupt_restores(project, monkeypatch, capsys):
    calc = project / "tiny" / "calc.py"
    original = calc.read_bytes()
    seen = []

    def interrupted(root, tests, timeout):
        seen.append(calc.read_bytes())
        raise KeyboardInterrupt

    monkeypatch.setattr(mutation, "run_tests", interrupted)
    rc = mutation.main(_args(project, "--only", KILLED, "--no-baseline", "--timeout", "5"))
    capsys.readouterr()
    assert rc == 130
    assert seen and seen[0] != original and b"a - b" in seen[0]
    assert calc.read_bytes() == original


def test_guard_removes_the_stale_pyc(project):
    calc = project / "tiny" / "calc.py"
    pyc = Path(py_compile.compile(str(calc), doraise=True))
    guard = mutation.Guard(calc)
    try:
        guard.write(CALC.replace("a + b", "a - b").encode())
        assert not pyc.exists()
    finally:
        guard.restore()
    assert calc.read_text() == CALC


# the same through the one entry point: `sophia-ref mutation ...` reaches mutation.run with the same arguments
def test_cli_subcommand_lists_the_same_mutants(project, capsys):
    from sophia_ref.cli import main

    assert mutation.main(_args(project, "--list")) == 0
    direct = capsys.readouterr().out
    assert main(["mutation", *_args(project, "--list")]) == 0
    assert capsys.readouterr().out == direct and direct
