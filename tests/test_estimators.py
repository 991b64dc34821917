"""Tests of the Hessian-diagonal estimators (SPEC section 2) in ``sophia_ref.estimators``.

Oracles are closed forms written by hand (never ``torch.autograd.functional.hessian``).
Every random draw comes from a seeded ``torch.Generator``, so each test is deterministic;
the statistical tests are sized so that a *correct* estimator would fail for fewer
than 1e-6 of seeds (Bonferroni over the coordinates tested, normal approximation
with an explicit margin for its tail error).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from sophia_ref import estimators
from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson

F64 = torch.float64
EPS = torch.finfo(F64).eps  # 2**-52
FAIL_PROB = 1e-6  # allowed probability that a correct estimator fails one statistical test


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(shape, seed, dtype=F64, requires_grad=False):
    t = torch.randn(shape, dtype=F64, generator=gen(seed)).to(dtype)
    return t.requires_grad_(requires_grad)


def z_crit(n_tests: int, margin: float = 1.0) -> float:
    """Two-sided Bonferroni critical value: P(any |Z| > z) <= FAIL_PROB / margin over n_tests normals."""
    return float(norm.isf(FAIL_PROB / margin / (2 * n_tests)))


def assert_within(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: torch.Tensor | None = None):
    """|actual - expected| <= rtol * scale elementwise; scale defaults to |expected|.

    Where the oracle is a sum of terms of both signs, scale is the sum of the terms'
    absolute values: a rounding error is relative to that, not to the (cancelled) result.
    """
    assert actual.dtype == F64 and actual.shape == expected.shape
    scale = expected.abs() if scale is None else scale
    err = (actual - expected.to(F64)).abs()
    bad = err > rtol * scale
    assert not bad.any(), (
        f"max err/scale = {(err / scale).max().item():.3e} > {rtol:.1e}; "
        f"actual={actual[bad][:4].tolist()} expected={expected[bad][:4].tolist()}")


def spd(n: int, seed: int) -> torch.Tensor:
    m = rand((n, n), seed)
    s = m @ m.T + n * torch.eye(n, dtype=F64)
    return 0.5 * (s + s.T)  # exactly symmetric, so the Hessian (A + A^T)/2 is A itself


def symmetric(n: int, seed: int) -> torch.Tensor:
    m = rand((n, n), seed)
    return 0.5 * (m + m.T)  # indefinite, dense: every coordinate has off-diagonal curvature


# ---------------------------------------------------------------------------------------------
# 1-2. exact_diagonal against closed forms
# ---------------------------------------------------------------------------------------------

# A closed-form diagonal and exact_diagonal each take a handful of float64 roundings per entry,
# so they agree to a few eps (~1e-15) relative to the terms summed; 1e-12 leaves ~1000x margin.
RTOL_EXACT = 1e-12


def test_exact_diagonal_quadratic_is_diag_of_A():
    n = 7
    a, b = spd(n, 1), rand(n, 2)
    x = rand(n, 3, requires_grad=True)
    (d,) = exact_diagonal(lambda: 0.5 * x @ (a @ x) + b @ x, [x])
    assert_within(d, torch.diagonal(a), RTOL_EXACT)


def test_exact_diagonal_separable_non_quadratic():
    x = rand((3, 4), 4, requires_grad=True)
    (d,) = exact_diagonal(lambda: (x**4).sum() / 4 + torch.cos(x).sum(), [x])
    xv = x.detach()
    # d^2/dx^2 (x^4/4 + cos x) = 3 x^2 - cos x; the two terms can cancel, hence the scale.
    assert_within(d, 3 * xv**2 - torch.cos(xv), RTOL_EXACT, scale=3 * xv**2 + torch.cos(xv).abs())


def test_exact_diagonal_two_tensors_with_cross_terms():
    a = rand((2, 3), 5, requires_grad=True)
    b = rand(4, 6, requires_grad=True)
    v = rand((2, 3), 7)

    def loss():
        return ((a**3).sum() / 3 + a.sum() ** 2 + a.sum() * (b**2).sum() + torch.exp(b).sum()
                + torch.sin((v * a).sum()) + (a**2).sum() * b.sum() + a[0] @ b[:3])

    da, db = exact_diagonal(loss, [a, b])
    av, bv = a.detach(), b.detach()
    s, sa, sb = (v * av).sum(), av.sum(), bv.sum()
    # d2/da_ij^2: 2 a_ij + 2 + 0 - sin(s) v_ij^2 + 2 sum(b) + 0 (a[0] @ b[:3] is bilinear: cross terms only)
    terms_a = [2 * av, torch.full_like(av, 2.0), -torch.sin(s) * v**2, torch.full_like(av, 2 * sb)]
    # d2/db_k^2: 2 sum(a) + exp(b_k)
    terms_b = [torch.full_like(bv, 2 * sa), torch.exp(bv)]
    assert_within(da, sum(terms_a), RTOL_EXACT, scale=sum(t.abs() for t in terms_a))
    assert_within(db, sum(terms_b), RTOL_EXACT, scale=sum(t.abs() for t in terms_b))


def test_exact_diagonal_zero_for_linear_and_unused_parameters():
    p = rand(3, 8, requires_grad=True)
    q_lin = rand((2, 2), 9, requires_grad=True)   # loss linear in q_lin, no coupling: gradient is constant
    q_bil = rand(3, 10, requires_grad=True)       # loss linear in q_bil, but coupled to p: H_qq = 0, H_qp != 0
    unused = rand(5, 11, requires_grad=True)      # not in the graph at all: the allow_unused path
    c = rand((2, 2), 12)
    dp, dl, dbil, du = exact_diagonal(lambda: (p**4).sum() + (c * q_lin).sum() + (p * q_bil).sum(),
                                      [p, q_lin, q_bil, unused])
    assert_within(dp, 12 * p.detach() ** 2, RTOL_EXACT)
    for d, ref in ((dl, q_lin), (dbil, q_bil), (du, unused)):
        assert d.dtype == F64 and d.shape == ref.shape
        assert torch.equal(d, torch.zeros_like(d))


def test_exact_diagonal_float32_parameters_give_float64_of_each_shape():
    x = rand((2, 3), 13, dtype=torch.float32, requires_grad=True)
    y = rand(4, 14, dtype=torch.float32, requires_grad=True)
    dx, dy = exact_diagonal(lambda: (x**4).sum() / 4 + torch.cos(x).sum() + (y**2).sum() * x.sum(), [x, y])
    assert dx.dtype == F64 and dx.shape == x.shape
    assert dy.dtype == F64 and dy.shape == y.shape
    xv, yv = x.detach().double(), y.detach().double()
    # float32 arithmetic inside autograd: a few roundings of eps32 ~ 6e-8 each; 1e-5 leaves ~100x margin.
    assert_within(dx, 3 * xv**2 - torch.cos(xv), 1e-5, scale=3 * xv**2 + torch.cos(xv).abs())
    assert_within(dy, torch.full_like(yv, 2 * xv.sum().item()), 1e-5, scale=torch.full_like(yv, 2 * xv.abs().sum().item()))


def test_exact_diagonal_chunking_matches_unchunked(monkeypatch):
    a = spd(7, 15)
    x = rand(7, 16, requires_grad=True)
    f = lambda: 0.5 * x @ (a @ x) + torch.cos(x).sum()
    (ref,) = exact_diagonal(f, [x])
    monkeypatch.setattr(estimators, "_BATCH_ELEMENTS", 20)  # chunk = 20 // 7 = 2 rows: 4 chunks, the last partial
    (chunked,) = exact_diagonal(f, [x])
    assert torch.equal(chunked, ref)
    assert_within(ref, torch.diagonal(a) - torch.cos(x.detach()), RTOL_EXACT,
                  scale=torch.diagonal(a) + torch.cos(x.detach()).abs())


def _no_batched_grads(monkeypatch):
    """Make every ``is_grads_batched=True`` call fail, as an op without a vmap rule would."""
    real = torch.autograd.grad

    def grad(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)


def test_vmap_fallback_loop_gives_same_results(monkeypatch):
    a = rand((2, 3), 17, requires_grad=True)
    b = rand(4, 18, requires_grad=True)
    unused = rand(2, 19, requires_grad=True)
    loss = lambda: (a**3).sum() + a.sum() * (b**2).sum() + torch.exp(b).sum()
    X = rand((5, 3), 20)
    W = rand((3, 4), 21, requires_grad=True)
    logits = lambda: X @ W + a.sum()
    ref_exact = exact_diagonal(loss, [a, b, unused])
    ref_gnb = gnb_expectation(logits, [W, a, unused])
    _no_batched_grads(monkeypatch)
    # The loop computes the same vector-Jacobian products one at a time (measured: bit-identical);
    # allow a few roundings of reordering, relative to each tensor's largest entry.
    for got, ref in zip(exact_diagonal(loss, [a, b, unused]) + gnb_expectation(logits, [W, a, unused]),
                        ref_exact + ref_gnb):
        assert_within(got, ref, 1e-14, scale=ref.abs().max().clamp_min(1e-300).expand_as(ref))  # ~50 eps of the largest entry


# ---------------------------------------------------------------------------------------------
# 3. hutchinson: modes agree, probes reproducible
# ---------------------------------------------------------------------------------------------

def _tanh_net(batch=5, d_in=3, hidden=4, vocab=3, seed=30, seq=None):
    shape = (batch, d_in) if seq is None else (batch, seq, d_in)
    X = rand(shape, seed)
    W1 = rand((d_in, hidden), seed + 1, requires_grad=True)
    W2 = rand((hidden, vocab), seed + 2, requires_grad=True)
    return X, W1, W2


def _mode_cases():
    a = spd(6, 22)
    x = rand(6, 23, requires_grad=True)
    X, W1, W2 = _tanh_net()
    y = torch.tensor([0, 1, 2, 1, 0])
    return {
        "quadratic": (lambda: 0.5 * x @ (a @ x), [x]),
        "separable": (lambda: (x**4).sum() / 4 + torch.cos(x).sum(), [x]),
        "tanh_ce": (lambda: F.cross_entropy(torch.tanh(X @ W1) @ W2, y), [W1, W2]),
    }


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
@pytest.mark.parametrize("case", ["quadratic", "separable", "tanh_ce"])
def test_hutchinson_forward_equals_double_backward(case, probe):
    f, params = _mode_cases()[case]
    for seed in range(10):
        fwd = hutchinson(f, params, probe=probe, generator=gen(seed), mode="forward", samples=2)
        dbl = hutchinson(f, params, probe=probe, generator=gen(seed), mode="double_backward", samples=2)
        for a, b in zip(fwd, dbl):
            # Same probes, same H u up to summation order. Measured: bit-identical on the quadratic and
            # separable cases, at most 5.1 eps x max|entry| on tanh_ce (200 seeds x 2 probes); an entry
            # u_i (Hu)_i can cancel, so it is relative to the tensor's largest entry. 64 eps: ~12x margin.
            assert_within(a, b, 64 * EPS, scale=b.abs().max().expand_as(b))


@pytest.mark.parametrize("mode", ["forward", "double_backward"])
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_reproducible_from_seed(probe, mode):
    f, params = _mode_cases()["tanh_ce"]
    r1 = hutchinson(f, params, probe=probe, generator=gen(5), mode=mode, samples=3)
    r2 = hutchinson(f, params, probe=probe, generator=gen(5), mode=mode, samples=3)
    r3 = hutchinson(f, params, probe=probe, generator=gen(6), mode=mode, samples=3)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))
    assert all(not torch.equal(a, c) for a, c in zip(r1, r3))
    assert [r.dtype for r in r1] == [F64, F64] and [r.shape for r in r1] == [p.shape for p in params]


def test_hutchinson_probes_drawn_parameter_by_parameter_sample_after_sample():
    """Reproduce the documented draw order by hand and the estimate u * (A u) in closed form."""
    p1 = rand((2, 3), 24, requires_grad=True)
    p2 = rand(4, 25, requires_grad=True)
    a = symmetric(10, 26)
    z = lambda: torch.cat([p1.reshape(-1), p2])
    n = 5
    for probe in ("gaussian", "rademacher"):
        got = hutchinson(lambda: 0.5 * z() @ (a @ z()), [p1, p2], probe=probe, samples=n, generator=gen(7))
        g = gen(7)
        acc, scale = torch.zeros(10, dtype=F64), torch.zeros(10, dtype=F64)
        for _ in range(n):
            if probe == "gaussian":
                us = [torch.randn(p.shape, dtype=F64, generator=g) for p in (p1, p2)]
            else:
                us = [torch.randint(0, 2, p.shape, generator=g).to(F64) * 2 - 1 for p in (p1, p2)]
            u = torch.cat([t.reshape(-1) for t in us])
            acc += u * (a @ u)
            scale += u.abs() * (a.abs() @ u.abs())
        # A u summed in a different order than autograd's: ~10 roundings of terms bounded by |u|(|A||u|),
        # i.e. ~1e-15 of that scale (measured 7e-17); 1e-13 leaves ~100x margin.
        assert_within(torch.cat([t.reshape(-1) for t in got]), acc / n, 1e-13, scale=scale / n)


# ---------------------------------------------------------------------------------------------
# 4. hutchinson statistics
# ---------------------------------------------------------------------------------------------
#
# K independent copies of one block z_k = (x_k, y_k) in R^5 with a dense symmetric H: the loss
# sum_k 0.5 z_k^T H z_k has a block-diagonal Hessian, and the probes of different copies are
# independent, so one call gives K i.i.d. draws of the estimator of diag(H) per coordinate.
# The split of z_k over two tensors tests that the variance counts H_ij across tensors too.

BLOCK = 5


def _blocks(k: int, seed: int = 40):
    h = symmetric(BLOCK, seed)
    x = rand((k, 3), seed + 1, requires_grad=True)
    y = rand((k, 2), seed + 2, requires_grad=True)
    loss = lambda: 0.5 * torch.einsum("ki,ij,kj->", torch.cat([x, y], 1), h, torch.cat([x, y], 1))
    return h, [x, y], loss


def _moments(h: torch.Tensor, probe: str):
    """Per-coordinate variance and 4th central moment of one sample u_i (H u)_i (SPEC section 2).

    u_i (Hu)_i - H_ii = H_ii (u_i^2 - 1) + u_i c with c = sum_{j != i} H_ij u_j, independent of u_i.
    Gaussian: c ~ N(0, tau^2), E(u^2-1)^4 = 60, E(u^2-1)^2 u^2 = 10, E u^4 = 3, so
    mu4 = 60 a^4 + 60 a^2 tau^2 + 9 tau^4. Rademacher: u_i^2 = 1, mu4 = E c^4 = 3 tau^4 - 2 sum H_ij^4.
    """
    a = torch.diagonal(h)
    off = h - torch.diag(a)
    tau2 = (off**2).sum(1)
    if probe == "gaussian":
        return 2 * a**2 + tau2, 60 * a**4 + 60 * a**2 * tau2 + 9 * tau2**2
    return tau2, 3 * tau2**2 - 2 * (off**4).sum(1)


@pytest.mark.parametrize("mode", ["auto", "double_backward"])
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_mean_converges_to_diagonal(probe, mode):
    k, samples = 2500, 8  # 20000 draws per coordinate of H
    h, params, loss = _blocks(k)
    est = torch.cat(hutchinson(loss, params, probe=probe, samples=samples, generator=gen(41), mode=mode), 1)
    mean = est.mean(0)  # mean of k * samples i.i.d. draws
    var, _ = _moments(h, probe)
    z = (mean - torch.diagonal(h)) / torch.sqrt(var / (k * samples))
    # Bonferroni over the 5 coordinates; margin 10: the mean of 20000 draws has skewness <= 2.9/sqrt(20000)
    # = 0.02 (u^2 is chi2_1), whose Edgeworth term inflates a normal tail at z ~ 5.6 by ~1.5x < 10x.
    assert z.abs().max() < z_crit(BLOCK, margin=10), z
    # the test has power: the diagonal of a different matrix (H_ii + 0.1) is rejected
    assert ((mean - torch.diagonal(h) - 0.1) / torch.sqrt(var / (k * samples))).abs().max() > z_crit(BLOCK, 10)


@pytest.mark.parametrize("mode", ["auto", "double_backward"])
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_variance_matches_formula(probe, mode):
    k = 20000  # one sample per copy: 20000 i.i.d. single-sample estimates per coordinate
    h, params, loss = _blocks(k, seed=50)
    est = torch.cat(hutchinson(loss, params, probe=probe, samples=1, generator=gen(51), mode=mode), 1)
    var, mu4 = _moments(h, probe)
    s2 = est.var(0)
    # s^2 is asymptotically normal with variance (mu4 - sigma^4) / k (delta method, mu4 exact above).
    z = (s2 - var) / torch.sqrt((mu4 - var**2) / k)
    # Margin 100: X = (r - mu)^2 is very skewed (skewness 13.6 when H_ii dominates), so s^2 has skewness
    # <= 13.6/sqrt(20000) = 0.1, whose Edgeworth term inflates a normal tail at z ~ 6.0 by < 5x.
    # (Checked over 100 other seeds: z per coordinate has mean within +-0.3 and sd 0.88-1.09.)
    assert z.abs().max() < z_crit(BLOCK, margin=100), z
    # power: the other probe's formula is rejected (they differ by 2 H_ii^2)
    other, _ = _moments(h, "rademacher" if probe == "gaussian" else "gaussian")
    assert ((s2 - other) / torch.sqrt((mu4 - var**2) / k)).abs().max() > z_crit(BLOCK, 100)


@pytest.mark.parametrize("mode", ["forward", "double_backward"])
def test_hutchinson_rademacher_exact_for_diagonal_hessian(mode):
    d = torch.rand(6, dtype=F64, generator=gen(60)) + 0.5
    x = rand(6, 61, requires_grad=True)
    xv = x.detach()
    for f, diag, scale in (
        (lambda: 0.5 * (d * x**2).sum(), d, d),
        (lambda: (x**4).sum() / 4 + torch.cos(x).sum(), 3 * xv**2 - torch.cos(xv), 3 * xv**2 + torch.cos(xv).abs()),
    ):
        runs = [hutchinson(f, [x], probe="rademacher", generator=gen(s), mode=mode)[0] for s in range(8)]
        # u_i = +-1 and H u is linear in u entry by entry, so u_i (H u)_i = H_ii for every probe: variance 0,
        # and bit-identical whatever the seed (flipping signs commutes with rounding).
        assert all(torch.equal(r, runs[0]) for r in runs)
        assert_within(runs[0], diag, RTOL_EXACT, scale=scale)


# ---------------------------------------------------------------------------------------------
# 5. samples=n is the mean of n single-sample calls from the same stream
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["forward", "double_backward"])
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_samples_n_is_mean_of_single_calls(probe, mode):
    a = rand((2, 3), 70, requires_grad=True)
    b = rand(4, 71, requires_grad=True)
    loss = lambda: (a**3).sum() + a.sum() * (b**2).sum() + torch.exp(b).sum() + torch.sin(a[0] @ b[:3])
    n = 6
    batched = hutchinson(loss, [a, b], samples=n, probe=probe, generator=gen(72), mode=mode)
    g = gen(72)
    singles = [hutchinson(loss, [a, b], samples=1, probe=probe, generator=g, mode=mode) for _ in range(n)]
    for i, got in enumerate(batched):
        stack = torch.stack([s[i] for s in singles])
        # Same draws, same products; only the order of the n-term sum and the division may differ.
        # Measured: <= 1.3 eps; allow 4 eps per term.
        assert_within(got, stack.mean(0), 4 * n * EPS, scale=stack.abs().mean(0))
    # and the generator was advanced by exactly n samples' worth of draws in both cases
    g2 = gen(72)
    hutchinson(loss, [a, b], samples=n, probe=probe, generator=g2, mode=mode)
    assert torch.equal(torch.randn(3, generator=g2), torch.randn(3, generator=g))


# ---------------------------------------------------------------------------------------------
# 6. side effects: parameters, existing graphs, p.grad
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["forward", "auto"])
def test_hutchinson_forward_mode_keeps_params_and_prior_graph(mode):
    p = rand((3, 4), 80, requires_grad=True)
    f = lambda t: (torch.sin(t) * t**2).sum() + (t**3).sum()  # saves t itself for backward
    q = p.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(f(q), [q])
    before, version, ptr = p.detach().clone(), p._version, p.data_ptr()
    loss = f(p)  # graph built before the call
    hutchinson(lambda: f(p), [p], generator=gen(81), mode=mode, samples=2)
    assert torch.equal(p.detach(), before) and p.data_ptr() == ptr and p._version == version
    assert p.is_leaf and p.requires_grad and p.grad is None
    loss.backward()  # would raise "modified by an inplace operation" if the version were not restored
    assert torch.equal(p.grad, ref)


class _CubeNoJvp(torch.autograd.Function):
    """x**3 with a (twice differentiable) backward but no jvp: forward-mode AD is unsupported."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def test_hutchinson_auto_falls_back_to_double_backward():
    x = rand(4, 82, requires_grad=True)
    f = lambda: _CubeNoJvp.apply(x).sum() + x[0] * x[1]
    before, version = x.detach().clone(), x._version
    with pytest.raises(NotImplementedError):
        hutchinson(f, [x], generator=gen(83), mode="forward")
    assert torch.equal(x.detach(), before) and x._version == version  # restored even on failure
    for probe in ("gaussian", "rademacher"):
        auto = hutchinson(f, [x], probe=probe, generator=gen(84), samples=3)
        dbl = hutchinson(f, [x], probe=probe, generator=gen(84), samples=3, mode="double_backward")
        assert torch.equal(auto[0], dbl[0])  # the probes drawn before the failure are reused
    (d,) = exact_diagonal(f, [x])
    assert_within(d, 6 * x.detach(), RTOL_EXACT)


