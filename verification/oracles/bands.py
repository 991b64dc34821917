"""Acceptance bands of the estimators' statistical checks: rigorous tail bounds, no normal approximation.

Each band bounds the probability that a correct estimator's Monte-Carlo statistic falls outside it,
given an ideal random generator; a run shares its failure budget over every coordinate of every
test (Bonferroni). Laws of one draw, with H the closed-form Hessian and ``tau^2 = sum_{j!=i} H_ij^2``:

- Rademacher Hutchinson mean: ``u_i (H u)_i - H_ii = u_i V`` with ``V = sum_{j!=i} H_ij u_j``; ``u_i V``
  has the law of ``V``, whose moment generating function is ``prod_j cosh(lam H_ij) <=
  exp(lam^2 sigma^2 / 2)``: sub-Gaussian with proxy exactly its variance (Hoeffding), so
  ``P(|z| >= z*) <= 2 exp(-z*^2 / 2)``.
- Gaussian Hutchinson mean: ``u_i (H u)_i = u^T S u`` with S zero but for row and column i; its two
  non-zero eigenvalues are ``s+- = (H_ii +- sqrt(H_ii^2 + tau^2)) / 2``, so one draw is
  ``s+ z1^2 + s- z2^2`` (z standard normal) and the exact Chernoff bound on the mean of N draws is
  computed numerically, for each tail.
- Variance: ``Vhat = (1/N) sum (X - H_ii)^2`` (the mean is known; unbiased for sigma^2, SPEC's
  Gaussian ``2 H_ii^2 + tau^2`` and Rademacher ``tau^2``). Rademacher: ``(X - H_ii)^2 = V^2`` lies in
  ``[0, (sum_{j!=i} |H_ij|)^2]`` and has variance ``2 tau^4 - 2 sum_{j!=i} H_ij^4``: Bernstein's
  inequality. Gaussian: ``Y = (X - H_ii)^2`` has no moment generating function; lower tail
  ``P(Ybar <= sigma^2 - t) <= exp(-N t^2 / (2 mu4))`` (Y >= 0, ``mu4 = E Y^2 = 60 a^4 + 60 a^2 tau^2 +
  9 tau^4``, ``a = H_ii``); upper tail by truncation at T: ``N P(Y > T)`` (Chernoff on one draw) plus a
  Chernoff bound on the mean of ``min(Y, T)`` whose moment generating function is bounded by its
  series with the exact moments of Y (see :func:`gaussian_variance_upper`), T chosen to minimise the
  band. Both are in z units of the natural standard error ``sqrt((mu4 - sigma^4) / N)``; the bands
  come out at 6.3-6.8 z, 10-20% above the normal-theory Bonferroni value (5.8-6.0).
- GNB mean: t statistic with the *sample* standard deviation; band from the empirical Bernstein
  inequality of Maurer and Pontil 2009, Theorem 4, given the range of one draw.
"""

from __future__ import annotations

import math
from typing import Sequence

import mpmath
import numpy as np
from scipy.special import gammainc


def subgaussian_z(alpha: float) -> float:
    """``z*`` with ``2 exp(-z*^2 / 2) = alpha``: two-sided band of a mean of sub-Gaussian draws (Hoeffding)."""
    return math.sqrt(2 * math.log(2 / alpha))


def _chi2_log_mgf(weights: np.ndarray, lam: float) -> tuple[float, float]:
    """``Lambda(lam)`` and ``Lambda'(lam)`` of the centred ``sum_k w_k (z_k^2 - 1)``."""
    r = 1 - 2 * lam * weights
    return float(np.sum(-0.5 * np.log(r) - lam * weights)), float(np.sum(weights / r - weights))


def chi2_chernoff(weights: Sequence[float], draws: int, log_inv_p: float) -> float:
    """Smallest t with Chernoff bound ``P(mean of draws of sum_k w_k (z_k^2 - 1) >= t) <= exp(-log_inv_p)``.

    Exact moment generating function (``prod_k (1 - 2 lam w_k)^(-1/2)``); the rate
    ``sup_lam lam t - Lambda(lam)`` is parametrised by lam: ``t = Lambda'(lam)``, rate
    ``lam Lambda'(lam) - Lambda(lam)``, both increasing; bisection on lam solves
    ``draws * rate = log_inv_p``.
    """
    w = np.asarray(weights, dtype=float)
    top = w.max()
    hi = 0.5 / top if top > 0 else 1.0
    rate = lambda lam: (lambda L, dL: lam * dL - L)(*_chi2_log_mgf(w, lam))
    if top <= 0:
        while draws * rate(hi) < log_inv_p:
            hi *= 2
    else:
        hi *= 1 - 1e-15
        if draws * rate(hi) < log_inv_p:  # cannot happen for a rate that diverges at the pole; be safe
            return float("inf")
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if draws * rate(mid) < log_inv_p else (lo, mid)
    return _chi2_log_mgf(w, hi)[1]


