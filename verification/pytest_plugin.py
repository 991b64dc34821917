"""pytest plugin: run the conformance battery as ordinary tests inside another project's CI.

    pytest --sophia-impl mypkg.optim:MySophia [--sophia-dialect official] [--sophia-quick]
           [--sophia-xfail scenarios.txt]

Each (implementation, scenario, tier) is one test item, named
``sophia[IMPL][scenario][tier]``. Collection never fails: an implementation that
cannot be imported gives one skipped item saying why; scenarios an implementation
cannot take (e.g. signed estimates for one that folds only squares) are skipped with
the reason; scenarios listed in the ``--sophia-xfail`` file (one scenario name per
line, ``#`` comments) are expected failures. Installed with sophia-ref through the
``pytest11`` entry point.
"""

from __future__ import annotations

import pytest

# torch and the harness are imported only when --sophia-impl is given: the plugin is loaded by every
# pytest run in an environment where sophia-ref is installed, and must cost those runs nothing.


def pytest_addoption(parser):
    group = parser.getgroup("sophia-ref", "Sophia conformance (sophia-ref)")
    group.addoption("--sophia-impl", action="append", default=[], metavar="MODULE:OBJECT",
                    help="an implementation to certify against the sophia-ref reference (repeatable)")
    group.addoption("--sophia-dialect", default=None, metavar="D",
                    help="the dialect to hold it to (a sophia_ref.dialects preset); default: the one it claims, "
                         "else 'paper'")
    group.addoption("--sophia-quick", action="store_true", help="the shorter battery")
    group.addoption("--sophia-xfail", default=None, metavar="FILE",
                    help="a file of scenario names (one per line) expected to fail")


class SophiaItem(pytest.Item):
    def __init__(self, *, spec, adapter, dialect, scenario, tier, problem=None, xfail=False, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.adapter, self.dialect = spec, adapter, dialect
        self.scenario, self.tier, self.problem = scenario, tier, problem
        if xfail:
            self.add_marker(pytest.mark.xfail(reason="listed in --sophia-xfail", strict=False))

    def runtest(self):
        from .conformance import run_scenario, violations

        if self.problem is not None:
            pytest.skip(self.problem)
        result = run_scenario(self.adapter, self.dialect, self.scenario, self.tier)
        if result.skipped:
            pytest.skip(result.skipped)
        if result.error:
            raise SophiaConformanceError(f"the implementation failed: {result.error}")
        problems = [f"{what} off by {worst.ulps:.3g} ulps (bound {bound:g}) at {worst.where}"
                    for what, worst, bound in violations(result)]
        if problems:
            raise SophiaConformanceError("; ".join(problems))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, SophiaConformanceError):
            return (f"{self.spec} does not compute dialect {self.dialect.name!r} in scenario "
                    f"{self.scenario.name!r} ({self.tier}): {excinfo.value}")
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"sophia[{self.spec}][{self.scenario.name}][{self.tier}]"


class SophiaConformanceError(AssertionError):
    pass


def _xfails(path):
    if not path:
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.split("#")[0].strip() for line in f if line.split("#")[0].strip()}


def pytest_collection_modifyitems(session, config, items):
    specs = config.getoption("--sophia-impl")
    if not specs:
        return
    from sophia_ref.dialects import get_dialect

    from .conformance.resolve import Unavailable, resolve
    from .conformance import battery

    expected = _xfails(config.getoption("--sophia-xfail"))
    wanted = config.getoption("--sophia-dialect")
    for spec in specs:
        problem = adapter = None
        dialect = get_dialect("paper")
        try:
            adapter = resolve(spec)
            if wanted:
                adapter.dialect = wanted
            dialect = get_dialect(adapter.dialect or "paper")
        except (Unavailable, ValueError) as error:
            problem = f"cannot certify {spec}: {error}"
        scenarios = battery(config.getoption("--sophia-quick"))
        if problem:
            scenarios = scenarios[:1]
        for scenario in scenarios:
            for tier in (("teacher-forced",) if problem else ("teacher-forced", "free-running")):
                items.append(SophiaItem.from_parent(
                    session, name=f"sophia[{spec}][{scenario.name}][{tier}]", spec=spec, adapter=adapter,
                    dialect=dialect, scenario=scenario, tier=tier, problem=problem,
                    xfail=scenario.name in expected))
