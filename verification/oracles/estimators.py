"""Oracle: the reference's Hessian-diagonal estimators (SPEC section 2) against the zoo's closed forms.

What is checked, on the problems of :mod:`verification.oracles.zoo` (the oracle side is the zoo's
hand-derived Hessian and Gauss-Newton diagonal in mpmath at 50 digits; the side checked is
:mod:`sophia_ref.estimators`):

1. ``exact_diagonal`` on ``problem.torch_loss`` equals the closed-form ``diag(H)`` to 1e-12
   relative, on every zoo problem, at its start point(s) (and, in the full run, at seeded
   points around it). Relative error is measured per coordinate as
   ``|d_i - H_ii| / max(|H_ii|, 0.1 max_j |H_ij|)``: plain relative error, except where a diagonal
   entry is more than ten times smaller than the largest entry of its Hessian row, where it is
   measured against a tenth of that entry. Such an entry is a near-cancellation (on the tanh
   network, Gauss-Newton part minus the residual term), and its float64 value cannot be more
   accurate than the rounding of the terms that cancel, whose size the row shows: at one full-run
   point a W1 entry of -5.9e-4, in a row whose largest entry is 6.2e-2, is off by 2.1e-16 (3.4e-15
   of the row scale): 3.6e-13 relative to itself, 3.4e-14 against the floor. The result says how
   many entries were measured against the floor.
2. ``hutchinson``: the mean of N probes converges to ``diag(H)`` and the measured per-coordinate
   variance matches SPEC's formulas (Gaussian ``2 H_ii^2 + sum_{j!=i} H_ij^2``, Rademacher
   ``sum_{j!=i} H_ij^2``), with H the closed-form Hessian. Acceptance bands are *rigorous* tail
   bounds (no normal approximation), Bonferroni over every coordinate of every statistical test of
   one :func:`checks` run, so a correct estimator fails a run with probability below
   :data:`FAILURE_BUDGET` = 1e-6 (given an ideal random generator):

   - Rademacher mean: ``u_i (H u)_i - H_ii = u_i V`` with ``V = sum_{j!=i} H_ij u_j``; ``u_i V`` has
     the law of ``V``, whose moment generating function is ``prod_j cosh(lam H_ij) <=
     exp(lam^2 sigma^2 / 2)``: sub-Gaussian with proxy exactly its variance (Hoeffding), so
     ``P(|z| >= z*) <= 2 exp(-z*^2 / 2)``.
   - Gaussian mean: ``u_i (H u)_i = u^T S u`` with S zero but for row and column i; its two
     non-zero eigenvalues are ``s+- = (H_ii +- sqrt(H_ii^2 + tau^2)) / 2``, ``tau^2 = sum_{j!=i}
     H_ij^2``, so one draw is ``s+ z1^2 + s- z2^2`` (z standard normal) and the exact Chernoff bound
     on the mean of N draws is computed numerically, for each tail.
   - variance: ``Vhat = (1/N) sum (X - H_ii)^2`` (the mean is known; unbiased for sigma^2).
     Rademacher: ``(X - H_ii)^2 = V^2`` lies in ``[0, (sum_{j!=i} |H_ij|)^2]`` and has variance
     ``2 tau^4 - 2 sum_{j!=i} H_ij^4``: Bernstein's inequality. Gaussian: ``Y = (X - H_ii)^2`` has
     no moment generating function; lower tail ``P(Ybar <= sigma^2 - t) <= exp(-N t^2 / (2 mu4))``
     (Y >= 0, ``mu4 = E Y^2 = 60 a^4 + 60 a^2 tau^2 + 9 tau^4``, ``a = H_ii``); upper tail by
     truncation at T: ``N P(Y > T)`` (Chernoff on one draw) plus a Chernoff bound on the mean of
     ``min(Y, T)`` whose moment generating function is bounded by its series with the exact moments
     of Y (see :func:`gaussian_variance_upper`), T chosen to minimise the band. Both are reported
     in z units of the natural standard error ``sqrt((mu4 - sigma^4) / N)``; the bands come out
     at 6.3-6.8 z, 10-20% above the normal-theory Bonferroni value (5.8-6.0).
3. ``gnb_expectation`` on ``problem.torch_logits`` equals the closed-form Gauss-Newton diagonal to
   1e-12 relative; the Monte-Carlo mean of ``gnb`` converges to it (z with the *sample* standard
   deviation; band from the empirical Bernstein inequality of Maurer and Pontil 2009, Theorem 4,
   with the range of one draw computed from the per-example gradients in closed form); ``gnb``
   is never negative; a ``gnb`` with the wrong B (1, or the number of classes, instead of the
   number of predictions) is rejected by the same test.
4. Gauss-Newton vs Hessian: on softmax regression (linear logits) ``gnb_expectation`` equals
   ``exact_diagonal`` of the cross-entropy part to 1e-12; on the tanh network it does so on W2
   (logits linear in W2) but not on W1, and the gap measured by the reference equals the
   closed-form gap to 1e-12 (relative to the Hessian row, as in 1); its size is in the notes.

Monte-Carlo draws are made cheap by *copies*: the statistical checks feed the estimators a loss
(or logits) of k independent copies of the problem, a float64 batched torch transcription of the
zoo formula (checked against the zoo's float64 value and gradient before use), with parameters
``theta`` of shape (k, dim), all copies at the same point. The Hessian is then block diagonal, so
one call of ``hutchinson(samples=1)`` yields k independent single-probe estimates of the problem's
diagonal; one call of ``gnb`` sees ``B = k n`` predictions, so ``k`` times its output on copy c is
exactly a single-copy GNB draw with ``B = n`` (``ghat_c`` is scaled by 1/k, ``B`` by k).
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from typing import Callable, Iterator, Sequence

import mpmath
import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gammainc

from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson

from ..report import CheckResult
from .zoo import (FLOAT, LogisticRegression, Problem, RotatedQuadratic, Rosenbrock, SeparableQuadratic,
                  SoftmaxRegression, TanhNetwork, _SoftmaxModel, all_problems, mp_ops, torch_ops)

DPS = 50
MP = mp_ops(DPS)
F64 = torch.float64

FAILURE_BUDGET = 1e-6
"""Probability that a correct estimator fails any statistical test of one :func:`checks` run."""
EXACT_RTOL = 1e-12
"""Exact-vs-closed-form bound: a handful of float64 roundings per entry (measured worst 2.2e-15 quick,
3.4e-14 full, both on the tanh network): at least 30x margin."""
ROW_FLOOR = 0.1
"""Relative error of entry i is measured against ``max(|H_ii|, ROW_FLOOR * max_j |H_ij|)``."""
CHUNK = 25_000
"""Copies per estimator call (memory and vectorisation sweet spot on a CPU)."""

# Monte-Carlo sizes: draws per (problem, probe) for Hutchinson, per problem for GNB.
HUTCHINSON_DRAWS = {True: 100_000, False: 1_000_000}
GNB_DRAWS = {True: 100_000, False: 1_000_000}


# ---------------------------------------------------------------------------------------------------------
# closed forms (mpmath, 50 digits), returned as float64 arrays
# ---------------------------------------------------------------------------------------------------------

def closed_hessian(problem: Problem, x: Sequence[float]) -> np.ndarray:
    return np.array([[float(v) for v in row] for row in problem.hessian(problem.convert(x, MP), MP)])


def closed_gauss_newton(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    return np.array([float(v) for v in problem.gauss_newton_diagonal(problem.convert(x, MP), MP)])


def row_relative_error(estimate: np.ndarray, exact_diag: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``|d_i - H_ii| / max(|H_ii|, ROW_FLOOR * max_j |H_ij|)`` per coordinate."""
    scale = np.maximum(np.abs(exact_diag), ROW_FLOOR * np.abs(hessian).max(axis=1))
    scale = np.where(scale > 0, scale, np.finfo(float).tiny)
    return np.abs(estimate - exact_diag) / scale


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread for the Monte-Carlo loops, restored after: their tensors are small (25000 x 24),
    and with two threads on a busy 2-core machine the same loop ran 10-18x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _leaf(x: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(x), dtype=F64, requires_grad=True)


