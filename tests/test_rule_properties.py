"""Property tests of the rule (SPEC section 1): the clip bound, sign steps, Newton-like steps,
scale invariance, permutation equivariance, and the official dialect's ascent on negative h."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, strategies as st

from sophia_ref import rule
from sophia_ref.dialects import DIALECTS, OFFICIAL, PAPER
from ulps import U, as_list

BOUNDED = [d for d in DIALECTS.values() if d.knobs.clip_bounded]
UNBOUNDED = [d for d in DIALECTS.values() if not d.knobs.clip_bounded]

reals = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
boundary_reals = st.one_of(reals, st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e-12, -1e-12, 1.0, -1.0]))


@st.composite
def step_inputs(draw, n_max: int = 8):
    """A state (m, h, step), a point (theta, g, hhat) and hyperparameters, boundaries included."""
    n = draw(st.integers(1, n_max))
    vec = lambda: torch.tensor(draw(st.lists(boundary_reals, min_size=n, max_size=n)), dtype=torch.float64)
    hyper = rule.Hyper(
        lr=draw(st.floats(1e-6, 1.0)),
        beta1=draw(st.sampled_from([0.0, 0.9, 0.96, 0.965]) | st.floats(0.0, 0.999)),
        beta2=draw(st.sampled_from([0.0, 0.99]) | st.floats(0.0, 0.999)),
        gamma=draw(st.sampled_from([0.01, 0.05, 1.0]) | st.floats(1e-3, 10.0)),
        eps=draw(st.sampled_from([0.0, 1e-15, 1e-12, 1e-8, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
        hessian_interval=draw(st.integers(1, 4)),
        batch_size=draw(st.sampled_from([1.0, 5120.0])),
    )
    state = rule.State(step=draw(st.integers(0, 20)), m=vec(), h=vec())
    return state, vec(), vec(), vec(), hyper


def run_step(dialect, state, theta, g, hhat, hyper):
    """One step; also returns the (m, h) the step divided with."""
    new, delta, diag = rule.update(state, theta, g, hyper, dialect.knobs, hhat)
    m_used = new.m / (1 - hyper.beta1 ** new.step) if dialect.knobs.bias_correction else new.m
    h_used = state.h if dialect.knobs.refresh == "next_step" else new.h
    return new, delta, diag, m_used, h_used


def clip_threshold(dialect, hyper) -> float:
    return 1.0 if dialect.knobs.form == "gamma" else hyper.gamma


@pytest.mark.parametrize("dialect", BOUNDED, ids=lambda d: d.name)
@given(step_inputs())
def test_clip_bound(dialect, inputs):
    """|delta_i + eta lam theta_i| <= eta c for every coordinate, h < 0 included.

    The rule computes a = fl(fl(eta lam) theta), s = fl(eta u) with |u| <= c, and
    delta = fl(-a - s); so |delta + a| <= |s| + U |a + s|, |s| <= fl(eta c). Checked
    in exact rationals; with lam = 0 it is exactly |delta| <= fl(eta c).
    """
    state, theta, g, hhat, hyper = inputs
    new, delta, diag, _, _ = run_step(dialect, state, theta, g, hhat, hyper)
    c = clip_threshold(dialect, hyper)
    eta_c = Fraction(hyper.lr * c)
    assert all(abs(u) <= c for u in as_list(diag.direction))
    decay = as_list((hyper.lr * hyper.weight_decay) * theta)
    for d_i, a_i in zip(as_list(delta), decay):
        if hyper.weight_decay == 0.0:
            assert abs(Fraction(d_i)) <= eta_c
        else:
            assert abs(Fraction(d_i) + Fraction(a_i)) <= eta_c + U * (abs(Fraction(a_i)) + eta_c)


@pytest.mark.parametrize("dialect", UNBOUNDED, ids=lambda d: d.name)
@given(step_inputs())
def test_clip_bound_holds_for_nonnegative_curvature_in_unbounded_dialects(dialect, inputs):
    """The official form sign(m) min(|m|/(gamma B h + eps), 1) is bounded wherever h >= 0."""
    state, theta, g, hhat, hyper = inputs
    state = state._replace(h=state.h.abs())
    new, delta, diag, _, _ = run_step(dialect, state, theta, g, hhat.abs(), hyper)
    assert all(abs(u) <= 1.0 for u in as_list(diag.direction))


@pytest.mark.parametrize("dialect", [d for d in BOUNDED if d.knobs.eps_placement == "max"], ids=lambda d: d.name)
@given(step_inputs())
def test_sign_step_where_curvature_is_at_or_below_eps(dialect, inputs):
    """Where scale*h <= eps the step is eta clip(m / eps, c): a full sign step eta c sign(m) when |m| >= c eps.

    fl(|m| / eps) >= c whenever |m| / eps >= c, since rounding is monotone, so the
    sign step is exact; below that the step is the tiny eta m / eps.
    """
    state, theta, g, hhat, hyper = inputs
    new, delta, diag, m_used, h_used = run_step(dialect, state, theta, g, hhat, hyper)
    c = clip_threshold(dialect, hyper)
    scale = hyper.gamma if dialect.knobs.form == "gamma" else 1.0
    seen = 0
    for m, h, u in zip(as_list(m_used), as_list(h_used), as_list(diag.direction)):
        if scale * h <= hyper.eps:
            seen += 1
            if abs(m) >= c * hyper.eps and m != 0:
                assert u == (c if m > 0 else -c)
            elif m != 0:
                assert u == m / hyper.eps
            else:
                assert u == 0.0
    assert diag.floored == seen


@pytest.mark.parametrize("dialect", [PAPER], ids=lambda d: d.name)
@given(step_inputs())
def test_unclipped_coordinates_take_the_newton_like_step(dialect, inputs):
    """Where |u| < 1 the step is eta m / (gamma h).

    It is the float64 expression eta * (m / (gamma * h)), bit for bit: the rule rounds
    gamma h, the quotient and the product by eta, in that order, and nothing else (the
    floor max(gamma h, eps) leaves gamma h as it is where gamma h > eps; with lam = 0
    delta is the negated product). Against the exact rational eta m / (gamma h) those
    three roundings bound the relative error by (1 + U)^3 - 1.
    """
    state, theta, g, hhat, hyper = inputs
    hyper = rule.Hyper(**{**hyper.__dict__, "weight_decay": 0.0})
    new, delta, diag, m_used, h_used = run_step(dialect, state, theta, g, hhat, hyper)
    checked = 0
    for m, h, u, d in zip(as_list(m_used), as_list(h_used), as_list(diag.direction), as_list(delta)):
        if abs(u) < 1.0 and hyper.gamma * h > hyper.eps and m != 0:
            step = -d
            assert step == hyper.lr * (m / (hyper.gamma * h))
            exact = Fraction(hyper.lr) * Fraction(m) / (Fraction(hyper.gamma) * Fraction(h))
            tiny = Fraction(2.0 ** -1000)  # every intermediate clear of the subnormal range, where U bounds no rounding
            if min(abs(exact), abs(Fraction(hyper.gamma * h)), abs(Fraction(m / (hyper.gamma * h)))) > tiny:
                assert abs(Fraction(step) - exact) <= ((1 + U) ** 3 - 1) * abs(exact)
            checked += 1
    assert diag.unclipped >= checked


@given(st.integers(1, 6), st.integers(-30, 30), st.integers(0, 2**31 - 1))
def test_scale_invariance_is_exact_for_powers_of_two(steps, power, seed):
    """Scaling the loss by c scales g and hhat, hence m and h, by c: the step is unchanged.

    For c a power of two every operation of the rule scales exactly (no overflow or
    underflow at these magnitudes), so whole runs are bit-identical.
    """
    gen = torch.Generator().manual_seed(seed)
    n = 16
    grads = [torch.randn(n, dtype=torch.float64, generator=gen) for _ in range(steps)]
    hhats = [torch.rand(n, dtype=torch.float64, generator=gen) + 0.5 for _ in range(steps)]
    hyper = rule.Hyper(lr=0.1, beta1=0.9, beta2=0.99, gamma=0.5, eps=1e-12, hessian_interval=2)
    theta = torch.zeros(n, dtype=torch.float64)

    def run(c):
        state, out = rule.init(theta), []
        for g, hh in zip(grads, hhats):
            state, delta, diag = rule.update(state, theta, c * g, hyper, PAPER.knobs, c * hh)
            out.append(delta)
        return out

    for a, b in zip(run(1.0), run(2.0 ** power)):
        assert torch.equal(a, b)


@given(step_inputs(), st.floats(1e-3, 1e3))
def test_scale_invariance_for_any_positive_factor(inputs, c):
    """One step from (c m, c h) equals the step from (m, h), where gamma c h stays clear of eps.

    b1 = 0 makes m = g. fl(c g) and fl(c h) add one rounding each to the ratio's two
    (gamma h, the quotient), so the ratios agree to within about 4 U relative each
    way; the clip is monotone and 1-Lipschitz, so |u - u'| <= 8 U |g / (gamma h)|
    bounds the clipped values too.
    """
    state, theta, g, _, hyper = inputs
    hyper = rule.Hyper(**{**hyper.__dict__, "beta1": 0.0, "weight_decay": 0.0, "hessian_interval": 2})
    h = state.h
    keep = (hyper.gamma * h > hyper.eps) & (hyper.gamma * c * h > hyper.eps) & (h.abs() > 1e-250)
    g = torch.where(g.abs() > 1e-250, g, 0.0)  # c g must not underflow: U bounds no subnormal rounding
    zeros = torch.zeros_like(h)
    _, _, d1 = rule.update(rule.State(1, zeros, h), theta, g, hyper)  # t = 2, k = 2: no refresh
    _, _, d2 = rule.update(rule.State(1, zeros, c * h), theta, c * g, hyper)
    ratio = (g / (hyper.gamma * h)).abs()
    close = (d1.direction - d2.direction).abs() <= 8 * float(U) * ratio
    assert bool(close[keep].all())


@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=lambda d: d.name)
@given(step_inputs(), st.randoms(use_true_random=False))
def test_permutation_equivariance(dialect, inputs, rnd):
    """The rule is coordinate-wise: permuting every input permutes the output, bit for bit."""
    state, theta, g, hhat, hyper = inputs
    perm = list(range(theta.numel()))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    new, delta, diag = rule.update(state, theta, g, hyper, dialect.knobs, hhat)
    p_state = rule.State(state.step, state.m[perm], state.h[perm])
    p_new, p_delta, p_diag = rule.update(p_state, theta[perm], g[perm], hyper, dialect.knobs, hhat[perm])
    assert torch.equal(p_delta, delta[perm]) and torch.equal(p_new.m, new.m[perm]) and torch.equal(p_new.h, new.h[perm])
    assert (p_diag.clipped, p_diag.unclipped, p_diag.floored) == (diag.clipped, diag.unclipped, diag.floored)


@given(st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=8), st.floats(1e-3, 1.0),
       st.floats(0.0, 1e-3), st.sampled_from([1.0, 5120.0]))
def test_official_takes_an_ascent_step_of_unbounded_size_where_h_is_negative(ms, lr, slack, bs):
    """official: where gamma B h + 1e-15 < 0, sign(m) min(|m|/d, 1) has the sign of -m: the step climbs.

    With d = -|m| * slack-ish small, |m| / |d| exceeds 1, so the step is larger than lr.
    """
    m = torch.tensor(ms, dtype=torch.float64)
    hyper = rule.Hyper(lr=lr, beta1=0.0, beta2=0.0, gamma=0.04, eps=1e-15, batch_size=bs)
    d_target = -(m * 0.5 + slack)  # negative denominators with |d| < |m| (where slack allows)
    h = (d_target - 1e-15) / (0.04 * bs)
    state = rule.State(step=1, m=torch.zeros_like(m), h=h)  # t = 2: no refresh in caller mode without an estimate
    new, delta, diag = rule.update(state, torch.zeros_like(m), m, hyper, OFFICIAL.knobs)
    assert bool((delta > 0).all()), "the official step must move along +grad (ascent) where its denominator is < 0"
    d = 0.04 * bs * h + 1e-15
    bigger = (m.abs() > d.abs())
    assert bool((delta[bigger] > lr).all()), "and by more than lr: no clip bound"
    paper_state = state
    _, paper_delta, _ = rule.update(paper_state, torch.zeros_like(m), m, hyper, PAPER.knobs.__class__(refresh="caller"))
    assert bool((paper_delta == -lr).all()), "the paper's rule takes a descent sign step there"


@given(st.integers(1, 12))
def test_refresh_steps_are_the_papers(k):
    """Refresh on t = 1, k + 1, 2k + 1, ...: (t - 1) mod k == 0 (the paper's 't mod k = 1', read for k = 1 too)."""
    expected = [t for t in range(1, 3 * k + 3) if (t - 1) % k == 0]
    got = [t for t in range(1, 3 * k + 3) if rule.is_refresh_step(t, k, PAPER.knobs)]
    assert got == expected and got[:2] == ([1, 2] if k == 1 else [1, k + 1])


def test_zero_over_zero_is_a_zero_step():
    """eps = 0, h = 0, m = 0: the rule reads 0/0 as 0, not NaN; m != 0 there is a full sign step."""
    hyper = rule.Hyper(lr=0.5, beta1=0.0, beta2=0.0, gamma=1.0, eps=0.0, hessian_interval=2)
    state = rule.State(step=1, m=torch.zeros(3, dtype=torch.float64), h=torch.zeros(3, dtype=torch.float64))
    g = torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64)
    for knobs in (PAPER.knobs, OFFICIAL.knobs.__class__(eps_placement="add", clip_form="sign_min", refresh="caller")):
        _, delta, _ = rule.update(state, torch.zeros(3, dtype=torch.float64), g, hyper, knobs)
        assert delta.tolist() == [0.0, -0.5, 0.5]


