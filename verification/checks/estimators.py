"""The reference's Hessian-diagonal estimators (SPEC section 2) against the zoo's closed forms.

The side checked is :mod:`sophia_ref.estimators`; the oracle side is
:mod:`verification.oracles.estimators` (the zoo's hand-derived Hessian and Gauss-Newton diagonal in
mpmath at 50 digits, batched copies) and :mod:`verification.oracles.bands` (rigorous tail bounds).
What is checked, on the problems of :mod:`verification.oracles.zoo`:

1. ``exact_diagonal`` on ``problem.torch_loss`` equals the closed-form ``diag(H)`` to 1e-12
   relative, on every zoo problem, at its start point(s) (and, in the full run, at seeded points
   around it), measured per coordinate as ``|d_i - H_ii| / max(|H_ii|, 0.1 max_j |H_ij|)``: at one
   full-run point a W1 entry of -5.9e-4 of the tanh network, in a row whose largest entry is 6.2e-2,
   is off by 2.1e-16 (3.4e-15 of the row scale): 3.6e-13 relative to itself, 3.4e-14 against the
   floor. The result says how many entries were measured against the floor.
2. ``hutchinson``: the mean of N probes converges to ``diag(H)`` and the measured per-coordinate
   variance matches SPEC's formulas (Gaussian ``2 H_ii^2 + sum_{j!=i} H_ij^2``, Rademacher
   ``sum_{j!=i} H_ij^2``), with H the closed-form Hessian, within the bands of
   :mod:`~verification.oracles.bands`, Bonferroni over every coordinate of every statistical test of
   one :func:`checks` run, so a correct estimator fails a run with probability below
   :data:`FAILURE_BUDGET` = 1e-6 (given an ideal random generator).
3. ``gnb_expectation`` on ``problem.torch_logits`` equals the closed-form Gauss-Newton diagonal to
   1e-12 relative; the Monte-Carlo mean of ``gnb`` converges to it (empirical Bernstein band, with
   the range of one draw from the closed-form per-example gradients); ``gnb`` is never negative; a
   ``gnb`` with the wrong B (1, or the number of classes, instead of the number of predictions) is
   rejected by the same test.
4. Gauss-Newton vs Hessian: on softmax regression (linear logits) ``gnb_expectation`` equals
   ``exact_diagonal`` of the cross-entropy part to 1e-12; on the tanh network it does so on W2
   (logits linear in W2) but not on W1, and the gap measured by the reference equals the
   closed-form gap to 1e-12 (relative to the Hessian row, as in 1); its size is in the notes.

Monte-Carlo draws are made cheap by the oracle's copies: one call on k copies yields k independent
draws (:mod:`verification.oracles.estimators`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson

from ..oracles.bands import empirical_bernstein_z, hutchinson_moments, mean_band_z, variance_band_z
from ..oracles.estimators import (DPS, F64, MP, ROW_FLOOR, batched_logits, batched_loss, closed_gauss_newton,
                                  closed_hessian, closed_hessian_diagonal, evaluation_points, per_example_gradients,
                                  row_relative_error, seed_of, softmax_probabilities, validate_batched)
from ..oracles.zoo import (LogisticRegression, Problem, RotatedQuadratic, SoftmaxRegression, TanhNetwork,
                           _SoftmaxModel, all_problems, torch_ops)
from ..report import CheckResult

FAILURE_BUDGET = 1e-6
"""Probability that a correct estimator fails any statistical test of one :func:`checks` run."""
EXACT_RTOL = 1e-12
"""Exact-vs-closed-form bound: a handful of float64 roundings per entry (measured worst 2.2e-15 quick,
3.4e-14 full, both on the tanh network): at least 30x margin."""
CHUNK = 25_000
"""Copies per estimator call (memory and vectorisation sweet spot on a CPU)."""

# Monte-Carlo sizes: draws per (problem, probe) for Hutchinson, per problem for GNB.
HUTCHINSON_DRAWS = {True: 100_000, False: 1_000_000}
GNB_DRAWS = {True: 100_000, False: 1_000_000}


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


# ---------------------------------------------------------------------------------------------------------
# 1. exact_diagonal
# ---------------------------------------------------------------------------------------------------------

def check_exact_diagonal(problem: Problem, quick: bool = True, estimator: Callable = exact_diagonal) -> CheckResult:
    """``estimator(problem.torch_loss(theta), [theta])`` vs the closed-form diagonal at 50 digits."""
    worst, where, floored, plain = 0.0, "", 0, 0.0
    points = evaluation_points(problem, quick)
    for x in points:
        h = closed_hessian(problem, x)
        exact = closed_hessian_diagonal(problem, x)
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
    seed = seed_of("hutchinson", probe, mode, problem.name) if seed is None else seed
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
    seed = seed_of("gnb", problem.name) if seed is None else seed
    x = problem.start
    expect = closed_gauss_newton(problem, x)
    started = time.perf_counter()
    validate_batched(problem, x)
    stats = gnb_draw_stats(problem, x, draws, seed, expect, estimator)
    seconds = time.perf_counter() - started
    n = len(problem.labels)
    # range of one draw B ghat_i^2, ghat_i = (1/B) sum_b c[b, yhat_b, i] with yhat_b drawn per prediction
    c = per_example_gradients(problem, x)
    check_c = (np.einsum("bv,bvi->i", softmax_probabilities(problem, x), c ** 2) / n - expect) / expect
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
