"""The training experiments' shared statistics, grid extension, win-rate monitor and worker pool."""

from __future__ import annotations

import math

import pytest

from theory import pool, stats, winrate


def test_t_intervals():
    g, lo, hi = stats.log_ratio_ci([200, 220, 180], [100, 110, 90])
    assert g == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    g, lo, hi = stats.log_ratio_ci([200, 100, 150], [100, 100, 100])
    assert lo < g < hi and lo < 1.5 < hi
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: half width t_{0.975,2} / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.303 / math.sqrt(3))
    assert stats.t_975(2) == 4.303 and stats.t_975(12) == 2.228 and stats.t_975(40) == 1.96
    with pytest.raises(ValueError, match="needs at least 2 samples"):
        stats.t_975(0)


def test_grid_extension_until_the_best_is_inside():
    cost = lambda lr: (math.log2(lr) + 3) ** 2  # noqa: E731  minimum at 1/8, below the grid
    scores = {lr: cost(lr) for lr in (0.5, 1.0, 2.0)}
    added = {}
    rounds = 0
    while new := stats.extend_grid(scores, 2.0, added, cap=5):
        scores.update({lr: cost(lr) for lr in new})
        rounds += 1
    assert rounds == 3 and min(scores) == 0.0625 and not stats.at_edge(scores)  # 1/8 strictly inside
    capped = {lr: cost(lr) for lr in (0.5, 1.0, 2.0)}
    added = {}
    assert stats.extend_grid(capped, 2.0, added, cap=1) == [0.25]
    capped[0.25] = cost(0.25)
    assert stats.extend_grid(capped, 2.0, added, cap=1) == [] and stats.at_edge(capped)  # cap reached: flagged
    # a diverged (inf) point never counts as the best; a grid whose best is inside needs nothing
    assert stats.extend_grid({1.0: 1.0, 2.0: 0.5, 4.0: math.inf}, 2.0, {}, cap=3) == []
    assert stats.at_edge({1.0: 1.0, 2.0: 0.5}) and not stats.at_edge({1.0: 1.0, 2.0: 0.5, 4.0: math.inf})


def test_win_rate_monitor_counts():
    run = lambda w, e, d=False: dict(win_rate_mean=w, final_excess=e, diverged=d)  # noqa: E731
    runs = [run(0.3, 0.10), run(0.2, 0.12), run(0.05, 0.30), run(0.7, 0.11), run(0.02, math.inf, True),
            run(None, 0.01)]
    m = winrate.win_rate_monitor(runs)
    assert m["runs"] == 5 and m["best_final"] == 0.10
    assert m["counts"]["inside"] == dict(runs=2, good=2) and m["counts"]["below"] == dict(runs=2, good=0)
    assert m["counts"]["above"] == dict(runs=1, good=1) and m["outside"] == dict(runs=3, good=1)
    assert m["verdict"] == "in-band runs do well more often" and "2/2 with the win rate in 0.1-0.5" in m["summary"]
    m = winrate.win_rate_monitor([run(0.05, 0.1), run(0.04, 0.2)])
    assert m["verdict"].startswith("undecided: every run's win rate is outside")
    m = winrate.win_rate_monitor([run(0.3, 0.3), run(0.04, 0.1)])
    assert m["verdict"].startswith("in-band runs do well less often")


def _square(x):
    return x * x


def test_pool_keeps_order_and_reports_each(monkeypatch):
    seen = []
    out = pool.run_jobs([(_square, dict(x=i)) for i in range(5)], lambda i, r: seen.append((i, r)), n_workers=2)
    assert out == [0, 1, 4, 9, 16] and sorted(seen) == [(i, i * i) for i in range(5)]
    monkeypatch.setenv("SOPHIA_THEORY_WORKERS", "0")
    with pytest.raises(ValueError, match="SOPHIA_THEORY_WORKERS='0' is not valid"):
        pool.workers()
    monkeypatch.setenv("SOPHIA_THEORY_WORKERS", "3")
    assert pool.workers() == 3