def test_knobs_and_hyper_reject_unknown_values():
    with pytest.raises(ValueError, match=r"refresh='sometimes' is not valid; accepted values: 'immediate'"):
        rule.Knobs(refresh="sometimes")
    with pytest.raises(ValueError, match=r"momentum_updates=0 is not valid; accepted range: integers >= 1"):
        rule.Knobs(momentum_updates=0)
    with pytest.raises(ValueError, match=r"hessian_interval=0 is not valid"):
        rule.Hyper(lr=1.0, beta1=0.9, beta2=0.9, gamma=1.0, eps=0.0, hessian_interval=0)


def test_missing_estimate_on_a_refresh_step_is_an_error():
    hyper = rule.Hyper(lr=1.0, beta1=0.9, beta2=0.9, gamma=1.0, eps=0.0, hessian_interval=3)
    theta = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"step 1 refreshes the Hessian estimate \(k=3\) but no estimate was given"):
        rule.update(rule.init(theta), theta, theta, hyper)
    state = rule.State(step=1, m=theta, h=theta)
    rule.update(state, theta, theta, hyper)  # t = 2 is not a refresh step: no estimate needed


@given(st.lists(st.tuples(st.floats(1e-3, 1e3), st.floats(-100.0, 100.0),
                          st.floats(-0.99, 0.99).filter(lambda v: v == 0.0 or abs(v) > 1e-290)),
                min_size=1, max_size=6))
