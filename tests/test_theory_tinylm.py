"""The tinylm experiment: the language's exact entropy rate, the honest excess loss, and the quick run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from theory import tinylm as T

CFG = T.DEFAULT


@pytest.fixture(scope="module")
def lang():
    return T.make_language(CFG.vocab, CFG.support, CFG.alpha, CFG.language_seed)


def test_chain_is_a_stationary_sparse_markov_chain(lang):
    P, pi = lang.P, lang.pi
    assert np.allclose(P.sum(1), 1, atol=1e-12) and (P >= 0).all()
    assert ((P > 0).sum(1) <= CFG.support + 1).all()  # state 0 may carry its self-loop on top
    assert np.abs(pi @ P - pi).max() < 1e-12 and abs(pi.sum() - 1) < 1e-12 and (pi > 0).all()
    # the entropy rate is below the unigram entropy (the context helps) and at most log(support)
    assert 0 < lang.entropy_rate < lang.unigram_entropy <= math.log(CFG.vocab)
    assert lang.entropy_rate <= math.log(CFG.support + 1)


def test_entropy_rate_agrees_with_monte_carlo(lang):
    """The exact H against the mean optimal per-token loss over sampled sequences; the bound is 5 standard
    errors, measured from the spread of per-sequence means (the sequences are independent)."""
    x = T.sample(lang, 4000, 65, torch.Generator().manual_seed(7))
    per_seq = T.optimal_losses(lang, x).mean(1).numpy()
    se = per_seq.std(ddof=1) / math.sqrt(len(per_seq))
    assert se < 0.01  # the bound is tight enough to mean something
    assert abs(per_seq.mean() - lang.entropy_rate) < 5 * se, (per_seq.mean(), lang.entropy_rate, se)
    # the first token is distributed as pi (the chain starts stationary): its empirical entropy ~ H(pi)
    counts = np.bincount(x[:, 0].numpy(), minlength=CFG.vocab) / len(x)
    assert np.abs(counts - lang.pi).max() < 5 * math.sqrt(lang.pi.max() / len(x))


@pytest.fixture(scope="module")
def quick():
    return T.run(quick=True)


def test_quick_run_beats_unigram_and_never_beats_the_entropy_rate(quick):
    data = quick.data
    H, Hpi = data["entropy_rate"], data["unigram_entropy"]
    # the margin: the held-out set's own sampling noise, measured as the optimal predictor's loss on it
    margin = abs(data["eval_optimal_loss"] - H) + 4 * data["eval_optimal_loss_se"]
    assert margin < 0.1
    for run in data["runs"]:
        assert run["final_excess"] is not None
        # both optimizers get far below the unigram baseline (the excess of a unigram model is Hpi - H)
        assert run["excess"][-1] + H < Hpi - 1.0, run["optimizer"]
        assert run["train_loss"][-1] < Hpi
        # the Rao-Blackwellised excess is a mean KL divergence: never negative
        assert min(run["excess"]) >= -1e-9
        # the plain held-out cross-entropy cannot beat the entropy rate by more than the measured margin
        assert min(run["raw_excess"]) >= -margin
    assert {r["optimizer"] for r in data["runs"]} == {"adamw", "sophia"}
    # every lr grid's best point is strictly inside, or the result says it is at the edge and claims nothing
    from theory.stats import at_edge

    for kind in ("adamw", "sophia"):
        scores = T.mean_finals(data["runs"], kind)
        assert data["best_at_edge"][kind] == at_edge(scores)
        assert scores[data["best_lr"][kind]] == min(scores.values())
        assert len(scores) >= 3
    if any(data["best_at_edge"].values()):
        assert quick.claim_held is None
    for t in T.QUICK.targets:
        entry = data["speedups"][f"sophia@{t}"]
        if "speedup_steps" in entry:  # the estimator's cost makes Sophia-G's gradient-evaluation speed-up smaller
            assert entry["speedup_evals"] < entry["speedup_steps"]
    sophia = [r for r in data["runs"] if r["optimizer"] == "sophia"]
    assert all(0 <= w <= 1 for r in sophia for w in r["win_rate"] + r["clip_fraction"])
    json.dumps(quick.to_json())  # JSON-serialisable
    assert quick.claim_held in (True, False, None)
    assert len(quick.rows) >= 6 and len(quick.rows[0]) == len(quick.columns)


def test_oracle_predictor_sits_at_the_entropy_rate(lang):
    """A model that predicts with the true transition matrix has excess ~ 0 on held-out data: the exact
    optimum is reachable, so the excess is measured from the right floor."""
    x = T.sample(lang, 256, 33, torch.Generator().manual_seed(3))
    losses = T.optimal_losses(lang, x)
    se = float(losses.mean(1).std() / math.sqrt(len(x)))
    assert abs(float(losses.mean()) - lang.entropy_rate) < 5 * se


TINY = replace(T.QUICK, d=16, heads=2, layers=1, context=8, steps=30, warmup=5, eval_every=10, eval_sequences=16,
               lrs={"adamw": [3e-3], "sophia": [3e-3], "lion": [3e-4]}, targets=(0.5,), extend=0)


def test_tiny_config_is_deterministic_whatever_the_number_of_workers(monkeypatch):
    strip = lambda d: [{k: v for k, v in r.items() if k != "wall_s"} for r in d["runs"]]  # noqa: E731
    monkeypatch.setenv("SOPHIA_THEORY_WORKERS", "1")
    a = T.experiment(TINY, seeds=2)
    monkeypatch.setenv("SOPHIA_THEORY_WORKERS", "2")
    b = T.experiment(TINY, seeds=2)
    assert strip(a.data) == strip(b.data)
    assert a.rows == b.rows
    assert a.data["best_at_edge"] == {"adamw": True, "sophia": True, "lion": True}  # one-point grids: at the edge
    assert a.claim_held is None and "no speed-up is claimed: a best lr sits at its grid's edge" in a.summary


def test_gradient_evaluations_count_the_estimator():
    """AdamW costs one full-batch forward + backward per step; Sophia-G adds gnb_fraction of one on each refresh
    step (1, 1 + k, 1 + 2k, ...)."""
    out = {k: T.train_one(k, 3e-3, 0, TINY) for k in ("adamw", "sophia")}
    k, f = TINY.hessian_interval, TINY.gnb_fraction
    assert out["adamw"]["grad_evals"] == [float(s) for s in out["adamw"]["steps"]]
    assert out["sophia"]["grad_evals"] == [s + f * ((s - 1) // k + 1) for s in out["sophia"]["steps"]]
    assert out["sophia"]["win_rate_mean"] is not None and out["adamw"]["win_rate_mean"] is None
    assert not out["adamw"]["diverged"] and out["adamw"]["final_excess"] < out["adamw"]["initial_excess"]


def test_a_blown_up_run_is_diverged():
    out = T.train_one("adamw", 30.0, 0, TINY)  # 1e4 times the usable lr
    assert out["diverged"] and out["final_excess"] >= out["initial_excess"] or out["final_excess"] == float("inf")


def test_draw_writes_png(quick, tmp_path):
    path = tmp_path / "tinylm.png"
    quick.draw(str(path))
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speedup_interval():
    g, lo, hi = T.log_ratio_ci([200, 220, 180], [100, 110, 90])
    assert g == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    g, lo, hi = T.log_ratio_ci([200, 100, 150], [100, 100, 100])
    assert lo < g < hi and lo < 1.5 < hi