def evaluation_points(problem: Problem, quick: bool) -> list[list[float]]:
    """Start point and listed starts; the full run adds three seeded points around the start (N(0, 0.5^2))."""
    points = [list(problem.start)] + [list(s) for s in problem.starts]
    if not quick:
        gen = np.random.default_rng(_seed("points", problem.name))
        points += [list(np.asarray(problem.start) + 0.5 * gen.standard_normal(problem.dim)) for _ in range(3)]
    return points


# ---------------------------------------------------------------------------------------------------------
# batched torch transcriptions of zoo problems: k independent copies, theta of shape (k, dim)
# ---------------------------------------------------------------------------------------------------------

def batched_loss(problem: Problem) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta (k, dim) -> sum_c L(theta_c)``: the zoo formula, vectorised over copies (float64)."""
    if isinstance(problem, SoftmaxRegression | TanhNetwork):
        logits = batched_logits(problem)
        labels = torch.tensor(problem.labels)
        n, classes, mu = len(problem.labels), problem.classes, problem.mu

        def loss(theta):
            f = logits(theta)  # (k, n, classes)
            ce = F.cross_entropy(f.reshape(-1, classes), labels.repeat(theta.shape[0]), reduction="sum") / n
            return ce + 0.5 * mu * (theta * theta).sum()
        return loss
    if isinstance(problem, RotatedQuadratic):
        a = torch.tensor(problem.matrix(FLOAT), dtype=F64)
        c = torch.tensor(problem.c, dtype=F64)
        return lambda theta: 0.5 * (((theta - c) @ a.T) * (theta - c)).sum()
    if isinstance(problem, SeparableQuadratic):
        a, c = torch.tensor(problem.a, dtype=F64), torch.tensor(problem.c, dtype=F64)
        return lambda theta: 0.5 * (a * (theta - c) ** 2).sum()
    if isinstance(problem, LogisticRegression):
        x, y = torch.tensor(problem.x, dtype=F64), torch.tensor(problem.y, dtype=F64)
        n, mu = len(problem.y), problem.mu
        return lambda theta: (F.softplus(-(theta @ x.T) * y).sum() / n + 0.5 * mu * (theta * theta).sum())
    if isinstance(problem, Rosenbrock):
        return lambda theta: ((1 - theta[:, 0]) ** 2 + 100 * (theta[:, 1] - theta[:, 0] ** 2) ** 2).sum()
    raise NotImplementedError(f"no batched transcription of {problem.name!r}")


def batched_logits(problem: _SoftmaxModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta (k, dim) -> logits (k, n, classes)`` of the zoo's softmax models."""
    x = torch.tensor(problem.x, dtype=F64)
    if isinstance(problem, SoftmaxRegression):
        d, classes = problem.features, problem.classes
        return lambda theta: x @ theta.reshape(-1, d, classes)
    if isinstance(problem, TanhNetwork):
        d, m, classes = problem.features, problem.hidden, problem.classes

        def logits(theta):
            w1 = theta[:, : d * m].reshape(-1, d, m)
            w2 = theta[:, d * m:].reshape(-1, m, classes)
            return torch.tanh(x @ w1) @ w2
        return logits
    raise NotImplementedError(f"no batched logits of {problem.name!r}")


