"""theory/toy2d.py: the paper's 2-D problem (SPEC section 3), quick run.

Margins are stated against the quick run as measured when this test was written (seeded, float64):
exact-diagonal Sophia reached (1, 4) to 1e-6 in 4-8 steps from the four starts with 0 < x0 < 1,
Hutchinson Sophia (seed 0) in 20-30; the slowest-case speed-ups over the best-of-grid fixed lr were
GD 67x, SignGD >= 50x (a lower bound where it never got there in 700 steps) and Adam 32x.
"""

import json

import pytest

from sophia_ref import demo
from theory import toy2d


@pytest.fixture(scope="module")
def result():
    return toy2d.run(quick=True)


def _run(result, method, start):
    return next(r for r in result.data["runs"] if r["method"] == method and tuple(r["start"]) == tuple(start))


def test_contract(result):
    assert result.name == toy2d.NAME == "toy2d"
    assert result.claim == toy2d.CLAIM
    assert len(result.rows) == len(toy2d.STARTS) * len(toy2d.METHODS)
    assert all(len(row) == len(result.columns) for row in result.rows)
    json.dumps(result.to_json(), allow_nan=False)
    assert result.claim_held is True
    assert (0.3, 1.0) in toy2d.STARTS


def test_newton_reaches_the_saddle_only_from_two_starts(result):
    # README "What is verified": from the other starts a step with small |L1''| overshoots
    assert sorted(map(tuple, result.data["newton_saddle_starts"])) == [(0.1, 7.0), (0.3, 1.0)]
    assert _run(result, "Newton", (0.45, 0.0))["where"] == "minimizer"
    assert _run(result, "Newton", (0.55, 6.0))["where"] == "local min"


def test_sophia_reaches_the_minimizer_in_a_few_steps(result):
    for start in result.data["basin_starts"]:
        exact = _run(result, "Sophia (exact)", start)
        hutch = _run(result, "Sophia (Hutchinson)", start)
        assert exact["where"] == hutch["where"] == "minimizer"
        assert exact["steps_to_1e-6"] <= 10  # measured 4-8, margin 2
        assert hutch["steps_to_1e-6"] <= 45  # measured 20-30, margin 50%
    for method in toy2d.METHODS:  # L1'(-0.3) > 0: every method descends into the local minimum
        assert _run(result, method, (-0.3, 2.0))["where"] in ("local min", "elsewhere")
        assert _run(result, method, (-0.3, 2.0))["steps_to_1e-6"] is None
    assert not any(r["where"] == "saddle" for r in result.data["runs"] if r["method"].startswith("Sophia"))


def test_first_order_methods_are_many_times_slower(result):
    ratios = result.data["ratios"]
    assert ratios["GD"]["min"] >= 30  # measured 67
    assert ratios["SignGD"]["min"] >= 25  # measured >= 50
    assert ratios["Adam"]["min"] >= 15  # measured 32
    assert result.data["lrs"] == {"GD": 0.028, "SignGD": 0.01, "Adam": 0.1}


def test_draw_writes_a_png(result, tmp_path):
    path = tmp_path / "toy2d.png"
    result.draw(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_deterministic_for_a_fixed_seed(result):
    a = toy2d.sophia_hutchinson((0.3, 1.0), 40, seed=0)
    b = toy2d.sophia_hutchinson((0.3, 1.0), 40, seed=0)
    c = toy2d.sophia_hutchinson((0.3, 1.0), 40, seed=1)
    assert a.points == b.points and a.points != c.points
    run = _run(result, "Sophia (Hutchinson)", (0.3, 1.0))
    assert [list(p) for p in a.points[:len(run["points"])]] == run["points"][:41]
    assert toy2d.gd((0.3, 1.0), 50, 0.028).points == toy2d.gd((0.3, 1.0), 50, 0.028).points
    assert toy2d.adam((0.3, 1.0), 50, 0.1).points == toy2d.adam((0.3, 1.0), 50, 0.1).points
    assert demo.signgd((0.3, 1.0), 50, 0.01).points == demo.signgd((0.3, 1.0), 50, 0.01).points
