"""pytest plugin: run the conformance battery as ordinary tests inside another project's CI.

    pytest --sophia-impl mypkg.optim:MySophia [--sophia-dialect official] [--sophia-quick]
           [--sophia-xfail scenarios.txt]

Each (implementation, scenario, tier) is one test item, named ``sophia[IMPL][scenario][tier]``,
and each implementation ends with one ``sophia[IMPL][certified]`` item that fails unless at least
one scenario ran and none failed. A skip is never a pass, so:

- an IMPL that cannot be imported or built, or whose API does not fit the harness, and an
  unknown ``--sophia-dialect``, give one *failing* item with the reason (the run exits non-zero);
- the only skipped items are scenarios the implementation declares it cannot take (an adapter
  that takes only squared-gradient estimates, builds a single parameter group, or has no
  ``state_dict`` round trip) and state it declares the harness cannot write (not
  teacher-forceable: the free-running tier still decides);
- scenarios listed in the ``--sophia-xfail`` file (one scenario name per line, ``#`` comments) are
  expected failures; a name there that is no scenario of the battery is an error.

Installed with sophia-ref through the ``pytest11`` entry point.
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
                    help="the dialect to hold it to: a sophia_ref.dialects preset or PRESET,knob=value,...; "
                         "default: the one it claims, else 'paper'")
    group.addoption("--sophia-quick", action="store_true", help="the shorter battery")
    group.addoption("--sophia-xfail", default=None, metavar="FILE",
                    help="a file of scenario names (one per line) expected to fail")


class SophiaConformanceError(AssertionError):
    pass


class SophiaItem(pytest.Item):
    """One scenario and tier of one implementation; records its result for the closing item."""

    def __init__(self, *, spec, adapter, dialect, scenario, tier, record, xfail=False, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.adapter, self.dialect = spec, adapter, dialect
        self.scenario, self.tier, self.record = scenario, tier, record
        if xfail:
            self.add_marker(pytest.mark.xfail(reason="listed in --sophia-xfail", strict=False))

    def runtest(self):
        from .conformance import run_scenario, violations

        result = run_scenario(self.adapter, self.dialect, self.scenario, self.tier)
        self.record.append(result)
        if result.skipped:
            pytest.skip(f"{result.skip_kind}: {result.skipped}")
        if result.error:
            who = "the harness could not write its state" if result.harness_error else "the implementation failed"
            raise SophiaConformanceError(f"{who}: {result.error}")
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


class SophiaVerdictItem(pytest.Item):
    """The closing item of one implementation: fails when nothing could be certified (or ``problem``)."""

    def __init__(self, *, spec, problem=None, record=None, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.problem, self.record = spec, problem, record

    def runtest(self):
        if self.problem:
            raise SophiaConformanceError(self.problem)
        ran = [r for r in self.record if not r.skipped and not r.error]
        if not ran:
            reasons = sorted({f"{r.skip_kind}: {r.skipped}" for r in self.record if r.skipped})
            raise SophiaConformanceError("nothing was certified: no scenario ran"
                                         + (f" ({'; '.join(reasons[:3])})" if reasons else ""))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, SophiaConformanceError):
            return f"cannot certify {self.spec}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"sophia[{self.spec}][certified]"


def _xfails(path):
    if not path:
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.split("#")[0].strip() for line in f if line.split("#")[0].strip()}


def pytest_collection_modifyitems(session, config, items):
    specs = config.getoption("--sophia-impl")
    if not specs:
        return
    from .conformance import battery
    from .conformance.pipeline import _discover
    from .conformance.resolve import Unavailable, parse_dialect, resolve

    scenarios = battery(config.getoption("--sophia-quick"))
    names = {s.name for s in scenarios}
    problem_all = None
    try:
        expected = _xfails(config.getoption("--sophia-xfail"))
        unknown = sorted(expected - names)
        if unknown:
            problem_all = (f"--sophia-xfail names {', '.join(map(repr, unknown))}, which "
                           f"{'is' if len(unknown) == 1 else 'are'} not a scenario of the battery")
    except OSError as error:
        expected, problem_all = set(), f"--sophia-xfail: {error}"
    wanted_text = config.getoption("--sophia-dialect")
    wanted = None
    try:
        wanted = None if wanted_text is None else parse_dialect(wanted_text)
        if wanted_text == "auto":
            problem_all = "--sophia-dialect auto is not supported here: name the dialect to hold it to"
    except ValueError as error:
        problem_all = f"--sophia-dialect: {error}"
    for spec in specs:
        problem, adapter, dialect = problem_all, None, None
        if problem is None:
            try:
                adapter = resolve(spec)
                _discover(adapter)
                from sophia_ref.dialects import get_dialect

                dialect = wanted or get_dialect(adapter.dialect or "paper")
            except (Unavailable, ValueError) as error:
                problem = str(error)
        record: list = []
        if problem is None:
            for scenario in scenarios:
                for tier in ("teacher-forced", "free-running"):
                    if scenario.signed_state and tier != "teacher-forced":
                        continue  # a loaded state is a teacher-forced scenario: no free-running item
                    items.append(SophiaItem.from_parent(
                        session, name=f"sophia[{spec}][{scenario.name}][{tier}]", spec=spec, adapter=adapter,
                        dialect=dialect, scenario=scenario, tier=tier, record=record,
                        xfail=scenario.name in expected))
        items.append(SophiaVerdictItem.from_parent(session, name=f"sophia[{spec}][certified]", spec=spec,
                                                   problem=problem, record=record))