def validate_batched(problem: Problem, x: Sequence[float]) -> float:
    """Largest disagreement of the batched transcription with the zoo in float64 (value, gradient, two
    copies), relative to ``1 + |.|``; raises if above 1e-12 (the transcription would not be the problem)."""
    theta = torch.tensor([list(x), list(x)], dtype=F64, requires_grad=True)
    value = batched_loss(problem)(theta)
    (grad,) = torch.autograd.grad(value, theta)
    v_ref = problem.value(list(x), FLOAT)
    g_ref = np.array(problem.grad(list(x), FLOAT))
    err = max(abs(value.item() / 2 - v_ref) / (1 + abs(v_ref)),
              float(np.max(np.abs(grad.numpy() - g_ref[None]) / (1 + np.abs(g_ref)))))
    if isinstance(problem, _SoftmaxModel):
        f = batched_logits(problem)(theta.detach())[0].numpy()
        f_ref = np.array(problem.logits(list(x), FLOAT))
        err = max(err, float(np.max(np.abs(f - f_ref) / (1 + np.abs(f_ref)))))
    if not err <= 1e-12:
        raise RuntimeError(f"batched transcription of {problem.name!r} disagrees with the zoo by {err:.3g}")
    return err


# ---------------------------------------------------------------------------------------------------------
# tail bounds
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# 1. exact_diagonal
# ---------------------------------------------------------------------------------------------------------

