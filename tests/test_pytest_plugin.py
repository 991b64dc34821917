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
    # the quick battery's 6 scenarios x 2 tiers, plus the closing [certified] item and the placeholder test
    assert "14 passed" in out and "skipped" not in out


def test_a_wrong_eps_fails_the_floor_scenario_with_a_plain_message(tmp_path):
    code, out = run_pytest(tmp_path, "--sophia-impl", "wrong:WrongEps", "--sophia-quick")
    assert code == 1
    assert "2 failed" in out
    assert "wrong:WrongEps does not compute dialect 'paper' in scenario 'curvature near eps/gamma'" in out


def test_expected_failures_are_xfailed(tmp_path):
    (tmp_path / "xfail.txt").write_text("curvature near eps/gamma  # eps is 1e-8 by design\n")
    code, out = run_pytest(tmp_path, "--sophia-impl", "wrong:WrongEps", "--sophia-quick",
                           "--sophia-xfail", str(tmp_path / "xfail.txt"))
    assert code == 0, out
    assert "2 xfailed" in out and "skipped" not in out


def test_an_implementation_that_cannot_be_imported_is_a_failure_not_a_skip(tmp_path):
    code, out = run_pytest(tmp_path, "--sophia-impl", "nosuchmodule:Foo", "--sophia-quick")
    assert code == 1, out
    assert "1 failed" in out and "skipped" not in out
    assert "cannot certify nosuchmodule:Foo: cannot import module 'nosuchmodule'" in out


def test_a_mistyped_dialect_is_a_failure_not_a_skip(tmp_path):
    code, out = run_pytest(tmp_path, "--sophia-impl", "sophia_ref:SophiaRef", "--sophia-dialect", "papr")
    assert code == 1, out
    assert "unknown dialect 'papr'" in out and "skipped" not in out


def test_an_xfail_entry_that_names_no_scenario_is_a_failure(tmp_path):
    (tmp_path / "xfail.txt").write_text("curvature near eps\n")  # a typo of 'curvature near eps/gamma'
    code, out = run_pytest(tmp_path, "--sophia-impl", "sophia_ref:SophiaRef", "--sophia-quick",
                           "--sophia-xfail", str(tmp_path / "xfail.txt"))
    assert code == 1, out
    assert "'curvature near eps', which is not a scenario of the battery" in out


def test_a_run_that_certifies_nothing_fails(tmp_path):
    """Every scenario skipped (here: patched to declare itself inapplicable) leaves the [certified] item failing."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import verification.conformance as c
        from verification.conformance.run import ScenarioResult

        def skipped(adapter, dialect, scenario, tier, *args):
            return ScenarioResult(scenario.name, tier, scenario.steps, skipped="cannot take it", skip_kind="declared")

        c.run_scenario = skipped
    """))
    code, out = run_pytest(tmp_path, "--sophia-impl", "sophia_ref:SophiaRef", "--sophia-quick")
    assert code == 1, out
    assert "1 failed" in out and "nothing was certified: no scenario ran (declared: cannot take it)" in out


def test_without_the_option_the_plugin_adds_nothing(tmp_path):
    code, out = run_pytest(tmp_path)
    assert code == 0 and "1 passed" in out