def test_hutchinson_non_leaf_params_use_double_backward():
    base = rand(5, 85, requires_grad=True)
    w = base * 2.0  # not a leaf
    a = spd(5, 86)
    f = lambda: 0.5 * w @ (a @ w)
    with pytest.raises(ValueError, match="mode='forward'"):
        hutchinson(f, [w], mode="forward")
    auto = hutchinson(f, [w], probe="rademacher", generator=gen(87), samples=4)
    dbl = hutchinson(f, [w], probe="rademacher", generator=gen(87), samples=4, mode="double_backward")
    assert torch.equal(auto[0], dbl[0])


def test_no_estimator_touches_p_grad():
    X, W1, W2 = _tanh_net(seed=90)
    y = torch.tensor([0, 1, 2, 1, 0])
    known = rand(W1.shape, 91)
    W1.grad = known.clone()
    grad_obj = W1.grad
    logits = lambda: torch.tanh(X @ W1) @ W2
    loss = lambda: F.cross_entropy(logits(), y)
    calls = [
        lambda: exact_diagonal(loss, [W1, W2]),
        lambda: hutchinson(loss, [W1, W2], generator=gen(92), mode="forward"),
        lambda: hutchinson(loss, [W1, W2], generator=gen(92), mode="double_backward"),
        lambda: gnb(logits, [W1, W2], generator=gen(93)),
        lambda: gnb_expectation(logits, [W1, W2]),
    ]
    for call in calls:
        call()
        assert W1.grad is grad_obj and torch.equal(W1.grad, known)
        assert W2.grad is None


