"""The `levanter` and `fastxtend` presets, run through SophiaRef, against independent rewrites of
those ports' rules (tests/independent_ports.py) on 30 steps.

Gradients are drawn ahead (they do not depend on theta), so m, h and the direction u
of the two runs see the same inputs; only the arithmetic of the parameter update can
differ. Where the port writes that update as the reference does, the runs agree bit for
bit; where it rounds differently (weight decay), each step adds at most a few roundings:

    reference: theta + fl(fl(theta * fl(-lr lam)) - fl(lr u))
    levanter:  theta + fl(-lr fl(u + fl(lam theta)))
    fastxtend: fl(fl(theta fl(1 - lr lam)) - lr u)        (addcmul_ fused: one rounding)

each within 3 U (lr (|u| + lam |theta|)) + 2 ulp(|theta|) of the exact
theta - lr lam theta - lr u (U = 2^-53; |u| <= 1), and a difference carried from earlier
steps is multiplied by 1 - lr lam <= 1. So after t steps
|theta_ref - theta_port| <= t (4 ulp(M) + 6 U lr (1 + lam M)), M the largest |theta| so far
(measured on these runs: at most 1 ulp of M for levanter and 6 for fastxtend after 30 steps;
the bound allows about 120).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from independent_ports import FastxtendSophia, LevanterSophiaH
from sophia_ref import SophiaRef
from sophia_ref.dialects import FASTXTEND, LEVANTER

F64 = torch.float64
U = 2.0 ** -53
STEPS, N = 30, 64


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(N, dtype=F64, generator=gen)
    grads = [torch.randn(N, dtype=F64, generator=gen) for _ in range(STEPS)]
    curvature = torch.rand(N, dtype=F64, generator=gen) * 40.0 - 5.0  # some negative: sign steps there
    return start, grads, curvature


def _within_rounding_bound(ref: Tensor, port: Tensor, t: int, lr: float, lam: float, biggest: float) -> bool:
    """|ref - port| <= t (4 ulp(M) + 6 U lr (1 + lam M)), the bound of the module docstring."""
    bound = t * (4 * math.ulp(biggest) + 6 * U * lr * (1 + lam * biggest))
    return bool(((ref - port).abs() <= bound).all())


@pytest.mark.parametrize("weight_decay", [0.0, LEVANTER.defaults["weight_decay"]])
def test_levanter_preset_matches_levanters_rule(weight_decay):
    """levanter refreshes after step t = k, 2k, ... from the estimate at that step's pre-step parameters;
    in the preset that is the caller refresh of step t + 1, handed the estimate at the previous parameters.
    Without weight decay the estimate depends on theta, so the phase and the evaluation point are both
    checked bit for bit; with it the estimate is fixed, so that only the decay's rounding differs."""
    start, grads, curvature = _data(seed=1)
    if weight_decay == 0.0:
        hessian_fn = lambda theta: curvature + 0.5 * torch.sin(theta)
    else:
        hessian_fn = lambda theta: curvature
    lr, k = 0.05, LEVANTER.defaults["hessian_interval"]
    b1, b2 = LEVANTER.defaults["betas"]
    port = LevanterSophiaH(start, lr, b1=b1, b2=b2, eps=LEVANTER.defaults["eps"], gamma=LEVANTER.defaults["gamma"],
                           weight_decay=weight_decay, update_interval=k)
    p = start.clone().requires_grad_()
    opt = SophiaRef([p], lr=lr, weight_decay=weight_decay, dialect="levanter")
    theta_port, previous, biggest = start.clone(), None, float(start.abs().max())
    for t, g in enumerate(grads, start=1):
        h_port = port.h  # levanter folds step t's estimate in after step t: the reference's h of step t
        theta_port = port.step(theta_port, g, hessian_fn)
        p.grad = g.clone()
        refresh = t > 1 and (t - 1) % k == 0
        before = p.detach().clone()
        opt.step(hessian_estimate=[hessian_fn(previous)] if refresh else None)
        previous = before
        assert opt.diagnostics.refreshed == refresh and torch.equal(opt.state[p]["h"], h_port)
        biggest = max(biggest, float(theta_port.abs().max()), float(p.detach().abs().max()))
        if weight_decay == 0.0:
            assert torch.equal(p.detach(), theta_port), t  # every operation is the reference's: bit for bit
        else:
            assert _within_rounding_bound(p.detach(), theta_port, t, lr, weight_decay, biggest), t
    assert opt.state[p]["refreshes"] == (STEPS - 1) // k


