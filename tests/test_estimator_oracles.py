"""The estimator checks (``verification/checks/estimators.py``, against the closed forms of
``verification/oracles/estimators.py`` and the bands of ``verification/oracles/bands.py``): the quick
checks pass, and the machinery can fail: biased or mis-scaled estimators are rejected, and the tail bounds behind the
statistical bands hold (empirically conservative) without being uselessly loose."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.stats import norm

from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson
from verification.checks import estimators as check
from verification.oracles import bands
from verification.oracles.zoo import LogisticRegression, SoftmaxRegression, TanhNetwork
from verification.report import CheckResult


@functools.lru_cache(maxsize=None)
def quick_results() -> tuple[tuple[str, CheckResult], ...]:
    out = []
    for name, thunk in check.checks(quick=True):
        got = thunk()
        out += [(name, r) for r in (got if isinstance(got, list) else [got])]
    return tuple(out)


def test_quick_checks_pass():
    results = quick_results()
    failed = [(name, r.row(), r.notes) for name, r in results if not r.passed]
    assert not failed, failed
    for name, r in results:
        assert name.startswith("estimators: ") and r.unit in ("rel", "z") and r.notes
        assert math.isfinite(r.worst) and math.isfinite(r.bound)
    checks = {r.check for _, r in results}
    for probe in ("gaussian", "rademacher"):
        assert {f"hutchinson mean, {probe} probes", f"hutchinson variance, {probe} probes"} <= checks
    assert {"exact_diagonal vs closed form", "gnb mean vs expectation", "gnb never negative",
            "gnb with wrong B rejected"} <= checks


def test_quick_checks_report_the_tanh_gauss_newton_gap():
    (gap,) = [r for _, r in quick_results() if r.problem == "tanh network" and r.check.startswith("GN diagonal")]
    assert any("median" in note and "max" in note for note in gap.notes)


# -- the machinery can fail ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [1 + 1e-10, 1 + 1e-11])
def test_perturbed_exact_diagonal_fails(factor):
    bad = lambda loss, params: [d * factor for d in exact_diagonal(loss, params)]
    result = check.check_exact_diagonal(TanhNetwork(), quick=True, estimator=bad)
    assert not result.passed and result.worst > check.EXACT_RTOL


def test_perturbed_gnb_expectation_fails():
    bad = lambda logits, params: [d * (1 + 1e-10) for d in gnb_expectation(logits, params)]
    assert not check.check_gnb_expectation(SoftmaxRegression(), estimator=bad).passed


@pytest.mark.parametrize("probe, factor", [("rademacher", 1.01), ("gaussian", 1.03)])
def test_biased_hutchinson_fails_the_mean_test(probe, factor):
    """Logistic regression has the largest |H_ii| / sigma_i of the zoo (3.3 Rademacher, 0.69 Gaussian):
    a bias of 1% (3%) is 10 (6) sigma / sqrt(N) per 1e5 draws; 2e5 draws make it 15 (9) z."""
    biased = lambda *args, **kwargs: [factor * d for d in hutchinson(*args, **kwargs)]
    mean, _ = check.check_hutchinson(LogisticRegression(), probe, 200_000, estimator=biased)
    assert not mean.passed and mean.worst > mean.bound
    honest, _ = check.check_hutchinson(LogisticRegression(), probe, 200_000)  # same seed, unbiased
    assert honest.passed


@pytest.mark.parametrize("claimed, drawn", [("rademacher", "gaussian"), ("gaussian", "rademacher")])
def test_variance_test_tells_the_probes_apart(claimed, drawn):
    """Both probes are unbiased, but their variances differ by 2 H_ii^2 (a factor 1.5-4.8 on softmax
    regression): checked against the other probe's formula, the variance test fails."""
    swapped = lambda *args, probe, **kwargs: hutchinson(*args, probe=drawn, **kwargs)
    _, variance = check.check_hutchinson(SoftmaxRegression(), claimed, 50_000, estimator=swapped)
    assert not variance.passed and variance.worst > variance.bound


@pytest.mark.parametrize("wrong_b", ["one", "classes"])
def test_gnb_with_wrong_batch_factor_fails(wrong_b):
    problem = SoftmaxRegression()
    n = len(problem.labels)
    factor = (1 if wrong_b == "one" else problem.classes) / n  # B -> 1 or K instead of n

    def bad(logits_fn, params, *, generator):
        return [factor * d for d in gnb(logits_fn, params, generator=generator)]
    mean, never_negative, _ = check.check_gnb(problem, 20_000, estimator=bad)
    assert not mean.passed and mean.worst > mean.bound
    assert never_negative.passed


# -- the tail bounds ---------------------------------------------------------------------------------------

H = np.array([[2.0, 0.5, -0.3, 0.2], [0.5, 0.2, 0.1, -0.4], [-0.3, 0.1, -1.0, 0.3], [0.2, -0.4, 0.3, 0.05]])


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_bands_are_conservative_and_tight(probe):
    """Simulated draws of u_i (H u)_i (numpy, not the estimator): with alpha = 0.05 per coordinate,
    each band is exceeded in at most 5% of 1000 replicates (plus 4 binomial standard errors); at the
    per-coordinate budget of a real run (1e-6 / 200) no band is more than 15-20% wider than the
    normal quantile it replaces (at alpha = 0.05 the Chernoff bounds are looser: 2.7-2.8 vs 1.96)."""
    rng = np.random.default_rng(7)
    draws, reps, alpha = 1000, 1000, 0.05
    m = bands.hutchinson_moments(H, probe)
    band_mean = bands.mean_band_z(m, probe, draws, alpha)
    band_var = bands.variance_band_z(m, probe, draws, alpha)
    exceed_mean = np.zeros(len(H))
    exceed_var = np.zeros(len(H))
    for _ in range(reps):
        u = rng.standard_normal((draws, len(H))) if probe == "gaussian" else rng.choice([-1.0, 1.0], (draws, len(H)))
        dev = u * (u @ H.T) - np.diag(H)
        exceed_mean += np.abs(dev.mean(0) / np.sqrt(m["var"] / draws)) > band_mean
        exceed_var += np.abs(((dev ** 2).mean(0) - m["var"]) / np.sqrt((m["mu4"] - m["var"] ** 2) / draws)) > band_var
    slack = alpha + 4 * math.sqrt(alpha * (1 - alpha) / reps)
    assert (exceed_mean / reps).max() <= slack and (exceed_var / reps).max() <= slack
    real = 1e-6 / 200
    assert bands.mean_band_z(m, probe, 100_000, real).max() <= 1.15 * norm.isf(real / 2)
    assert bands.variance_band_z(m, probe, 100_000, real).max() <= 1.2 * norm.isf(real / 2)


def test_gaussian_moments_match_the_closed_forms():
    m = bands.hutchinson_moments(H, "gaussian")
    a, tau2 = np.diag(H), (H ** 2).sum(1) - np.diag(H) ** 2
    assert np.allclose(m["var"], 2 * a ** 2 + tau2, rtol=1e-14)
    assert np.allclose(m["mu4"], 60 * a ** 4 + 60 * a ** 2 * tau2 + 9 * tau2 ** 2, rtol=1e-14)
    for s, var, mu4 in zip(m["eig"], m["var"], m["mu4"]):
        moments = bands.chi2_moments(s, 4)
        assert moments[1] == pytest.approx(0, abs=1e-15) and moments[2] == pytest.approx(var, rel=1e-14)
        assert moments[4] == pytest.approx(mu4, rel=1e-14)
