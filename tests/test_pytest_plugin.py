"""The pytest plugin: conformance scenarios as test items in another project's suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WRONG = textwrap.dedent("""
    from sophia_ref import SophiaRef

    class WrongEps(SophiaRef):
        def __init__(self, params, **kw):
            kw["eps"] = 1e-8
            super().__init__(params, **kw)
""")


def run_pytest(tmp_path, *args):
    (tmp_path / "wrong.py").write_text(WRONG)
    (tmp_path / "test_nothing.py").write_text("def test_placeholder():\n    pass\n")
    # the plugin comes in through sophia-ref's pytest11 entry point, as in any project that installs it
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsx", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    return proc.returncode, proc.stdout + proc.stderr


def test_a_conforming_implementation_passes_every_item(tmp_path):
    code, out = run_pytest(tmp_path, "--sophia-impl", "sophia_ref:SophiaRef", "--sophia-quick")
    assert code == 0, out
    # 12 scenarios x 2 tiers, less the free-running tier of the loaded-state scenario (skipped, reason given),
    # plus the project's own placeholder test
    assert "24 passed, 1 skipped" in out and "a loaded state is a teacher-forced scenario" in out


def test_a_wrong_eps_fails_the_floor_scenario_with_a_plain_message(tmp_path):
    code, out = run_pytest(tmp_path, "--sophia-impl", "wrong:WrongEps", "--sophia-quick")
    assert code == 1
    assert "2 failed" in out
    assert "wrong:WrongEps does not compute dialect 'paper' in scenario 'curvature near eps/gamma'" in out


def test_expected_failures_and_missing_implementations_never_break_collection(tmp_path):
    (tmp_path / "xfail.txt").write_text("curvature near eps/gamma  # eps is 1e-8 by design\n")
    code, out = run_pytest(tmp_path, "--sophia-impl", "wrong:WrongEps", "--sophia-impl", "nosuch:Missing",
                           "--sophia-quick", "--sophia-xfail", str(tmp_path / "xfail.txt"))
    assert code == 0, out
    assert "2 xfailed" in out and "2 skipped" in out
    assert "cannot certify nosuch:Missing: cannot import module 'nosuch'" in out


def test_without_the_option_the_plugin_adds_nothing(tmp_path):
    code, out = run_pytest(tmp_path)
    assert code == 0 and "1 passed" in out