def check_exact_diagonal(problem: Problem, quick: bool = True, estimator: Callable = exact_diagonal) -> CheckResult:
    """``estimator(problem.torch_loss(theta), [theta])`` vs the closed-form diagonal at 50 digits."""
    worst, where, floored, plain = 0.0, "", 0, 0.0
    points = evaluation_points(problem, quick)
    for x in points:
        h = closed_hessian(problem, x)
        exact = np.array([float(v) for v in problem.hessian_diagonal(problem.convert(x, MP), MP)])
        theta = _leaf(x)
        (d,) = estimator(problem.torch_loss(theta), [theta])
        rel = row_relative_error(d.detach().numpy(), exact, h)
        floored += int(np.sum(np.abs(exact) < ROW_FLOOR * np.abs(h).max(axis=1)))
        err = np.abs(d.detach().numpy() - exact)
        plain = max(plain, float(np.max(np.where(err > 0, err / np.maximum(np.abs(exact), 1e-300), 0.0))))
        i = int(np.argmax(rel))
        if rel[i] >= worst:
            worst, where = float(rel[i]), f"coordinate {i} at x = [{', '.join(f'{v:.4g}' for v in x)}]"
    notes = [f"{len(points)} point(s): start" + (", listed starts" if problem.starts else "")
             + ("" if quick else ", 3 seeded points start + N(0, 0.5^2)"),
             f"worst |d_i - H_ii| / max(|H_ii|, {ROW_FLOOR:g} max_j |H_ij|) at {where}; closed form in mpmath "
             f"{DPS} digits",
             f"entries measured against the row floor: {floored}; worst plain |d_i - H_ii| / |H_ii|: {plain:.2g}"]
    return CheckResult(problem.name, "exact_diagonal vs closed form", worst, EXACT_RTOL, "rel",
                       worst <= EXACT_RTOL, tuple(notes))


# ---------------------------------------------------------------------------------------------------------
# 2. hutchinson: mean and variance
# ---------------------------------------------------------------------------------------------------------

