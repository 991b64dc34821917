"""Focused tests of sophia_ref/rule.py, each pinning behaviour a surviving mutant changed
(docs/MUTATION.md, "Results")."""

from __future__ import annotations

import math

import pytest
import torch

from sophia_ref.rule import Hyper, Knobs, denominator, init, is_refresh_step, update

F64 = torch.float64


def hyper(**kw):
    base = dict(lr=0.5, beta1=0.5, beta2=0.75, gamma=0.25, eps=1e-12, weight_decay=0.0, hessian_interval=1)
    return Hyper(**{**base, **kw})


# the open ends of the ranges: gamma = 0 and beta = 1 are rejected, beta above 1 too
@pytest.mark.parametrize("bad", [dict(gamma=0.0), dict(batch_size=0.0), dict(beta1=1.0), dict(beta2=1.0),
                                 dict(beta1=1.5), dict(beta2=1.5)])
def test_hyper_rejects_open_ends(bad):
    with pytest.raises(ValueError, match="is not valid"):
        hyper(**bad)


# ... and the closed ends and the inside are accepted, with the range spelled out in the message
def test_hyper_accepts_closed_ends_and_names_range():
    hyper(beta1=0.0, beta2=0.0, eps=0.0, lr=0.0)
    with pytest.raises(ValueError, match=r"accepted range: \[0.0, 1.0\)"):
        hyper(beta1=1.0)


# clip_bounded: the clip form, or eps as a floor inside max, bounds every step by eta c
def test_clip_bounded():
    assert Knobs().clip_bounded is True
    assert Knobs(eps_placement="add").clip_bounded is True                    # still clipped
    assert Knobs(clip_form="sign_min").clip_bounded is True                   # max(gamma h, eps) > 0
    assert Knobs(eps_placement="add", clip_form="sign_min").clip_bounded is False


# a caller refresh happens only when the caller gives an estimate: not by default
def test_caller_refresh_needs_an_estimate():
    knobs = Knobs(refresh="caller")
    assert is_refresh_step(1, 10, knobs) is False
    assert is_refresh_step(1, 10, knobs, True) is True
    # the schedule refreshes on t = 1, k + 1, 2k + 1, ...
    assert [t for t in range(1, 12) if is_refresh_step(t, 5, Knobs())] == [1, 6, 11]


# eps = 0 in the max placement: a -0.0 curvature gives d = +0.0, so m / d keeps the sign of m
def test_denominator_zero_is_positive_zero():
    d = denominator(torch.tensor([-0.0, 0.0, 2.0], dtype=F64), 1.0, 0.0, "max")
    assert d.tolist() == [0.0, 0.0, 2.0] and not torch.signbit(d).any()
    state = init(torch.zeros(1, dtype=F64))._replace(h=torch.tensor([-0.0], dtype=F64))
    _, delta, _ = update(state, torch.zeros(1, dtype=F64), torch.tensor([1.0], dtype=F64), hyper(eps=0.0),
                         Knobs(refresh="never"))
    assert delta.item() == -0.5                                               # -eta c: descent, not ascent


# weight decay lam = 1 (before): delta = -eta lam theta - eta u, the decay applied
def test_weight_decay_of_one():
    theta = torch.tensor([2.0, -4.0], dtype=F64)
    grad = torch.tensor([1.0, -1.0], dtype=F64)
    _, delta, _ = update(init(theta), theta, grad, hyper(weight_decay=1.0, lr=0.25),
                         hhat=torch.tensor([1e6, 1e6], dtype=F64))
    u = torch.clamp(0.5 * grad / (0.25 * 0.25 * 1e6), -1, 1)                 # m = (1 - b1) g, h = (1 - b2) hhat
    assert torch.equal(delta, torch.mul(theta, -(0.25 * 1.0)).sub_(torch.mul(u, 0.25)))
    assert math.isclose(delta[0].item(), -0.5 - 0.25 * u[0].item(), rel_tol=1e-15)


# gamma h overflowing to inf with h finite: the quotient is still m / (gamma h), from the rescaled division
def test_quotient_where_gamma_h_overflows():
    m = torch.tensor([2.0 ** 1020, -(2.0 ** 1000)], dtype=F64)
    h = torch.tensor([2.0 ** 100, 2.0 ** 100], dtype=F64)                      # gamma h = 2^1100: inf in float64
    state = init(torch.zeros(2, dtype=F64))._replace(m=m, h=h)
    knobs = Knobs(refresh="never")
    _, delta, _ = update(state, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64),
                         hyper(beta1=1.0 - 2.0 ** -52, gamma=2.0 ** 1000, lr=1.0), knobs)
    # m barely moves (b1 = 1 - 2^-52, g = 0): m_t = b1 m, exact powers of two times b1, so u = b1 2^-80 and b1 2^-100
    b1 = 1.0 - 2.0 ** -52
    assert delta.tolist() == [-(b1 * 2.0 ** -80), b1 * 2.0 ** -100]