def bernstein_t(draws: int, variance: float, bound: float, log_inv_p: float) -> float:
    """t with ``exp(-N t^2 / (2 v + 2 b t / 3)) = exp(-log_inv_p)`` (one-sided Bernstein, ``X - EX <= b``)."""
    c = 2 * log_inv_p * bound / 3
    return (c + math.sqrt(c * c + 8 * draws * log_inv_p * variance)) / (2 * draws)


def hutchinson_moments(h: np.ndarray, probe: str) -> dict[str, np.ndarray]:
    """Per-coordinate law of one draw ``u_i (H u)_i`` (SPEC section 2): variance, ``mu4 = E(X - H_ii)^4``,
    and the eigenvalues ``s+-`` of the quadratic form (Gaussian) or the range of ``|X - H_ii|`` (Rademacher)."""
    a = np.diag(h).copy()
    off = h - np.diag(a)
    tau2 = (off ** 2).sum(axis=1)
    if probe == "gaussian":
        root = np.sqrt(a * a + tau2)
        s = np.stack([(a + root) / 2, (a - root) / 2], axis=1)
        var = 2 * (s ** 2).sum(axis=1)                   # = 2 a^2 + tau^2
        mu4 = 60 * (s ** 4).sum(axis=1) + 24 * (s[:, 0] * s[:, 1]) ** 2  # = 60 a^4 + 60 a^2 tau^2 + 9 tau^4
        return {"var": var, "mu4": mu4, "eig": s}
    var = tau2
    mu4 = 3 * tau2 ** 2 - 2 * (off ** 4).sum(axis=1)
    return {"var": var, "mu4": mu4, "range": np.abs(off).sum(axis=1)}


def mean_band_z(m: dict[str, np.ndarray], probe: str, draws: int, alpha: float) -> np.ndarray:
    """Per-coordinate two-sided band (z units, ``sigma / sqrt(N)``) on the mean of N draws, failure <= alpha."""
    if probe == "rademacher":
        return np.full(len(m["var"]), subgaussian_z(alpha))
    out = []
    for s, var in zip(m["eig"], m["var"]):
        se = math.sqrt(var / draws)
        log_inv = math.log(2 / alpha)
        out.append(max(chi2_chernoff(s, draws, log_inv), chi2_chernoff(-s, draws, log_inv)) / se)
    return np.array(out)


def chi2_moments(weights: Sequence[float], order: int) -> list[float]:
    """``E W^r`` for r = 0..order, ``W = sum_k w_k (z_k^2 - 1)``: from the cumulants ``kappa_1 = 0``,
    ``kappa_r = 2^(r-1) (r-1)! sum_k w_k^r`` by ``m_r = sum_j C(r-1, j-1) kappa_j m_(r-j)`` (mpmath, 40 digits)."""
    ctx = mpmath.MPContext()
    ctx.dps = 40
    w = [ctx.mpf(float(v)) for v in weights]
    kappa = [ctx.mpf(0), ctx.mpf(0)] + [2 ** (r - 1) * ctx.factorial(r - 1) * sum(v ** r for v in w)
                                        for r in range(2, order + 1)]
    m = [ctx.mpf(1)]
    for r in range(1, order + 1):
        m.append(sum(ctx.binomial(r - 1, j - 1) * kappa[j] * m[r - j] for j in range(1, r + 1)))
    return [float(v) for v in m]