def hutchinson_draw_stats(problem: Problem, x: Sequence[float], probe: str, draws: int, seed: int,
                          estimator: Callable = hutchinson, chunk: int = CHUNK,
                          mode: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of ``X - H_ii`` and ``(X - H_ii)^2`` over ``draws`` single-probe estimates (and the diagonal)."""
    loss = batched_loss(problem)
    diag = np.diag(closed_hessian(problem, x))
    gen = _generator(seed)
    s1 = np.zeros(problem.dim)
    s2 = np.zeros(problem.dim)
    done = 0
    with single_thread():
        while done < draws:
            k = min(chunk, draws - done)
            theta = torch.tensor(list(x), dtype=F64).repeat(k, 1).requires_grad_(True)
            (est,) = estimator(lambda: loss(theta), [theta], samples=1, probe=probe, generator=gen, mode=mode)
            dev = est.detach().numpy() - diag
            s1 += dev.sum(axis=0)
            s2 += (dev * dev).sum(axis=0)
            done += k
    return s1, s2, diag


def check_hutchinson(problem: Problem, probe: str, draws: int, alpha: float | None = None,
                     seed: int | None = None, estimator: Callable = hutchinson,
                     mode: str = "auto") -> list[CheckResult]:
    """Mean and variance of ``draws`` single-probe Hutchinson estimates at the start point.

    ``alpha`` is the failure probability allowed per coordinate and test (default: ``FAILURE_BUDGET``
    shared by the 2 dim tests of this call).
    """
    alpha = FAILURE_BUDGET / (2 * problem.dim) if alpha is None else alpha
    seed = _seed("hutchinson", probe, mode, problem.name) if seed is None else seed
    x = problem.start
    h = closed_hessian(problem, x)
    m, diag = hutchinson_moments(h, probe), np.diag(h)
    if np.any(m["var"] <= 1e-20 * diag ** 2) or np.any(m["mu4"] - m["var"] ** 2 <= 1e-12 * m["var"] ** 2):
        raise ValueError(f"{problem.name}: a coordinate with a degenerate law (no off-diagonal curvature, or, "
                         "with Rademacher probes, a single one: (X - H_ii)^2 is then constant); pick a problem "
                         "with at least two off-diagonal entries per Hessian row")
    started = time.perf_counter()
    validate_batched(problem, x)
    s1, s2, _ = hutchinson_draw_stats(problem, x, probe, draws, seed, estimator, mode=mode)
    seconds = time.perf_counter() - started
    z_mean = (s1 / draws) / np.sqrt(m["var"] / draws)
    band_mean = float(mean_band_z(m, probe, draws, alpha).max())
    vhat = s2 / draws
    z_var = (vhat - m["var"]) / np.sqrt((m["mu4"] - m["var"] ** 2) / draws)
    band_var = float(variance_band_z(m, probe, draws, alpha).max())
    ratio = vhat / m["var"]
    common = [f"seed {seed} (torch.Generator), N = {draws} single-probe draws at the start point, mode={mode!r}, "
              f"{seconds:.1f} s; draws from {math.ceil(draws / CHUNK)} calls on {min(CHUNK, draws)} independent "
              "copies of the problem (block-diagonal Hessian)",
              f"Bonferroni: each coordinate's test fails a correct estimator with probability <= {alpha:.2g} "
              f"(= 1e-6 / {FAILURE_BUDGET / alpha:.0f} coordinate tests)"]
    mean_result = CheckResult(
        problem.name, f"hutchinson mean, {probe} probes", float(np.abs(z_mean).max()), band_mean, "z",
        bool(np.abs(z_mean).max() <= band_mean),
        tuple(common + [
            f"z_i = (mean_i - H_ii) / (sigma_i / sqrt(N)), sigma_i^2 from SPEC with the closed-form Hessian "
            f"(mpmath {DPS} digits); worst at coordinate {int(np.argmax(np.abs(z_mean)))}",
            "band: " + ("Hoeffding (u_i (Hu)_i - H_ii is sub-Gaussian with proxy sigma_i^2), rigorous"
                        if probe == "rademacher" else
                        "exact Chernoff bound for the mean of N draws of s+ z1^2 + s- z2^2, largest over "
                        "coordinates and tails, rigorous")]))
    var_result = CheckResult(
        problem.name, f"hutchinson variance, {probe} probes", float(np.abs(z_var).max()), band_var, "z",
        bool(np.abs(z_var).max() <= band_var),
        tuple(common + [
            "z_i = (Vhat_i - sigma_i^2) / sqrt((mu4_i - sigma_i^4) / N), Vhat_i = mean (X - H_ii)^2; "
            f"Vhat / sigma^2 in [{ratio.min():.4f}, {ratio.max():.4f}]; worst at coordinate "
            f"{int(np.argmax(np.abs(z_var)))}",
            "band: " + ("Bernstein, draws (X - H_ii)^2 in [0, (sum_j!=i |H_ij|)^2], rigorous"
                        if probe == "rademacher" else
                        "lower tail exp(-N t^2 / (2 mu4)); upper tail truncation + Bernstein + one-draw "
                        "Chernoff, rigorous; largest over coordinates")]))
    return [mean_result, var_result]


# ---------------------------------------------------------------------------------------------------------
# 3. GNB
# ---------------------------------------------------------------------------------------------------------

def check_gnb_expectation(problem: _SoftmaxModel, quick: bool = True,
                          estimator: Callable = gnb_expectation) -> CheckResult:
    """``estimator(problem.torch_logits(theta), [theta])`` vs the closed-form Gauss-Newton diagonal."""
    worst, where = 0.0, ""
    points = evaluation_points(problem, quick)
    for x in points:
        exact = closed_gauss_newton(problem, x)
        theta = _leaf(x)
        (d,) = estimator(problem.torch_logits(theta), [theta])
        rel = np.abs(d.detach().numpy() - exact) / np.maximum(np.abs(exact), np.finfo(float).tiny)
        i = int(np.argmax(rel))
        if rel[i] >= worst:
            worst, where = float(rel[i]), f"coordinate {i}"
    return CheckResult(problem.name, "gnb_expectation vs closed-form Gauss-Newton diagonal", worst, EXACT_RTOL,
                       "rel", worst <= EXACT_RTOL,
                       (f"{len(points)} point(s); |e_i - G_ii| / G_ii (a sum of squares: no cancellation), worst at "
                        f"{where}; closed form in mpmath {DPS} digits",))


def per_example_gradients(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    """``c[b, v, i] = d CE(f_b, v) / d theta_i`` in closed form (float64): ``J_b^T (p_b - e_v)``."""
    xs = np.array(problem.x)
    f = np.array(problem.logits(list(x), FLOAT))
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = problem.classes
    delta = p[:, None, :] - np.eye(classes)[None, :, :]  # (n, v, k): p_b - e_v
    theta = np.asarray(x, dtype=float)
    if isinstance(problem, SoftmaxRegression):
        return np.einsum("bi,bvk->bvik", xs, delta).reshape(len(xs), classes, -1)
    d, m = problem.features, problem.hidden
    w1, w2 = theta[: d * m].reshape(d, m), theta[d * m:].reshape(m, classes)
    a = np.tanh(xs @ w1)  # (n, m)
    dw2 = np.einsum("bj,bvk->bvjk", a, delta).reshape(len(xs), classes, -1)
    back = np.einsum("jk,bvk->bvj", w2, delta) * (1 - a * a)[:, None, :]  # (n, v, m)
    dw1 = np.einsum("bi,bvj->bvij", xs, back).reshape(len(xs), classes, -1)
    return np.concatenate([dw1, dw2], axis=2)


def gnb_draw_stats(problem: _SoftmaxModel, x: Sequence[float], draws: int, seed: int, expect: np.ndarray,
                   estimator: Callable = gnb, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Per-coordinate statistics of ``draws`` single-copy GNB draws (B = n predictions each): sums of
    ``X - expect`` and its square, smallest and largest draw."""
    logits = batched_logits(problem)
    gen = _generator(seed)
    stats = {"s1": np.zeros(problem.dim), "s2": np.zeros(problem.dim),
             "min": np.full(problem.dim, np.inf), "max": np.full(problem.dim, -np.inf)}
    done = 0
    with single_thread():
        while done < draws:
            k = min(chunk, draws - done)
            theta = torch.tensor(list(x), dtype=F64).repeat(k, 1).requires_grad_(True)
            (est,) = estimator(lambda: logits(theta).reshape(-1, problem.classes), [theta], generator=gen)
            sample = k * est.detach().numpy()  # B = k n in the call; copy c's draw with B = n is k times it
            dev = sample - expect
            stats["s1"] += dev.sum(axis=0)
            stats["s2"] += (dev * dev).sum(axis=0)
            stats["min"] = np.minimum(stats["min"], sample.min(axis=0))
            stats["max"] = np.maximum(stats["max"], sample.max(axis=0))
            done += k
    return stats


def _gnb_z(stats: dict[str, np.ndarray], expect: np.ndarray, draws: int,
           factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t statistic, sample mean and sample standard deviation of the draws times ``factor``."""
    mean = expect + stats["s1"] / draws
    var = (stats["s2"] - stats["s1"] ** 2 / draws) / (draws - 1)
    mean, sd = factor * mean, factor * np.sqrt(var)
    return (mean - expect) / (sd / math.sqrt(draws)), mean, sd


def check_gnb(problem: _SoftmaxModel, draws: int, alpha: float | None = None, seed: int | None = None,
              estimator: Callable = gnb) -> list[CheckResult]:
    """Monte-Carlo mean of GNB vs the closed-form Gauss-Newton diagonal; never negative; wrong B rejected."""
    alpha = FAILURE_BUDGET / problem.dim if alpha is None else alpha
    seed = _seed("gnb", problem.name) if seed is None else seed
    x = problem.start
    expect = closed_gauss_newton(problem, x)
    started = time.perf_counter()
    validate_batched(problem, x)
    stats = gnb_draw_stats(problem, x, draws, seed, expect, estimator)
    seconds = time.perf_counter() - started
    n = len(problem.labels)
    # range of one draw B ghat_i^2, ghat_i = (1/B) sum_b c[b, yhat_b, i] with yhat_b drawn per prediction
    c = per_example_gradients(problem, x)
    check_c = (np.einsum("bv,bvi->i", _probs(problem, x), c ** 2) / n - expect) / expect
    if np.abs(check_c).max() > 1e-12:  # the ranges' premise: E_v c = 0, E_v c^2 averaged over b = G_ii
        raise RuntimeError(f"per-example gradients disagree with the Gauss-Newton closed form ({check_c})")
    lo, hi = c.min(axis=1).sum(axis=0) / n, c.max(axis=1).sum(axis=0) / n
    ranges = n * np.maximum(lo * lo, hi * hi)
    outside = int(np.sum(stats["max"] > ranges * (1 + 1e-9)))  # impossible for a correct GNB: fails the test
    z, mean, sd = _gnb_z(stats, expect, draws)
    band = float(empirical_bernstein_z(sd, ranges, draws, alpha).max())
    worst = float(np.abs(z).max())
    seed_note = (f"seed {seed} (torch.Generator), N = {draws} draws at the start point, B = n = {n} predictions "
                 f"each, {seconds:.1f} s; draws from calls on {min(CHUNK, draws)} copies (B = copies * n in the "
                 "call, output rescaled by the number of copies)")
    results = [CheckResult(
        problem.name, "gnb mean vs expectation", worst, band, "z", worst <= band and outside == 0,
        (seed_note,
         f"z_i = (mean_i - G_ii) / (s_i / sqrt(N)), s_i the sample standard deviation; worst at coordinate "
         f"{int(np.argmax(np.abs(z)))}; mean / G in [{(mean / expect).min():.4f}, {(mean / expect).max():.4f}]",
         f"band: empirical Bernstein (Maurer-Pontil), range of a draw n max(lo^2, hi^2) from closed-form "
         f"per-example gradients (largest range / s: {(ranges / sd).max():.1f}); each coordinate fails a correct "
         f"estimator with probability <= {alpha:.2g} (= 1e-6 / {FAILURE_BUDGET / alpha:.0f} coordinate tests); "
         "largest over coordinates",
         f"coordinates with a draw outside that range (impossible for a correct GNB; any fails the check): "
         f"{outside}"))]
    low = float(stats["min"].min())
    results.append(CheckResult(
        problem.name, "gnb never negative", max(0.0, -low) / float(expect.max()), 0.0, "rel", low >= 0,
        (f"min over {draws * problem.dim} draw entries = {low:.3g} (worst is -min / max_i G_ii, clipped at 0)",)))
    wrong = {"B = 1": 1 / n, f"B = classes = {problem.classes}": problem.classes / n}
    rejections, bands = {}, {}
    for label, factor in wrong.items():
        zw, _, sdw = _gnb_z(stats, expect, draws, factor)
        rejections[label] = float(np.abs(zw).max())
        bands[label] = float(empirical_bernstein_z(sdw, ranges, draws, alpha).max())  # its own band (its s)
    weakest = min(rejections.values())
    results.append(CheckResult(
        problem.name, "gnb with wrong B rejected", weakest, max(bands.values()), "z",
        all(rejections[k] > bands[k] for k in wrong),
        ("passes when every wrong-B variant FAILS the mean test: worst is the smallest max|z| among them, bound "
         "the largest of their bands (each computed as above from the variant's own sample deviation)",
         "max|z| (band) per variant: " + ", ".join(f"{k}: {rejections[k]:.3g} ({bands[k]:.3g})" for k in wrong),
         "a variant's draws are these draws times B_wrong / n: what gnb returns with B_wrong in place of the "
         "number of predictions (same labels; B is a plain factor)")))
    return results


def _probs(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    f = np.array(problem.logits(list(x), FLOAT))
    p = np.exp(f - f.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# 4. Gauss-Newton vs Hessian of the cross-entropy
# ---------------------------------------------------------------------------------------------------------

def check_gauss_newton_vs_hessian(problem: _SoftmaxModel) -> CheckResult:
    """``gnb_expectation`` vs ``exact_diagonal`` of the CE part (no ridge), both from the reference.

    Softmax regression: equal (linear logits). Tanh network: equal on W2, different on W1, and the
    difference equals the closed-form one (``-(1/n) sum_b 2 x_bi^2 s_bj a_bj t_bj``).
    """
    x = problem.start
    theta = _leaf(x)
    ce = lambda: problem.cross_entropy(list(theta.unbind()), torch_ops())
    (h_ref,) = exact_diagonal(ce, [theta])
    (g_ref,) = gnb_expectation(problem.torch_logits(theta), [theta])
    h_ref, g_ref = h_ref.numpy(), g_ref.numpy()
    h_full = closed_hessian(problem, x) - problem.mu * np.eye(problem.dim)  # CE part
    h_cf = np.array([float(v) - problem.mu for v in problem.hessian_diagonal(problem.convert(x, MP), MP)])
    g_cf = closed_gauss_newton(problem, x)
    scale = np.maximum(np.abs(h_cf), ROW_FLOOR * np.abs(h_full).max(axis=1))
    if isinstance(problem, SoftmaxRegression):
        rel = np.abs(g_ref - h_ref) / scale
        worst = float(rel.max())
        return CheckResult(problem.name, "GN diagonal = CE Hessian diagonal (linear logits)", worst, EXACT_RTOL,
                           "rel", worst <= EXACT_RTOL,
                           ("gnb_expectation vs exact_diagonal of the cross-entropy (no ridge), both from the "
                            "reference; |g_i - h_i| / max(|h_i|, 0.1 max_j |H_ij|) at the start point",
                            f"closed forms agree to {float(np.max(np.abs(g_cf - h_cf) / scale)):.2g}"))
    w1 = problem.features * problem.hidden
    equal_w2 = float((np.abs(g_ref - h_ref) / scale)[w1:].max())
    gap_agreement = float((np.abs((g_ref - h_ref) - (g_cf - h_cf)) / scale)[:w1].max())
    gap = (np.abs(g_cf - h_cf) / np.abs(h_cf))[:w1]
    gap_g = (np.abs(g_cf - h_cf) / np.abs(g_cf))[:w1]
    worst = max(equal_w2, gap_agreement)
    real = float(gap.max()) > 1e3 * EXACT_RTOL
    return CheckResult(
        problem.name, "GN diagonal vs CE Hessian diagonal (W2 equal, W1 gap)", worst, EXACT_RTOL, "rel",
        worst <= EXACT_RTOL and real,
        (f"W2 (logits linear in W2): |g - h| / scale <= {equal_w2:.2g}; W1: reference gap g - h equals the "
         f"closed-form gap to {gap_agreement:.2g} (relative to max(|h_i|, 0.1 max_j |H_ij|))",
         f"W1 relative gap |G_ii - H_ii| / |H_ii| (CE part, closed form, start point): max {gap.max():.3g} "
         f"(coordinate {int(np.argmax(gap))}), median {float(np.median(gap)):.3g}, min {gap.min():.3g} over "
         f"{w1} W1 coordinates; relative to G_ii instead: max {gap_g.max():.3g}, median {float(np.median(gap_g)):.3g}",
         "the gap is the residual term -2 s a (1 - a^2) x^2 that Gauss-Newton drops (zoo TanhNetwork docstring); "
         "the check also requires it to be real (max gap > 1e-9)"))


# ---------------------------------------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------------------------------------

def _hutchinson_problems(quick: bool) -> list[tuple[Problem, str]]:
    problems = [(RotatedQuadratic(1e2), "auto"), (SoftmaxRegression(), "auto"), (TanhNetwork(), "auto")]
    if not quick:
        problems += [(RotatedQuadratic(1e6), "auto"), (LogisticRegression(), "auto"),
                     (TanhNetwork(), "double_backward")]
    return problems


def checks(quick: bool) -> list[tuple[str, Callable[[], CheckResult | list[CheckResult]]]]:
    """Named thunks: exact_diagonal on every zoo problem; Hutchinson mean and variance (both probes) on
    non-quadratic and rotated problems; GNB expectation, Monte-Carlo mean, sign and wrong-B test on the
    two softmax models; Gauss-Newton vs Hessian. Quick about 7 s on 2 cores (1e5 draws per statistical
    check), full about 70 s (1e6 draws, three more Hutchinson cases, three more points per exact check).

    The statistical tests of one run share :data:`FAILURE_BUDGET` (Bonferroni over every coordinate).
    """
    hutch = _hutchinson_problems(quick)
    softmax_models = [SoftmaxRegression(), TanhNetwork()]
    n_tests = sum(2 * 2 * p.dim for p, _ in hutch) + sum(p.dim for p in softmax_models)
    alpha = FAILURE_BUDGET / n_tests
    items: list[tuple[str, Callable]] = []
    for p in all_problems(quick):
        items.append((f"estimators: exact_diagonal [{p.name}]", lambda p=p: check_exact_diagonal(p, quick)))
    draws = HUTCHINSON_DRAWS[quick]
    for p, mode in hutch:
        for probe in ("gaussian", "rademacher"):
            suffix = "" if mode == "auto" else f", {mode}"
            items.append((f"estimators: hutchinson {probe}{suffix} [{p.name}]",
                          lambda p=p, probe=probe, mode=mode: check_hutchinson(p, probe, draws, alpha, mode=mode)))
    for p in softmax_models:
        items.append((f"estimators: gnb_expectation [{p.name}]", lambda p=p: check_gnb_expectation(p, quick)))
        items.append((f"estimators: gnb Monte Carlo [{p.name}]",
                      lambda p=p: check_gnb(p, GNB_DRAWS[quick], alpha)))
        items.append((f"estimators: Gauss-Newton vs Hessian [{p.name}]", lambda p=p: check_gauss_newton_vs_hessian(p)))
    return items