def test_one_exact_newton_step_lands_on_a_separable_quadratics_minimizer(coords):
    """b1 = b2 = 0, the exact Hessian, eta = gamma = 1, |theta - c| < 1 (so nothing clips): one step of
    SophiaRef on L = sum a_i (theta_i - c_i)^2 / 2 is Newton's step and lands on c.

    Rounding: fl(theta - c), a times it, the quotient by a (each <= half an ulp of a
    value at most 2 max(|theta|, |c|)), and the final sum: within 4 ulps of max(|theta|, |c|).
    Offsets whose gradient a (theta - c) would be subnormal are left out: there the
    gradient itself has lost bits and no ulp bound holds.
    """
    from sophia_ref import SophiaRef, exact_diagonal

    a = torch.tensor([x[0] for x in coords], dtype=torch.float64)
    c = torch.tensor([x[1] for x in coords], dtype=torch.float64)
    theta = (c + torch.tensor([x[2] for x in coords], dtype=torch.float64)).requires_grad_()
    loss = lambda: 0.5 * (a * (theta - c) ** 2).sum()
    opt = SophiaRef([theta], lr=1.0, betas=(0.0, 0.0), gamma=1.0, eps=1e-12, hessian_interval=1,
                    hessian_estimator=lambda: exact_diagonal(loss, [theta]))
    start = theta.detach().clone()
    loss().backward()
    opt.step()
    assert opt.diagnostics.win_rate == 1.0
    scale = torch.maximum(start.abs(), c.abs())
    ulp = torch.nextafter(scale, torch.tensor(float("inf"), dtype=torch.float64)) - scale
    assert bool(((theta.detach() - c).abs() <= 4 * ulp).all())


@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=lambda d: d.name)
@given(step_inputs())
def test_update_is_pure(dialect, inputs):
    """update changes none of its inputs in place, and a cached denominator changes no result."""
    state, theta, g, hhat, hyper = inputs
    copies = [x.clone() for x in (state.m, state.h, theta, g, hhat)]
    new, delta, diag = rule.update(state, theta, g, hyper, dialect.knobs, hhat)
    for before, after in zip(copies, (state.m, state.h, theta, g, hhat)):
        assert torch.equal(before, after) and before.dtype == after.dtype
    # the next step with the cache equals the next step computed from scratch
    cached = rule.update(new, theta, g, hyper, dialect.knobs, hhat)
    fresh = rule.update(new._replace(denominator=None), theta, g, hyper, dialect.knobs, hhat)
    assert torch.equal(cached[1], fresh[1]) and cached[2][:5] == fresh[2][:5]