def _one_draw_log_tail(weights: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Chernoff bound on ``log P(W >= cut)`` for one draw of ``W = sum_k w_k (z_k^2 - 1)``, per cut > 0.

    ``-sup_lam (lam cut - Lambda(lam))`` with the sup over a grid of lam in the domain (any lam
    gives a valid bound, so a grid is rigorous, only slightly loose)."""
    top = weights.max()
    if top > 0:
        lams = 0.5 / top * (1 - np.geomspace(1e-9, 1, 600))[::-1]
    else:
        lams = np.geomspace(1e-6, 1e3, 600)
    r = 1 - 2 * lams[:, None] * weights[None, :]
    log_mgf = np.sum(-0.5 * np.log(r) - lams[:, None] * weights[None, :], axis=1)
    return -np.max(lams[None, :] * cuts[:, None] - log_mgf[None, :], axis=1)


VARIANCE_SERIES_ORDER = 12


def gaussian_variance_upper(weights: np.ndarray, draws: int, beta: float) -> float:
    """t (units of sigma^2) with ``P(mean of N draws of Y >= sigma^2 (1 + t)) <= beta``, ``Y = W^2``.

    Y has no moment generating function; truncate: ``P(Ybar >= .) <= N P(Y > T) + P(Zbar >= .)`` with
    ``Z = min(Y, T)`` (``E Z <= sigma^2``). Chernoff for Z with the moment bound
    ``E e^(lam Z) <= 1 + lam sigma^2 + sum_(p=2..q) lam^p E Y^p / p! + E Y^q T^-q sum_(p>q) (lam T)^p / p!``
    (``Z^p <= Y^p``, and ``Z^p <= T^(p-q) Y^q``; exact moments from :func:`chi2_moments`; the last sum is
    ``e^x P(q + 1, x)``, regularised incomplete gamma); ``N P(Y > T)`` by the one-draw Chernoff bound on
    both tails of W. The best T on a grid is kept (each T gives a valid bound).
    """
    w = np.asarray(weights, dtype=float)
    w = w / math.sqrt(2 * np.sum(w * w))  # standardised: sigma^2 = 1
    q = VARIANCE_SERIES_ORDER
    moments = chi2_moments(w, 2 * q)
    ey = np.array(moments[0::2])  # E Y^p = E W^(2p), p = 0..q
    cuts_t = np.geomspace(4.0, 4e6, 49)
    log_tail = np.logaddexp(_one_draw_log_tail(w, np.sqrt(cuts_t)), _one_draw_log_tail(-w, np.sqrt(cuts_t)))
    lams = np.geomspace(1e-7, 10.0, 800)
    p = np.arange(2, q + 1)
    poly = 1 + lams + np.sum(lams[:, None] ** p * (ey[2:] / np.array([math.factorial(k) for k in p])), axis=1)
    best = float("inf")
    for cut, lt in zip(cuts_t, log_tail):
        jump = draws * math.exp(lt)
        if jump >= beta:
            continue
        log_inv = math.log(1 / (beta - jump))
        x = lams * cut
        with np.errstate(divide="ignore"):
            log_rest = math.log(ey[q]) - q * math.log(cut) + x + np.log(gammainc(q + 1, x))
        log_mgf = np.logaddexp(np.log(poly), log_rest)
        excess = lambda t: draws * np.max(lams * (1 + t) - log_mgf) - log_inv  # >= 0: bound met
        lo, hi = 0.0, 1.0
        while excess(hi) < 0:
            lo, hi = hi, 2 * hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
        best = min(best, hi)
    return best


def variance_band_z(m: dict[str, np.ndarray], probe: str, draws: int, alpha: float) -> np.ndarray:
    """Per-coordinate two-sided band on ``Vhat - sigma^2`` in units of ``sqrt((mu4 - sigma^4) / N)``."""
    out = []
    for i, (var, mu4) in enumerate(zip(m["var"], m["mu4"])):
        se = math.sqrt(max(mu4 - var * var, 0.0) / draws)
        if probe == "rademacher":
            spread = max(m["range"][i] ** 2 - var, var)  # |Y - EY| <= spread for Y in [0, range^2]
            t = bernstein_t(draws, mu4 - var * var, spread, math.log(2 / alpha))
        else:
            lower = math.sqrt(2 * mu4 * math.log(2 / alpha) / draws)
            t = max(lower, var * gaussian_variance_upper(m["eig"][i], draws, alpha / 2))
        out.append(t / se)
    return np.array(out)


def empirical_bernstein_z(sample_sd: np.ndarray, ranges: np.ndarray, draws: int, alpha: float) -> np.ndarray:
    """Per-coordinate two-sided band on the t statistic ``(mean - mu) / (s / sqrt(N))`` with failure <= alpha.

    Maurer and Pontil (2009), Theorem 4: for draws in an interval of length R, with probability
    ``>= 1 - delta``, ``mu - mean <= sqrt(2 s^2 ln(2/delta) / N) + 7 R ln(2/delta) / (3 (N - 1))``;
    applied to both tails with ``delta = alpha / 2``.
    """
    log_term = math.log(4 / alpha)
    return math.sqrt(2 * log_term) + 7 * ranges * log_term * math.sqrt(draws) / (3 * (draws - 1) * sample_sd)