# ---------------------------------------------------------------------------------------------
# 7. gnb
# ---------------------------------------------------------------------------------------------

def _sample_labels(logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The estimator's documented sampling, reproduced: yhat_b ~ softmax(f_b), one multinomial draw per row."""
    flat = logits.detach().reshape(-1, logits.shape[-1]).double()
    return torch.multinomial(torch.softmax(flat, dim=-1), 1, generator=g).reshape(-1)


def test_gnb_softmax_regression_is_B_ghat_squared():
    X = rand((6, 3), 100)
    W = rand((3, 4), 101, requires_grad=True)
    for seed in range(5):
        (got,) = gnb(lambda: X @ W, [W], generator=gen(seed))
        logits = X @ W.detach()
        labels = _sample_labels(logits, gen(seed))
        B = X.shape[0]
        r = torch.softmax(logits, -1) - F.one_hot(labels, 4).double()  # dCE/dlogits per row
        ghat = X.T @ r / B          # gradient of the mean cross-entropy, by hand
        gabs = X.abs().T @ r.abs() / B
        assert (got >= 0).all()
        # ghat is a sum of B terms (a few roundings each, relative to gabs); B ghat^2 doubles that.
        assert_within(got, B * ghat**2, 1e-12, scale=B * gabs**2)


def _tanh_ghat(X, W1, W2, labels):
    """Gradient of the mean CE of logits tanh(X W1) W2 (any leading shape) w.r.t. (W1, W2), by hand; and |.| scales."""
    Xf = X.reshape(-1, X.shape[-1])
    h = torch.tanh(Xf @ W1.detach())
    logits = h @ W2.detach()
    B, V = logits.shape
    g = (torch.softmax(logits, -1) - F.one_hot(labels, V).double()) / B
    back = (g @ W2.detach().T) * (1 - h**2)
    back_abs = (g.abs() @ W2.detach().abs().T) * (1 - h**2)
    return (Xf.T @ back, h.T @ g), (Xf.abs().T @ back_abs, h.abs().T @ g.abs()), B


def test_gnb_3d_logits_counts_every_prediction():
    X, W1, W2 = _tanh_net(batch=2, seq=3, d_in=3, hidden=4, vocab=5, seed=110)
    logits_fn = lambda: torch.tanh(X @ W1) @ W2  # (batch, seq, V)
    assert logits_fn().shape == (2, 3, 5)
    for seed in range(5):
        got = gnb(logits_fn, [W1, W2], generator=gen(seed))
        labels = _sample_labels(logits_fn(), gen(seed))
        ghats, gabs, B = _tanh_ghat(X, W1, W2, labels)
        assert B == 6  # batch * seq
        for est, gh, ga in zip(got, ghats, gabs):
            assert (est >= 0).all()
            # as above, with ~2x more roundings per entry through the tanh layer: still far below 1e-12
            assert_within(est, B * gh**2, 1e-12, scale=B * ga**2)
        # the same predictions flattened to (B, V) give the same draws and the same estimate
        flat = gnb(lambda: logits_fn().reshape(6, 5), [W1, W2], generator=gen(seed))
        assert all(torch.equal(a, b) for a, b in zip(got, flat))


def test_gnb_never_negative_and_zero_for_unused():
    X, W1, W2 = _tanh_net(batch=4, seq=2, seed=120)
    unused = rand(3, 123, requires_grad=True)
    g = gen(124)
    for _ in range(50):
        r = gnb(lambda: torch.tanh(X @ W1) @ W2, [W1, W2, unused], generator=g)
        assert all((t >= 0).all() for t in r)
        assert torch.equal(r[2], torch.zeros(3, dtype=F64))


def _mc_gnb(logits_fn, params, draws, seed):
    g = gen(seed)
    s = [torch.stack(t) for t in zip(*(gnb(logits_fn, params, generator=g) for _ in range(draws)))]
    return torch.cat([t.reshape(draws, -1) for t in s], 1)


def test_gnb_mc_mean_matches_expectation_and_wrong_B_is_caught():
    X, W1, W2 = _tanh_net(batch=2, seq=3, d_in=2, hidden=3, vocab=3, seed=130)
    logits_fn = lambda: torch.tanh(X @ W1) @ W2  # (2, 3, 3): B = 6 predictions, batch = 2
    draws = 4000
    samples = _mc_gnb(logits_fn, [W1, W2], draws, seed=131)
    expect = torch.cat([t.reshape(-1) for t in gnb_expectation(logits_fn, [W1, W2])])
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(draws)
    m = expect.numel()
    # Bonferroni over the m = 15 coordinates; margin 100 for the normal approximation of a mean of 4000
    # skewed draws (B ghat^2 is chi2_1-like: skewness 2.2-3.3 per coordinate, measured on 40000 draws, so
    # the mean's is <= 0.05; with the estimated standard error the t-statistic's skewness is ~3x that,
    # whose Edgeworth term inflates a tail at z ~ 6.2 by < 10x).
    zc = z_crit(m, margin=100)
    skew = (((samples - mean) / samples.std(0)) ** 3).mean(0)
    assert skew.max() < 6.5  # the premise of the margin above (sample skewness: max 4.2 over 30 seeds)
    assert ((mean - expect) / se).abs().max() < zc
    # a wrong B would scale the estimator: by batch instead of batch*seq (1/3) or with no factor (1/6)
    for wrong in (2 / 6, 1 / 6):
        assert ((wrong * mean - expect) / (wrong * se)).abs().max() > zc


# ---------------------------------------------------------------------------------------------
# 8. gnb_expectation
# ---------------------------------------------------------------------------------------------

def test_gnb_expectation_softmax_regression_is_exact_hessian_for_any_labels():
    B, d, V = 6, 3, 4
    X = rand((B, d), 140)
    W = rand((d, V), 141, requires_grad=True)
    p = torch.softmax(X @ W.detach(), -1)
    closed = (X**2).T @ (p * (1 - p)) / B  # (1/B) sum_b x_bi^2 p_bv (1 - p_bv), all terms >= 0
    (got,) = gnb_expectation(lambda: X @ W, [W])
    assert_within(got, closed, RTOL_EXACT)
    g = gen(142)
    for _ in range(3):  # the Hessian of the mean CE of a linear model does not depend on the labels
        y = torch.randint(0, V, (B,), generator=g)
        (h,) = exact_diagonal(lambda: F.cross_entropy(X @ W, y), [W])
        assert_within(h, closed, RTOL_EXACT)


def test_gnb_expectation_tanh_network_closed_form_and_gap_to_hessian():
    X, W1, W2 = _tanh_net(batch=5, d_in=3, hidden=4, vocab=3, seed=150)
    B = X.shape[0]
    h = torch.tanh(X @ W1.detach())
    p = torch.softmax(h @ W2.detach(), -1)
    # column of J_b for W1[i, k]: c_bv = x_bi (1 - h_bk^2) W2[k, v]; GGN diag = (1/B) sum_b Var_{p_b}(c_b)
    c = X[:, :, None, None] * (1 - h**2)[:, None, :, None] * W2.detach()[None, None, :, :]  # (b, i, k, v)
    second = (p[:, None, None, :] * c**2).sum(-1)
    first = (p[:, None, None, :] * c).sum(-1)
    ggn1 = (second - first**2).sum(0) / B
    ggn2 = (h**2).T @ (p * (1 - p)) / B
    e1, e2 = gnb_expectation(lambda: torch.tanh(X @ W1) @ W2, [W1, W2])
    # E c^2 - (E c)^2 cancels: the error is relative to E c^2.
    assert_within(e1, ggn1, RTOL_EXACT, scale=second.sum(0) / B)
    assert_within(e2, ggn2, RTOL_EXACT)
    y = torch.tensor([0, 2, 1, 1, 0])
    x1, x2 = exact_diagonal(lambda: F.cross_entropy(torch.tanh(X @ W1) @ W2, y), [W1, W2])
    # W2 enters the logits linearly: there the Hessian diagonal equals the GGN diagonal
    assert_within(x2, e2, RTOL_EXACT)
    # W1 does not: the residual term sum_v (p_v - y_v) d^2 f_v/dW1^2 makes a large gap
    gap = ((x1 - e1).abs() / x1.abs().clamp_min(e1.abs())).max()
    assert gap > 1e-3, gap


def test_gnb_expectation_chunking_matches(monkeypatch):
    X = rand((3, 2), 160)
    W = rand((2, 4), 161, requires_grad=True)
    f = lambda: torch.tanh(X @ W)
    (ref,) = gnb_expectation(f, [W])
    monkeypatch.setattr(estimators, "_BATCH_ELEMENTS", 60)  # chunk = 60 // 12 = 5 of 12 pairs: last partial
    (chunked,) = gnb_expectation(f, [W])
    # different batching of the same products; accumulated in a different grouping: a few roundings
    assert_within(chunked, ref, 1e-14, scale=ref.abs().max().expand_as(ref))


# ---------------------------------------------------------------------------------------------
# 9. bad input
# ---------------------------------------------------------------------------------------------

_x = torch.zeros(3, dtype=F64, requires_grad=True)
_loss = lambda: (_x**2).sum()
_logits = lambda: _x.reshape(1, 3) * 2

ESTIMATORS = {
    "exact_diagonal": lambda ps: exact_diagonal(_loss, ps),
    "hutchinson": lambda ps: hutchinson(_loss, ps),
    "gnb": lambda ps: gnb(_logits, ps),
    "gnb_expectation": lambda ps: gnb_expectation(_logits, ps),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_bad_params(name):
    call = ESTIMATORS[name]
    with pytest.raises(ValueError, match="params is empty"):
        call([])
    with pytest.raises(ValueError, match=r"params\[1\] \(shape \(2,\)\) does not require grad"):
        call([_x, torch.zeros(2, dtype=F64)])
    # an integer tensor cannot require grad in torch, so it is caught as not requiring grad
    with pytest.raises(ValueError, match=r"params\[1\].*does not require grad"):
        call([_x, torch.arange(3)])
    with pytest.raises(ValueError, match=r"params\[1\] has dtype torch\.complex128"):
        call([_x, torch.zeros(2, dtype=torch.complex128, requires_grad=True)])
    with pytest.raises(TypeError, match=r"params\[1\] is a list"):
        call([_x, [1.0, 2.0]])


@pytest.mark.parametrize("samples", [0, -1, 1.5, True, "2"])
def test_bad_samples(samples):
    with pytest.raises(ValueError, match=rf"samples={samples!r}".replace(".", r"\.")):
        hutchinson(_loss, [_x], samples=samples)


def test_bad_probe_and_mode():
    with pytest.raises(ValueError, match="probe='uniform'"):
        hutchinson(_loss, [_x], probe="uniform")
    with pytest.raises(ValueError, match="mode='sideways'"):
        hutchinson(_loss, [_x], mode="sideways")


@pytest.mark.parametrize("call", [
    lambda f: exact_diagonal(f, [_x]),
    lambda f: hutchinson(f, [_x], mode="forward"),
    lambda f: hutchinson(f, [_x], mode="double_backward"),
])
def test_non_scalar_loss(call):
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor, got \(3,\)"):
        call(lambda: _x**2)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor, got float"):
        call(lambda: 1.0)


@pytest.mark.parametrize("est", [gnb, gnb_expectation])
def test_bad_logits(est):
    with pytest.raises(ValueError, match=r"logits_fn must return .*got shape \(\), dtype torch\.float64"):
        est(lambda: (_x**2).sum(), [_x])
    with pytest.raises(ValueError, match=r"logits_fn must return .*dtype torch\.int64"):
        est(lambda: torch.ones(2, 3, dtype=torch.int64), [_x])
    with pytest.raises(ValueError, match=r"logits_fn must return .*got list"):
        est(lambda: [1.0, 2.0], [_x])


@pytest.mark.parametrize("estimator", ["exact_diagonal", "hutchinson", "gnb", "gnb_expectation"])
def test_a_parameter_listed_twice_is_refused(estimator):
    """Listed twice, one tensor would get two probes in forward mode (u1 * H u2, mean 0): refuse it."""
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = {"exact_diagonal": lambda: exact_diagonal(lambda: (x ** 4).sum(), [x, x]),
          "hutchinson": lambda: hutchinson(lambda: (x ** 4).sum(), [x, x]),
          "gnb": lambda: gnb(lambda: x.reshape(1, 3), [x, x]),
          "gnb_expectation": lambda: gnb_expectation(lambda: x.reshape(1, 3), [x, x])}[estimator]
    with pytest.raises(ValueError, match=r"params\[1\] is the same tensor as params\[0\]; list each parameter once"):
        fn()