@pytest.mark.parametrize("weight_decay", [0.0, FASTXTEND.defaults["weight_decay"]])
def test_fastxtend_preset_matches_fastxtends_rule(weight_decay):
    """fastxtend's refresh never fires: h stays 0, d = eps = 1e-15 and every step is a sign step. An
    estimate handed to SophiaRef is ignored. fastxtend's m comes from a fused add_ (alpha), which can
    differ from b1 m + (1 - b1) g by an ulp; with |m| >> eps the ratio is 1 in both, so u is the same."""
    start, grads, _ = _data(seed=2)
    lr, bs = 0.01, 8
    b1, b2 = FASTXTEND.defaults["betas"]
    rho, eps = FASTXTEND.defaults["gamma"], FASTXTEND.defaults["eps"]
    port = FastxtendSophia(start, lr, mom=b1, hess_mom=b2, rho=rho, eps=eps, wd=weight_decay)
    p = start.clone().requires_grad_()
    opt = SophiaRef([p], lr=lr, weight_decay=weight_decay, batch_size=float(bs), dialect="fastxtend")
    theta_port, biggest = start.clone(), float(start.abs().max())
    for t, g in enumerate(grads, start=1):
        theta_port = port.step(theta_port, g, bs)
        p.grad = g.clone()
        opt.step(hessian_estimate=[torch.ones(N, dtype=F64)])  # ignored: refresh="never"
        assert bool((port.grad_avg.abs() > 1e3 * eps).all())
        assert not opt.diagnostics.refreshed and opt.diagnostics.sign_steps == N
        biggest = max(biggest, float(theta_port.abs().max()), float(p.detach().abs().max()))
        if weight_decay == 0.0:
            assert torch.equal(p.detach(), theta_port), t  # theta + (-lr sign(m)) * 1: one exact product, one sum
        else:
            assert _within_rounding_bound(p.detach(), theta_port, t, lr, weight_decay, biggest), t
    assert torch.equal(opt.state[p]["h"], torch.zeros(N, dtype=F64)) and torch.equal(port.hessian, opt.state[p]["h"])
    assert opt.state[p]["refreshes"] == 0


def test_the_weight_decay_bound_is_not_vacuous():
    """The rounding bound of the decay tests is far below one step: a preset that decayed the
    post-step theta instead (weight_decay_form="after") breaks it within 30 steps."""
    from dataclasses import replace

    from sophia_ref.dialects import _preset

    after = _preset("levanter_after", replace(LEVANTER.knobs, weight_decay_form="after"), LEVANTER.defaults,
                    LEVANTER.estimator, LEVANTER.summary)
    start, grads, curvature = _data(seed=1)
    lr, lam = 0.05, 0.1
    port = LevanterSophiaH(start, lr, weight_decay=lam)
    p = start.clone().requires_grad_()
    opt = SophiaRef([p], lr=lr, weight_decay=lam, dialect=after)
    theta_port, held = start.clone(), True
    for t, g in enumerate(grads, start=1):
        theta_port = port.step(theta_port, g, lambda theta: curvature)
        p.grad = g.clone()
        opt.step(hessian_estimate=[curvature] if t > 1 and (t - 1) % 10 == 0 else None)
        held = held and _within_rounding_bound(p.detach(), theta_port, t, lr, lam, 10.0)
    assert not held
