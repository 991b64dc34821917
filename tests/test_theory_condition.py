"""theory/condition.py: steps to L - L* <= 1e-8 vs the condition number (quick run, ~20 s)."""

import json

import numpy as np
import pytest

from theory import condition
from theory.base import Result


@pytest.fixture(scope="module")
def quick():
    return condition.run(quick=True)


def test_contract(quick):
    assert isinstance(quick, Result)
    assert quick.name == condition.NAME == "condition"
    assert quick.claim == condition.CLAIM
    assert all(len(row) == len(quick.columns) for row in quick.rows)
    json.dumps(quick.to_json())  # data is JSON-serialisable
    assert isinstance(quick.claim_held, bool)


def test_slopes(quick):
    s = quick.data["slopes"]
    # measured (quick, seed 0): newton 0.027 / 0.027, gd 1.044 / 1.044, sophia 0.0 / 0.836, signgd 0.375
    for kind in condition.PROBLEMS:
        assert abs(s[f"{kind}/newton"]) < 0.1            # flat in kappa
        assert 0.9 < s[f"{kind}/gd"] < 1.2               # ~kappa
    assert abs(s["separable/sophia"]) < 0.05             # exact diagonal = full Hessian: flat
    assert 0.6 < s["rotated/sophia"] < 1.2               # a damped Jacobi iteration: grows like GD
    assert 0.3 < s["separable/signgd"] < 0.7             # ~sqrt(kappa)


def test_reached(quick):
    res = quick.data["results"]
    for kind in condition.PROBLEMS:
        assert all(o["reached"] for o in res[f"{kind}/newton"]["runs"])       # every kappa, up to 1e6
        newton = [o["geomean"] for o in res[f"{kind}/newton"]["runs"]]
        assert max(newton) <= 2 * min(newton)
    assert all(o["reached"] for o in res["separable/sophia"]["runs"])
    big = [o for o in res["rotated/sophia"]["runs"] if o["kappa"] == 1e6][0]
    assert not big["reached"]                                                 # honest "not reached"
    assert quick.data["sophia_vs_rule_max_abs_diff"] == 0.0                   # numpy Sophia == rule.update, bitwise


def test_draw(quick, tmp_path):
    path = tmp_path / "condition.png"
    quick.draw(str(path))
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_deterministic():
    def once():
        out = []
        for kind in condition.PROBLEMS:
            A, V, a, c, x0 = condition.problem(kind, 1e3, 3)
            for method, param in (("adam", 0.1), ("signgd", 1e-4), ("sophia", condition.SOPHIA_ETA / 0.5)):
                st = condition.simulate(method, A[None], V[None], a[None], c[None], x0[None], np.array([param]),
                                        np.array([0]), 5000)
                out.append(int(st[0]))
            out.append(x0.tolist())
        return out

    assert once() == once()
    A0, *_ , x00 = condition.problem("rotated", 10.0, 1)
    A1, *_ , x01 = condition.problem("rotated", 1e4, 1)
    assert np.linalg.norm(x00 - condition.problem("rotated", 10.0, 1)[3]) == pytest.approx(condition.R0)
    assert np.array_equal(x00, x01)  # same start for every kappa of a seed


def test_bad_seeds():
    with pytest.raises(ValueError):
        condition.run(quick=True, seeds=0)
