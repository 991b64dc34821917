"""The stability experiment: the grid's read-offs (usable range, divergence point, warm-up needed) and the quick run."""

from __future__ import annotations

import json
import math

import pytest

from theory import stability as S


def test_usable_range_is_the_contiguous_run_around_the_best():
    scores = {-2: 0.5, -1: 0.12, 0: 0.10, 1: 0.14, 2: 0.13, 3: math.inf}
    none = {k: 0.0 for k in scores}
    assert S.usable_range(scores, none, 0.15) == (-1, 2)
    assert S.usable_range(scores, none, 0.125) == (-1, 0)
    # a cell with a diverged seed is never usable, even when its mean is fine; the run stops there
    assert S.usable_range(scores, {**none, 1: 0.5}, 0.15) == (-1, 0)
    assert S.usable_range(scores, none, 0.05) is None  # even the best is beyond the limit
    assert S.diverges_at({-1: 0.0, 0: 0.0, 1: 0.0, 2: 0.5, 3: 1.0}) == 2
    assert S.diverges_at({-2: 1.0, 0: 0.0, 1: 0.0}) is None  # below the best does not count: not "diverges at"


@pytest.fixture(scope="module")
def quick():
    return S.run(quick=True)


def test_quick_grid(quick):
    data = quick.data
    json.dumps(quick.to_json())
    assert set(data["analysis"]) == {"sophia", "adamw", "lion"}
    for kind, a in data["analysis"].items():
        assert len(a["cells"]) == len(S.KS) * len(S.QUICK.warmups)
        # the reference warm-up's 1x cell is its row's best (the best was measured, the row shifted around it)
        ref = {d: a["cells"][f"{d},{S.QUICK.reference_warmup}"]["mean_final"] for d in S.KS}
        finite = {d: v for d, v in ref.items() if v is not None}
        assert min(finite, key=finite.get) == 0, (kind, ref)
        assert a["cells"][f"0,{S.QUICK.reference_warmup}"]["lr"] == pytest.approx(a["best_lr"])
        assert a["cells"][f"3,{S.QUICK.reference_warmup}"]["lr"] == pytest.approx(8 * a["best_lr"])
        for w, row in a["per_warmup"].items():
            if row["range"] is not None:
                lo, hi = row["range"]
                assert lo <= 0 <= hi or row["best"] is not None
    assert len(quick.rows) == 3 * len(S.QUICK.warmups) and all(len(r) == len(quick.columns) for r in quick.rows)
    assert quick.claim_held in (True, False, None)
    assert data["win_rate_monitor"]["runs"] == sum(1 for r in data["runs"] if r["optimizer"] == "sophia")
    assert {r["warmup"] for r in data["runs"]} == set(S.QUICK.warmups)


def test_quick_heatmaps(quick, tmp_path):
    path = tmp_path / "stability.png"
    quick.draw(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
