"""The oracles are independent of the reference by construction: importing every module of
``verification.oracles`` loads nothing of ``sophia_ref``, while importing ``verification.checks``
(the pairing of the reference with the oracles) does, so the probe itself can fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps(dict(modules=names, loaded=sorted(k for k in sys.modules if k.split(".")[0] == "sophia_ref"))))
"""


def imported(package: str) -> dict:
    """In a fresh interpreter, import ``package`` and every module under it: the modules imported and
    the ``sophia_ref`` modules that ended up in ``sys.modules``."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(package=package)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def oracles() -> dict:
    return imported("verification.oracles")


def test_no_oracle_module_loads_the_reference(oracles):
    assert not oracles["loaded"], oracles["loaded"]


def test_the_walk_reaches_every_oracle(oracles):
    expected = {"zoo", "step", "step_distance", "estimators", "bands", "trajectory", "minimizers"}
    assert {f"verification.oracles.{name}" for name in expected} <= set(oracles["modules"])


def test_the_checks_do_load_the_reference():
    checks = imported("verification.checks")
    assert {"sophia_ref.rule", "sophia_ref.estimators"} <= set(checks["loaded"]), checks
