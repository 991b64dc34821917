"""The knobs h_bias_correction, estimate_clamp, weight_decay_form and refresh="never", each value on a
tiny hand-computed case (dyadic numbers: every result below is exact in float64); the refresh count
of State; the quotient where gamma B h overflows; the dtype of delta."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from sophia_ref import rule
from sophia_ref.dialects import OFFICIAL, PAPER

F64 = torch.float64


def T(*values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def run(knobs: rule.Knobs, hyper: rule.Hyper, grads, hhats, theta=None, state=None):
    """Steps from ``state`` (default: init); returns the deltas and the final state."""
    theta = T(0.0) if theta is None else theta
    state = rule.init(theta) if state is None else state
    deltas = []
    for g, hh in zip(grads, hhats):
        state, delta, _ = rule.update(state, theta, g, hyper, knobs, hh)
        deltas.append(delta.tolist())
    return deltas, state


# b1 = 0: m = g = 1; b2 = 1/2; k = 2: refresh on t = 1 only. hhat = 4 gives h = 2 (stored).
HYPER = rule.Hyper(lr=1.0, beta1=0.0, beta2=0.5, gamma=1.0, eps=1e-12, hessian_interval=2)


@pytest.mark.parametrize("correction, refresh, expected", [
    ("none", "immediate", [[-0.5], [-0.5]]),          # 1 / 2, 1 / 2
    ("steps", "immediate", [[-0.25], [-0.375]]),      # 1 / (2 / (1 - 1/2)), 1 / (2 / (1 - 1/4))
    ("refreshes", "immediate", [[-0.25], [-0.25]]),   # n = 1 on both steps: 1 / (2 / (1 - 1/2))
    ("refreshes", "next_step", [[-1.0], [-0.25]]),    # t = 1 divides by the pre-refresh h = 0 (n = 0: no
                                                      # correction; max(0, eps): sign step), t = 2 by 2 / (1/2)
    ("steps", "next_step", [[-1.0], [-0.375]]),       # 0 / (1 - 1/2) = 0: sign step; then 2 / (3/4)
])
def test_h_bias_correction(correction, refresh, expected):
    knobs = rule.Knobs(h_bias_correction=correction, refresh=refresh)
    deltas, state = run(knobs, HYPER, [T(1.0), T(1.0)], [T(4.0), None])
    assert deltas == expected
    assert state.h.tolist() == [2.0] and state.refreshes == 1  # the stored h stays uncorrected


@pytest.mark.parametrize("clamp, h", [("none", [-1.0, 1.5]), ("zero", [0.0, 1.5]), ("abs", [1.0, 1.5])])
def test_estimate_clamp(clamp, h):
    """hhat = (-2, 3), b2 = 1/2: h = hhat / 2 of the clamped estimate."""
    knobs = rule.Knobs(estimate_clamp=clamp)
    _, state = run(knobs, HYPER, [T(1.0, 1.0)], [T(-2.0, 3.0)], theta=T(0.0, 0.0))
    assert state.h.tolist() == h


@pytest.mark.parametrize("form, delta, m", [
    ("before", -0.625, 1.0),     # -eta lam theta - eta u = -0.25 * 2 - 0.5 * 0.25
    ("after", -0.59375, 1.0),    # (2 - 0.125) * (1 - 0.25) - 2
    ("coupled", -0.25, 2.0),     # g = 1 + 0.5 * 2 = 2, u = 2 / 4; no decoupled term
])
def test_weight_decay_form(form, delta, m):
    """eta = lam = 1/2, theta = 2, g = 1, h = 4 (b2 = 0): u = m / 4."""
    hyper = rule.Hyper(lr=0.5, beta1=0.0, beta2=0.0, gamma=1.0, eps=1e-12, weight_decay=0.5, hessian_interval=1)
    new, d, _ = rule.update(rule.init(T(2.0)), T(2.0), T(1.0), hyper, rule.Knobs(weight_decay_form=form), T(4.0))
    assert d.tolist() == [delta] and new.m.tolist() == [m]


def test_refresh_never_ignores_estimates():
    """h stays as it is (0 from init: every step a sign step), the count stays 0, no estimate is needed."""
    knobs = rule.Knobs(refresh="never")
    assert not any(rule.is_refresh_step(t, 1, knobs, estimate_given=True) for t in range(1, 5))
    state = rule.init(T(0.0))
    for hhat in (T(4.0), None, T(4.0)):
        state, delta, diag = rule.update(state, T(0.0), T(1.0), HYPER, knobs, hhat)
        assert delta.tolist() == [-1.0] and not diag.refreshed
    assert state.h.tolist() == [0.0] and state.refreshes == 0


def test_state_keeps_its_positional_form_and_counts_refreshes():
    m, h = T(0.0), T(0.0)
    assert rule.State(3, m, h) == rule.State(3, m, h, None) == rule.State(3, m, h, None, 0)
    assert rule.init(m).refreshes == 0
    state = rule.init(m)
    for t in range(1, 8):  # k = 2: refreshes on t = 1, 3, 5, 7
        state, _, _ = rule.update(state, m, T(1.0), HYPER, PAPER.knobs, T(1.0))
        assert state.refreshes == (t + 1) // 2


@pytest.mark.parametrize("name, value", [("h_bias_correction", "yes"), ("estimate_clamp", "relu"),
                                         ("weight_decay_form", "decoupled"), ("refresh", "sometimes")])
def test_new_knobs_reject_unknown_values(name, value):
    accepted = {"h_bias_correction": "'none', 'steps', 'refreshes'", "estimate_clamp": "'none', 'zero', 'abs'",
                "weight_decay_form": "'before', 'after', 'coupled'",
                "refresh": "'immediate', 'next_step', 'caller', 'never'"}[name]
    with pytest.raises(ValueError, match=rf"^{name}='{value}' is not valid; accepted values: {accepted}$"):
        rule.Knobs(**{name: value})


# -- gamma B h beyond the float64 range ------------------------------------------------------------------------

BIG = rule.Hyper(lr=0.5, beta1=0.0, beta2=0.0, gamma=0.04, eps=1e-15, hessian_interval=2, batch_size=5120.0)
STEP_B = rule.Knobs(batch_factor="step")


@pytest.mark.parametrize("knobs, sign", [(STEP_B, 1.0), (OFFICIAL.knobs, 1.0), (OFFICIAL.knobs, -1.0)],
                         ids=["clip-max", "official", "official-negative-h"])
def test_the_quotient_survives_an_overflowing_gamma_B_h(knobs, sign):
    """gamma B h = 204.8 * 1e307 overflows to inf, and m / inf would be a zero step. The ratio is about
    0.049: the step is eta times it (times -1 in the official form where h < 0, an ascent), computed as the
    float64 expression with an unbounded exponent: equal, bit for bit, to the same step with m and h both
    scaled by 2^-64, and within two roundings of the exact rational. The other coordinate is untouched.
    (With eps inside max a negative gamma B h never reaches the quotient: max(-inf, eps) = eps.)"""
    m, h = T(1e308, 3.0), T(sign * 1e307, 2.0)
    state = rule.State(step=1, m=torch.zeros(2, dtype=F64), h=h)  # t = 2: no refresh
    _, delta, diag = rule.update(state, torch.zeros(2, dtype=F64), m, BIG, knobs)
    scaled = rule.State(step=1, m=torch.zeros(2, dtype=F64), h=h * 2.0 ** -64)
    _, _, diag_scaled = rule.update(scaled, torch.zeros(2, dtype=F64), m * 2.0 ** -64, BIG, knobs)
    u = diag.direction.tolist()
    assert u[0] == diag_scaled.direction.tolist()[0]
    exact = Fraction(1e308) / (Fraction(0.04 * 5120.0) * Fraction(sign * 1e307))
    assert 0.04 < abs(exact) < 0.05 and abs(Fraction(u[0]) - exact) <= 2 * Fraction(1, 2**53) * abs(exact)
    scale = 0.04 * 5120.0
    d1 = scale * 2.0 + (1e-15 if knobs.eps_placement == "add" else 0.0)
    assert u[1] == min(3.0 / max(d1, 1e-15), 1.0)  # as before: 3 / (gamma B 2 [+ eps])
    assert delta.tolist() == [-0.5 * u[0], -0.5 * u[1]]


# -- the dtype of delta ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.1])
@pytest.mark.parametrize("form", ["before", "after", "coupled"])
@pytest.mark.parametrize("theta_dtype, state_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                                      (torch.float32, torch.float32)])
def test_delta_dtype_is_the_promotion_of_theta_and_the_direction(lam, form, theta_dtype, state_dtype):
    """Whatever the weight decay: ``promote_types(theta.dtype, u.dtype)``, u in the dtype of m, g and h."""
    hyper = rule.Hyper(lr=0.1, beta1=0.9, beta2=0.9, gamma=1.0, eps=1e-12, weight_decay=lam, hessian_interval=1)
    theta = T(1.0, -2.0, dtype=theta_dtype)
    state = rule.State(0, T(0.0, 0.0, dtype=state_dtype), T(0.0, 0.0, dtype=state_dtype))
    g, hhat = T(0.5, 0.25, dtype=state_dtype), T(1.0, 2.0, dtype=state_dtype)
    _, delta, diag = rule.update(state, theta, g, hyper, rule.Knobs(weight_decay_form=form), hhat)
    assert diag.direction.dtype == state_dtype
    assert delta.dtype == torch.promote_types(theta_dtype, state_dtype)


# -- the denominator cache -------------------------------------------------------------------------------------

def test_the_denominator_cache_is_reused_only_for_the_same_unchanged_h():
    """Between refreshes the next step reuses d; an in-place change of h, or other settings, recompute it."""
    hyper = rule.Hyper(lr=0.1, beta1=0.0, beta2=0.0, gamma=1.0, eps=1e-12, hessian_interval=3)
    theta, g = T(0.0, 0.0), T(0.5, -0.25)
    state, _, _ = rule.update(rule.init(theta), theta, g, hyper, PAPER.knobs, T(2.0, 4.0))
    again, _, _ = rule.update(state, theta, g, hyper, PAPER.knobs)
    assert again.denominator is state.denominator
    changed = rule.update(state, theta, g, rule.Hyper(**{**hyper.__dict__, "gamma": 2.0}), PAPER.knobs)[0]
    assert changed.denominator is not state.denominator and changed.denominator.d.tolist() == [4.0, 8.0]
    state.h.mul_(2.0)  # h changed in place: the cached d is stale
    _, delta, _ = rule.update(state, theta, g, hyper, PAPER.knobs)
    assert delta.tolist() == [-0.1 * 0.5 / 4.0, 0.1 * 0.25 / 8.0]
