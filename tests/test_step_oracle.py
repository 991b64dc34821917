"""One step of the reference (``sophia_ref.rule.update``) against the exact-rational oracle
(``verification/oracles/step.py``, measured by ``verification/oracles/step_distance.py``, paired
by ``verification/checks/step.py``), for every dialect and for ``paper`` with each knob value no
preset uses, boundaries drawn on purpose; and unit tests of the oracle itself on hand-computed
cases, so that it is not merely trusted.

How a coordinate is measured
    The oracle evaluates the rule exactly (Fractions) with the float inputs and float
    hyperparameters read as the rationals they denote, and rounds each result once. The
    reference rounds every operation (b1 m, (1 - b1) g, their sum, gamma B, scale h, + eps,
    m / d, eta u, eta lam, (eta lam) theta, the difference, theta + delta; and 1 - b1,
    1 - b2, b1^t, 1 - b1^t, m / (1 - b1^t) where they apply), so its distance to the exact
    value is a sum of up to ~20 roundings (the path's ``roundings`` count n), each at most
    U = 2^-53 times the magnitude it rounds, weighted by how that error reaches the result.
    Three scales, all exact rationals from the oracle:

    - the result's own ulp: meaningful only where nothing cancels;
    - the largest-operand scale S ("operand scale"): the largest weighted magnitude rounded
      on the path, i.e. ulps of the largest operand of the final operation(s), carried through
      the chain. It is what makes cancelling coordinates measurable: delta = -a - s with
      a ~ -s (decay against step), theta + delta ~ 0, m_t = b1 m + (1 - b1) g with the terms
      nearly opposite, and everything downstream of such an m (u = m/d, eta u, delta, theta).
      There the result's own ulps are meaningless: operand roundings of half an ulp of the
      *operand* survive the cancellation, up to ~1e16 ulps of the result.
    - the first-order error magnitude mu: the same weighted magnitudes summed, so that
      |float - exact| <= U mu to first order (running error analysis), and mu <= n S.

    Asserted for every measured coordinate: (1) |ref - exact| <= U mu (2^-16 relative room
    for second-order terms); (2) the distance to the correctly rounded value is at most 2
    ulps of max(|exact|, mu) (theory: at most 1 + 1/2); (3) a quantity with at most one
    rounding on its path is correctly rounded, bit for bit.

Measured (seeded runs of 300 and 3000 states through the 8 presets of this writing and the 7
derived dialects; the hypothesis runs stay within the same). At the mu scale the worst is 1 ulp
in every dialect and quantity, and no coordinate is outside U mu. At the largest-operand scale
(the plain reading of "within 2 ulps at operand scale") the worst is 3 ulps, and 4 to 5 in
sophia_optimizer, NOT 2:

    quantity   roundings n      worst (300 / 3000 seeded)   why above 1 ulp
               (above 1 ulp)
    m_t        4-8              2 / 2                       two momentum updates (sophia_optimizer),
                                                            1 - b1 itself rounded (b1 < 0.5),
                                                            subnormal intermediates (error 2^-1075 each)
    h_t        4                2 / 2                       refresh with 1 - b2 rounded (b2 < 0.5)
    u          3-16             4 / 4                       m's roundings, gamma B, scale h (+ eps),
                                                            the quotient; 1 - b1^t and m / (1 - b1^t),
                                                            1 - b2^n and h / (1 - b2^n)
    delta      3-24             5 / 5                       u's, eta u, eta lam, (eta lam) theta (or
                                                            (eta lam)(theta - eta u)), the difference
    theta'     5-25             4.75 / 4.75                 delta's and the sum

Every coordinate above 1 ulp there has at least 3 roundings on its path; most (about 3/4) have
S > |v| (cancellation: decay against step, theta + delta ~ 0, b1 m against (1 - b1) g) or a
rounding in the subnormal range upstream; the rest are plain accumulations, e.g. paper with
b1 = 0.3, m = 0, g = h: u = fl(fl(fl(1 - b1) g) / h) carries the systematic ~0.7 U error of
fl(1 - 0.3) plus two roundings, delta = -fl(eta u) one more: 3 ulps of delta, 0.375 ulp at the
mu scale. With n roundings of at most U S < 1 ulp(S) each, the rigorous bound at the largest-
operand scale is n + 1/2 ulps: "2 ulps of the largest operand" is not a property a float64
evaluation of this rule can promise; the mu scale is the one with a theorem behind 2 ulps.

Skipped, and counted: coordinates where the reference overflows to inf (the exact value is
beyond the float range too: e.g. the official ascent m / d with m ~ 1e300 and d ~ -1e-15),
and singular ones, where the float denominator d may be 0 or of the other sign (its first-order
error exceeds 2^-20 |d|: ``scale h`` within a few roundings of ``-eps`` in the added-eps form,
or ``m / 0`` with an inexact m): no ulp measure exists there. One such case is worth knowing:
in the added-eps form with eps = 0 and a tiny h < 0, fl(scale h) underflows to -0.0, the
reference's d is +0.0 and its step is the bounded sign(m) c, where the exact rule's d < 0 gives
an ascent m / d beyond the float range (e.g. official, gamma = 0.01, h = -5e-324, m = 1).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from sophia_ref import rule
from sophia_ref.dialects import DIALECTS, OFFICIAL, OPTAX, PAPER, PAPER_V1, SOPHIA_OPTIMIZER
from verification.checks import step as check
from verification.oracles import step as oracle
from verification.oracles import step_distance as distance
from verification.report import CheckResult

F = Fraction
DIALECT_LIST = list(DIALECTS.values())
DERIVED = check.derived_dialects()


def knobs_of(dialect) -> dict:
    return dataclasses.asdict(dialect.knobs)


# -- unit tests of the oracle on hand-computed cases ----------------------------------------------------------

def test_sign_step_where_curvature_is_flat():
    """paper, h = 0, eps = 1e-12, m_t = g = 3: u = clip(3 / 1e-12, 1) = 1, delta = -eta, theta' = theta - eta."""
    hyper = dict(lr=0.5, beta1=0.0, beta2=0.0, gamma=0.01, eps=1e-12, hessian_interval=2)
    x = oracle.exact_step(knobs_of(PAPER), hyper, 1, m=[0.0], h=[0.0], theta=[1.0], g=[3.0])
    assert (x.t, x.refreshed) == (2, False)
    assert x.m == (3,) and x.d == (F(1e-12),) and x.u == (1,) and x.delta == (F(-1, 2),) and x.theta == (F(1, 2),)
    assert x.bounds["u"] == (0,) and x.bounds["delta"] == (0,)     # past the clip by far: the float step is exact
    assert x.rounded().delta == (-0.5,)


def test_official_ascent_step_where_the_denominator_is_negative():
    """official: d = gamma B h + eps = 0.5 * 4 * (-1) + 2^-10 = -2047/1024 < 0, so
    u = sign(m) min(|m| / d, 1) = 3 / d = -3072/2047: the step climbs by eta * 3072/2047 > eta.
    The paper's rule on the same state floors d at eps and takes the descent sign step -eta."""
    hyper = dict(lr=0.25, beta1=0.0, beta2=0.0, gamma=0.5, eps=2.0**-10, batch_size=4.0, hessian_interval=10)
    x = oracle.exact_step(knobs_of(OFFICIAL), hyper, 1, m=[0.0], h=[-1.0], theta=[0.0], g=[3.0])
    assert x.d == (F(-2047, 1024),) and x.u == (F(-3072, 2047),) and x.delta == (F(768, 2047),)
    assert x.delta[0] > F(1, 4)
    p = oracle.exact_step(knobs_of(PAPER), hyper, 1, m=[0.0], h=[-1.0], theta=[0.0], g=[3.0], hhat=[-1.0])
    assert p.refreshed is False and p.d == (F(2.0**-10),) and p.u == (1,) and p.delta == (F(-1, 4),)
    # the reference agrees, correctly rounded
    ref = check.reference_step(OFFICIAL.knobs, hyper, 1, [0.0], [-1.0], [0.0], [3.0], None)
    assert ref["delta"] == [float(F(768, 2047))]


def test_bias_correction_at_t1_and_t2_and_the_next_step_phase():
    """optax: b1 = 0.75, m_t = 0.75 * 4 + 0.25 * 2 = 3.5, 1 - b1^1 = 1/4, m_used = 14.
    t = 1 refreshes (k = 10): h_t = 0.5 * 56 + 0.5 * 8 = 32, but the step divides the pre-refresh
    h = 56: d = 0.5 * 56 = 28, u = 14 / 28 = 1/2. The immediate phase divides 32: u = 14/16 = 7/8.
    At t = 2: 1 - 0.75^2 = 7/16, m_used = 3.5 * 16/7 = 8."""
    hyper = dict(lr=1.0, beta1=0.75, beta2=0.5, gamma=0.5, eps=1e-8, hessian_interval=10)
    args = dict(m=[4.0], h=[56.0], theta=[0.0], g=[2.0], hhat=[8.0])
    x = oracle.exact_step(knobs_of(OPTAX), hyper, 0, **args)
    assert x.refreshed and x.m == (F(7, 2),) and x.m_used == (14,) and x.h == (32,) and x.h_used == (56,)
    assert x.u == (F(1, 2),) and x.delta == (F(-1, 2),)
    y = oracle.exact_step({**knobs_of(OPTAX), "refresh": "immediate"}, hyper, 0, **args)
    assert y.h_used == (32,) and y.u == (F(7, 8),)
    z = oracle.exact_step(knobs_of(OPTAX), hyper, 1, **args)       # t = 2: no refresh, bias 7/16
    assert not z.refreshed and z.h == (56,) and z.m_used == (8,) and z.u == (F(8, 28),)


def test_refresh_phases():
    """(t - 1) mod k == 0 refreshes in the immediate and next_step phases (t = 1, 4, 7 for k = 3); the caller
    phase refreshes exactly when given an estimate. A refreshed h is b2 h + (1 - b2) hhat = (2 + 6) / 2 = 4."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.5, gamma=1.0, eps=0.0, hessian_interval=3)
    for phase in ("immediate", "next_step"):
        got = [oracle.exact_step({"refresh": phase}, hyper, s, [1.0], [2.0], [0.0], [1.0], [6.0]).refreshed
               for s in range(7)]
        assert got == [True, False, False, True, False, False, True]
        x = oracle.exact_step({"refresh": phase}, hyper, 3, [1.0], [2.0], [0.0], [1.0], [6.0])
        assert x.h == (4,) and x.h_used == ((2,) if phase == "next_step" else (4,))
        assert oracle.exact_step({"refresh": phase}, hyper, 4, [1.0], [2.0], [0.0], [1.0], [6.0]).h == (2,)
        with pytest.raises(ValueError, match=r"step 4 refreshes the Hessian estimate \(k=3\)"):
            oracle.exact_step({"refresh": phase}, hyper, 3, [1.0], [2.0], [0.0], [1.0])
    for s in range(4):
        assert oracle.exact_step({"refresh": "caller"}, hyper, s, [1.0], [2.0], [0.0], [1.0], [6.0]).h == (4,)
        assert oracle.exact_step({"refresh": "caller"}, hyper, s, [1.0], [2.0], [0.0], [1.0]).h == (2,)
    for s in range(7):   # the reference has the same phases
        for d in (PAPER, OPTAX, OFFICIAL):
            assert rule.is_refresh_step(s + 1, 3, d.knobs, True) == oracle.is_refresh(s + 1, 3, d.knobs.refresh, True)


def test_zero_momentum_never_moves_and_m_over_zero_is_a_full_step():
    """eps = 0, h = 0: d = 0. m = 0 gives u = 0 (0/0 read as 0); m = +-2 gives u = +-c: c = 1 in the gamma form,
    c = rho = 0.25 in the rho form, and sign(m) * 1 in the official sign_min form."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.0, gamma=0.25, eps=0.0, hessian_interval=2)
    for dialect, c in ((PAPER, 1), (PAPER_V1, F(1, 4)), (OFFICIAL, 1), (SOPHIA_OPTIMIZER, 1)):
        x = oracle.exact_step(knobs_of(dialect), hyper, 1, [0.0] * 3, [0.0, -0.0, 0.0], [0.0] * 3, [0.0, 2.0, -2.0],
                              hhat=[0.0, -0.0, 0.0])
        assert x.d == (0, 0, 0) and x.u == (0, c, -c), dialect.name
        assert all(b == 0 for b in x.bounds["u"])


def test_rho_form_with_the_batch_factor_at_step_time():
    """rho form, B at step time: d = max(B h, eps) = 4, c = rho = 1/2: m = 1 gives 1/4 (unclipped), m = 3
    gives 3/4 clipped to 1/2."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.0, gamma=0.5, eps=0.0, batch_size=4.0, hessian_interval=2)
    x = oracle.exact_step({"form": "rho", "batch_factor": "step"}, hyper, 1, [0.0, 0.0], [1.0, 1.0], [0.0, 0.0],
                          [1.0, 3.0])
    assert x.c == F(1, 2) and x.d == (4, 4) and x.u == (F(1, 4), F(1, 2))


def test_two_momentum_updates_and_weight_decay():
    """b1 = 1/2, m = 8, g = 4: m1 = 6, m2 = 5. lam = 1/4, eta = 1/2, theta = 2, unclipped u = 5/10:
    delta = -(1/2)(1/4)(2) - (1/2)(1/2) = -1/2, theta' = 3/2."""
    hyper = dict(lr=0.5, beta1=0.5, beta2=0.0, gamma=1.0, eps=0.0, weight_decay=0.25, hessian_interval=2)
    x = oracle.exact_step({"momentum_updates": 2}, hyper, 1, [8.0], [10.0], [2.0], [4.0])
    assert x.m == (5,) and x.u == (F(1, 2),) and x.decay == (F(1, 4),) and x.delta == (F(-1, 2),)
    assert x.theta == (F(3, 2),)


def test_gamma_h_equal_to_eps_and_m_equal_to_gamma_h():
    """gamma = 2^-3, eps = 2^-30, h = eps / gamma exactly: max(gamma h, eps) = eps = gamma h + 0 (no kink
    ambiguity), and with m = g = gamma h = eps the ratio is exactly 1: u = 1 in every form of the paper's."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.0, gamma=0.125, eps=2.0**-30, hessian_interval=2)
    h = 2.0**-30 / 0.125
    x = oracle.exact_step(knobs_of(PAPER), hyper, 1, [0.0], [h], [0.0], [2.0**-30])
    assert x.d == (F(2.0**-30),) and x.u == (1,)
    ref = check.reference_step(PAPER.knobs, hyper, 1, [0.0], [h], [0.0], [2.0**-30], None)
    assert ref["u"] == [1.0] and ref["delta"] == [-1.0]


def test_error_scales_on_a_cancelling_momentum():
    """b1 = 0.9 (1 - b1 = 1 - fl(0.9) is a float: exact), m = 1.1, g = -9.9: b1 m and (1 - b1) g both round
    and nearly cancel. S = max(|b1 m|, |(1 - b1) g|), mu = |b1 m| + |(1 - b1) g| + |m_t|, three roundings.
    The reference's m_t is ~9e14 of its own ulps from the exact value, 0.4 ulp of the largest operand,
    and within U mu."""
    hyper = dict(lr=1.0, beta1=0.9, beta2=0.0, gamma=1.0, eps=1e-12, hessian_interval=2)
    x = oracle.exact_step({}, hyper, 1, [1.1], [1.0], [0.0], [-9.9])
    a, b = F(0.9) * F(1.1), (1 - F(0.9)) * F(-9.9)
    assert x.m == (a + b,) and oracle.is_float64(1 - F(0.9))
    assert x.scales["m"] == (max(abs(a), abs(b)),) and x.bounds["m"] == (abs(a) + abs(b) + abs(a + b),)
    assert x.roundings["m"] == (3,)
    ref = check.reference_step(PAPER.knobs, hyper, 1, [1.1], [1.0], [0.0], [-9.9], None)["m"][0]
    assert distance.within_first_order_bound(ref, x.m[0], x.bounds["m"][0])
    assert distance.distance_ulps(ref, x.m[0]) > 1e14 and distance.distance_ulps(ref, x.m[0], x.scales["m"][0]) <= 1


def paper_with(**knob) -> dict:
    return {**knobs_of(PAPER), **knob}


def agrees(knobs: dict, hyper: dict, step: int, m, h, theta, g, hhat=None, refreshes: int = 0) -> dict:
    """The reference's step (knobs as rule.Knobs) equals the correctly rounded oracle, and counts refreshes
    like it; returns the reference's step."""
    x = oracle.exact_step(knobs, hyper, step, m, h, theta, g, hhat, refreshes).rounded()
    ref = check.reference_step(rule.Knobs(**knobs), hyper, step, m, h, theta, g, hhat, refreshes)
    assert {q: ref[q] for q in oracle.QUANTITIES} == {q: list(getattr(x, q)) for q in oracle.QUANTITIES}
    assert ref["refreshes"] == x.refreshes
    return ref


def test_h_bias_correction_steps_divides_by_one_minus_b2_to_the_t():
    """t = 2 (no refresh, k = 10), b2 = 1/2: the step divides h = 3 by 1 - 1/4: h_div = 4, d = (1/2) 4 = 2,
    u = 1 / 2. The stored h stays 3; without the correction u = 1 / (3/2) = 2/3."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.5, gamma=0.5, eps=1e-12, hessian_interval=10)
    knobs = paper_with(h_bias_correction="steps")
    x = oracle.exact_step(knobs, hyper, 1, [0.0], [3.0], [0.0], [1.0])
    assert (x.refreshed, x.h_power) == (False, 2)
    assert x.h == (3,) and x.h_used == (3,) and x.h_div == (4,) and x.d == (2,) and x.u == (F(1, 2),)
    assert oracle.exact_step(knobs_of(PAPER), hyper, 1, [0.0], [3.0], [0.0], [1.0]).u == (F(2, 3),)
    assert agrees(knobs, hyper, 1, [0.0], [3.0], [0.0], [1.0])["u"] == [0.5]


def test_h_bias_correction_refreshes_counts_the_refreshes_folded_into_the_h_used():
    """b2 = 1/2, k = 1, gamma = 1/2, g = 2 (b1 = 0). Immediate phase, t = 1, r = 0: the refresh makes
    h = (1/2) 8 = 4 and r_t = 1, so h_div = 4 / (1 - 1/2) = 8 (the estimate itself), d = 4, u = 1/2.
    next_step phase, same state: the step divides the pre-refresh h = 0 with n = r = 0 (no correction):
    d = eps, a sign step. next_step with r = 1, h = 4: h_t = 6, the step divides 4 / (1 - 1/2) = 8.
    No refresh (k = 10, t = 2) with r = 0: n = 0, h = 5 undivided."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.5, gamma=0.5, eps=1e-12, hessian_interval=1)
    immediate = paper_with(h_bias_correction="refreshes")
    x = oracle.exact_step(immediate, hyper, 0, [0.0], [0.0], [0.0], [2.0], [8.0])
    assert (x.refreshed, x.refreshes, x.h_power) == (True, 1, 1)
    assert x.h == (4,) and x.h_div == (8,) and x.d == (4,) and x.u == (F(1, 2),)
    nxt = paper_with(h_bias_correction="refreshes", refresh="next_step")
    y = oracle.exact_step(nxt, hyper, 0, [0.0], [0.0], [0.0], [2.0], [8.0])
    assert (y.refreshes, y.h_power) == (1, 0) and y.h_div == (0,) and y.d == (F(1e-12),) and y.u == (1,)
    z = oracle.exact_step(nxt, hyper, 1, [0.0], [4.0], [0.0], [2.0], [8.0], refreshes=1)
    assert (z.refreshes, z.h_power) == (2, 1) and z.h == (6,) and z.h_used == (4,) and z.h_div == (8,)
    w = oracle.exact_step(immediate, {**hyper, "hessian_interval": 10}, 1, [0.0], [5.0], [0.0], [2.0])
    assert (w.refreshed, w.refreshes, w.h_power) == (False, 0, 0) and w.h_div == (5,)
    with pytest.raises(ValueError, match="refreshes=-1 is not valid"):
        oracle.exact_step(immediate, hyper, 0, [0.0], [0.0], [0.0], [2.0], [8.0], refreshes=-1)
    agrees(immediate, hyper, 0, [0.0], [0.0], [0.0], [2.0], [8.0])
    agrees(nxt, hyper, 0, [0.0], [0.0], [0.0], [2.0], [8.0])
    assert agrees(nxt, hyper, 1, [0.0], [4.0], [0.0], [2.0], [8.0], refreshes=1)["refreshes"] == 2


@pytest.mark.parametrize("clamp, h_t", [("none", -2), ("zero", 1), ("abs", 4)])
def test_estimate_clamp_before_the_moving_average(clamp, h_t):
    """b2 = 1/2, h = 2, hhat = -6: h_t = 1 + (1/2) e with e = -6 (none), max(-6, 0) = 0 (zero), |-6| = 6 (abs).
    A positive estimate is left alone by every clamp."""
    hyper = dict(lr=1.0, beta1=0.0, beta2=0.5, gamma=1.0, eps=1e-12, hessian_interval=1)
    knobs = paper_with(estimate_clamp=clamp)
    assert oracle.exact_step(knobs, hyper, 0, [0.0], [2.0], [0.0], [1.0], [-6.0]).h == (h_t,)
    assert oracle.exact_step(knobs, hyper, 0, [0.0], [2.0], [0.0], [1.0], [6.0]).h == (4,)
    assert agrees(knobs, hyper, 0, [0.0], [2.0], [0.0], [1.0], [-6.0])["h"] == [float(h_t)]


def test_weight_decay_after_the_clipped_step():
    """theta = 2, eta = 1/2, lam = 1/4, u = 1/2 (m = g = 1, h = 2, gamma = 1): theta' = (2 - 1/4)(1 - 1/8)
    = 49/32, delta = -15/32, decay = (1/8)(7/4) = 7/32. Before the step (the paper): delta = -1/4 - 1/4 = -1/2."""
    hyper = dict(lr=0.5, beta1=0.0, beta2=0.0, gamma=1.0, eps=1e-12, weight_decay=0.25, hessian_interval=2)
    knobs = paper_with(weight_decay_form="after")
    x = oracle.exact_step(knobs, hyper, 1, [0.0], [2.0], [2.0], [1.0])
    assert x.u == (F(1, 2),) and x.theta == (F(49, 32),) and x.delta == (F(-15, 32),) and x.decay == (F(7, 32),)
    assert oracle.exact_step(knobs_of(PAPER), hyper, 1, [0.0], [2.0], [2.0], [1.0]).delta == (F(-1, 2),)
    assert agrees(knobs, hyper, 1, [0.0], [2.0], [2.0], [1.0])["delta"] == [-15 / 32]


def test_weight_decay_coupled_into_the_gradient():
    """g = 1, lam = 1/4, theta = 2: the momentum absorbs g + lam theta = 3/2; b1 = 1/2, m = 1: m_t = 5/4;
    h = 5, gamma = 1: u = 1/4; eta = 1: delta = -1/4 (no decoupled term), theta' = 7/4."""
    hyper = dict(lr=1.0, beta1=0.5, beta2=0.0, gamma=1.0, eps=1e-12, weight_decay=0.25, hessian_interval=2)
    knobs = paper_with(weight_decay_form="coupled")
    x = oracle.exact_step(knobs, hyper, 1, [1.0], [5.0], [2.0], [1.0])
    assert x.g_used == (F(3, 2),) and x.m == (F(5, 4),) and x.u == (F(1, 4),)
    assert x.decay == (0,) and x.delta == (F(-1, 4),) and x.theta == (F(7, 4),)
    assert agrees(knobs, hyper, 1, [1.0], [5.0], [2.0], [1.0])["theta"] == [1.75]


def test_refresh_never_ignores_the_estimates():
    """k = 1 would refresh every step; "never" keeps h = 0 and the refresh count, with or without an
    estimate: d = eps and every step is a sign step (g = 3: u = 1, delta = -eta)."""
    hyper = dict(lr=0.5, beta1=0.0, beta2=0.5, gamma=1.0, eps=1e-12, hessian_interval=1)
    knobs = paper_with(refresh="never")
    for hhat in ([5.0], None):
        x = oracle.exact_step(knobs, hyper, 0, [0.0], [0.0], [0.0], [3.0], hhat, refreshes=3)
        assert (x.refreshed, x.refreshes) == (False, 3) and x.h == (0,) and x.u == (1,) and x.delta == (F(-1, 2),)
        assert not oracle.is_refresh(1, 1, "never", hhat is not None)
        assert agrees(knobs, hyper, 0, [0.0], [0.0], [0.0], [3.0], hhat, refreshes=3)["h"] == [0.0]


def test_float64_helpers():
    """Correct rounding (ties to even, also among subnormals), overflow to inf, ulps, float64 membership."""
    assert oracle.round_fraction(F(3, 2**1075)) == 2.0**-1073          # 1.5 * 2^-1074: tie, to even
    assert oracle.round_fraction(F(1, 2**1075)) == 0.0                  # 0.5 * 2^-1074: tie, to even (0)
    assert oracle.round_fraction(F(1, 3)) == 1 / 3 and oracle.round_fraction(-F(2) ** 1024) == -math.inf
    assert oracle.round_fraction(F(2**53 + 1)) == 2.0**53               # tie to even
    assert oracle.ulp_of(F(1)) == F(1, 2**52) and oracle.ulp_of(F(3)) == F(1, 2**51)
    assert oracle.ulp_of(F(1, 2**1074)) == oracle.ulp_of(F(1, 2**1022)) == F(1, 2**1074)
    assert oracle.is_float64(F(0.1)) and not oracle.is_float64(F(1, 10)) and oracle.is_float64(F(5e-324))
    assert not oracle.is_float64(F(1, 2**1075)) and not oracle.is_float64(F(2) ** 1024)
    assert oracle.is_float64(F(2**53)) and not oracle.is_float64(F(2**53 + 1))


def test_knobs_and_hyper_as_plain_data_or_objects():
    """A dict, the reference's dataclasses and any object with the fields give the same step."""
    hyper = rule.Hyper(lr=0.1, beta1=0.9, beta2=0.99, gamma=0.04, eps=1e-15, weight_decay=0.1, hessian_interval=3,
                       batch_size=5120.0)
    args = (4, [0.3, -2.0], [1e-3, -1e-3], [1.0, 2.0], [0.5, -0.5], [0.1, 0.2])
    a = oracle.exact_step(OFFICIAL.knobs, hyper, *args)
    b = oracle.exact_step(knobs_of(OFFICIAL), dataclasses.asdict(hyper), *args)
    c = oracle.exact_step(SimpleNamespace(**knobs_of(OFFICIAL)), SimpleNamespace(**dataclasses.asdict(hyper)), *args)
    assert a == b == c
    with pytest.raises(ValueError, match="clip_form='round' is not valid"):
        oracle.exact_step({"clip_form": "round"}, hyper, *args)
    with pytest.raises(ValueError, match="missing 'eps'"):
        oracle.exact_step({}, dict(lr=1.0, beta1=0.0, beta2=0.0, gamma=1.0), *args)


def test_the_oracle_core_imports_nothing_of_the_reference():
    """Independence: exact_step runs without sophia_ref or torch ever being imported."""
    code = ("import sys; from verification.oracles import step; "
            "step.exact_step({}, dict(lr=1.0, beta1=0.5, beta2=0.5, gamma=1.0, eps=0.0), 0, [1.0], [1.0], [1.0], "
            "[1.0], [1.0]); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('sophia_ref', 'torch')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- the reference against the oracle: hypothesis, every dialect ----------------------------------------------

TALLY = distance.Tally()   # every hypothesis example below is recorded here; test_recorded_maxima reports it

POWERS_OF_TWO = [2.0**-7, 0.25, 0.5, 1.0, 2.0]

hypers = st.fixed_dictionaries(dict(
    lr=st.sampled_from([1.0, 0.5, 1e-3, 6e-4]) | st.floats(1e-6, 1.0),
    beta1=st.sampled_from([0.0, 0.9, 0.96, 0.965, 0.5, 0.3]) | st.floats(0.0, 0.999),
    beta2=st.sampled_from([0.0, 0.99, 0.5, 0.999]) | st.floats(0.0, 0.999),
    gamma=st.sampled_from([0.01, 0.04, 0.05, *POWERS_OF_TWO]) | st.floats(1e-3, 10.0),
    eps=st.sampled_from([0.0, 1e-15, 1e-12, 1e-8, 2.0**-30, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.1, 0.2]) | st.floats(0.0, 0.5),
    hessian_interval=st.integers(1, 4),
    batch_size=st.sampled_from([1.0, 4.0, 480.0, 5120.0]),
))

MIN_NORMAL = 2.2250738585072014e-308
values = st.one_of(
    st.floats(-1e20, 1e20),                                           # includes 0, -0.0 and small values
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-310, -1e-310, MIN_NORMAL, 1e300, -1e300, 1.0, -1.0]),
    st.floats(-MIN_NORMAL, MIN_NORMAL),                               # subnormals
    st.floats(1e250, 1e300), st.floats(-1e300, -1e250),               # near overflow, products still finite
    st.floats(1e-300, 1e-250), st.floats(-1e-250, -1e-300),
)
positive = st.floats(1e-300, 1e300)
dyadic = st.builds(lambda k, e: k * 2.0**e, st.integers(1, 2**20), st.integers(-30, 30))  # s h stays exact


@st.composite
def coordinate(draw, hyper):
    """(m, h, theta, g, hhat) of one coordinate, its kind drawn: generic, h = +-0, h < 0, scale h = +-eps,
    |g| = scale h (+ eps: the clip boundary when b1 = 0), all subnormal, near overflow, zero momentum,
    g = -lam theta (the coupled weight decay cancels the gradient)."""
    kind = draw(st.sampled_from(["generic", "zero_h", "negative_h", "eps_boundary", "clip_boundary",
                                 "subnormal", "huge", "zero_m", "decay_balance"]))
    m, h, theta, g, hhat = (draw(values) for _ in range(5))
    gamma, B, eps = hyper["gamma"], hyper["batch_size"], hyper["eps"]
    s = draw(st.sampled_from([gamma, gamma * B, 1.0, B]))
    if kind == "zero_h":
        h, hhat = draw(st.sampled_from([0.0, -0.0])), draw(st.sampled_from([0.0, -0.0]) | values)
    elif kind == "negative_h":
        h, hhat = -draw(positive), -draw(positive)
    elif kind == "eps_boundary":
        h = hhat = draw(st.sampled_from([1.0, -1.0])) * (eps if eps > 0 else draw(st.sampled_from([0.0, 1e-12]))) / s
    elif kind == "clip_boundary":
        h = hhat = draw(dyadic)
        g = draw(st.sampled_from([1.0, -1.0])) * (s * h + draw(st.sampled_from([0.0, eps])))
    elif kind == "subnormal":
        m, h, theta, g, hhat = (draw(st.floats(-MIN_NORMAL, MIN_NORMAL)) for _ in range(5))
    elif kind == "huge":
        m, h, theta, g, hhat = (draw(st.floats(-1e300, 1e300)) for _ in range(5))
    elif kind == "zero_m":
        m, g = draw(st.sampled_from([0.0, -0.0])), draw(st.sampled_from([0.0, -0.0]))
    elif kind == "decay_balance":
        g = -hyper["weight_decay"] * theta
    return m, h, theta, g, hhat


@st.composite
def cases(draw, n_max: int = 6):
    hyper = draw(hypers)
    coords = draw(st.lists(coordinate(hyper), min_size=1, max_size=n_max))
    m, h, theta, g, hhat = (list(col) for col in zip(*coords))
    step = draw(st.integers(0, 20))
    return dict(hyper=hyper, step=step, m=m, h=h, theta=theta, g=g, hhat=hhat, give_estimate=draw(st.booleans()),
                refreshes=draw(st.sampled_from([-(-step // hyper["hessian_interval"]), 0]) | st.integers(0, 25)))


def measure(name: str, knobs, case) -> None:
    """One reference step against the oracle; every measured coordinate must satisfy (1)-(3) of the module
    docstring and the refresh count must be the rule's (compare_one returns what does not). Overflowing and
    singular coordinates are skipped and counted in TALLY."""
    failures = check.run_case(TALLY, name, knobs, case, bound=2.0)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dialect", DIALECT_LIST, ids=lambda d: d.name)
@settings(max_examples=500)
@given(cases())
def test_one_step_matches_the_exact_rule(dialect, case):
    """500 states per preset, up to 6 coordinates each, every boundary kind."""
    measure(dialect.name, dialect.knobs, case)


@pytest.mark.parametrize("name", list(DERIVED), ids=list(DERIVED))
@settings(max_examples=150)
@given(cases())
def test_one_step_matches_the_exact_rule_with_each_new_knob_value(name, case):
    """paper with one knob value no preset uses: 1050 states (150 each), refresh counts on and off schedule."""
    measure(name, DERIVED[name], case)


@pytest.mark.parametrize("dialect", DIALECT_LIST, ids=lambda d: d.name)
@settings(max_examples=60)
@given(hypers, st.lists(st.tuples(dyadic, st.sampled_from([1.0, -1.0])), min_size=1, max_size=4),
       st.sampled_from(POWERS_OF_TWO), st.sampled_from([1.0, 4.0]), st.integers(0, 20))
def test_clip_boundary_is_exact(dialect, hyper, coords, gamma, batch, step):
    """b1 = 0 (m_t = g exactly), gamma and B powers of two, eps = 0, h = hhat dyadic (so the refreshed h is h
    exactly and scale h is a float): |g| = scale h puts |m / d| exactly on the clip threshold c. The oracle
    says u = sign(g) c and the reference must return exactly that, with the step -eta sign(g) c."""
    hyper = {**hyper, "beta1": 0.0, "beta2": 0.0, "gamma": gamma, "batch_size": batch, "eps": 0.0,
             "weight_decay": 0.0}                                 # b2 = 0: a refreshed h is hhat = h exactly
    knobs = dialect.knobs
    scale = (gamma if knobs.form == "gamma" else 1.0) * (batch if knobs.batch_factor == "step" else 1.0)
    c = 1.0 if knobs.form == "gamma" else gamma
    h = [x for x, _ in coords]
    g = [sign * scale * c * x for x, sign in coords]                  # |m| = c d, d = scale h
    x = oracle.exact_step(knobs_of(dialect), hyper, step, [0.0] * len(h), h, [0.0] * len(h), g, h)
    assert x.u == tuple(F(c) * sign for _, sign in coords)
    ref = check.reference_step(knobs, hyper, step, [0.0] * len(h), h, [0.0] * len(h), g, h)
    assert ref["u"] == [c * sign for _, sign in coords]
    assert ref["delta"] == [oracle.round_fraction(d) for d in x.delta]


@pytest.mark.parametrize("dialect", [d for d in DIALECT_LIST if d.knobs.eps_placement == "max"], ids=lambda d: d.name)
@settings(max_examples=60)
@given(hypers, st.lists(values, min_size=1, max_size=4), st.sampled_from(POWERS_OF_TWO),
       st.sampled_from([1e-12, 2.0**-30, 1e-3]), st.sampled_from([1.0, 4.0]), st.integers(0, 20))
def test_curvature_equal_to_eps_is_a_single_rounding(dialect, hyper, gs, gamma, eps, batch, step):
    """b1 = b2 = 0, scale h == eps exactly (gamma and B powers of two, h = hhat = eps / scale): d = eps exactly
    and u = clip(g / eps, c) has one rounding (the quotient), so the reference must be correctly rounded."""
    hyper = {**hyper, "beta1": 0.0, "beta2": 0.0, "gamma": gamma, "eps": eps, "batch_size": batch,
             "weight_decay": 0.0}
    knobs = dialect.knobs
    scale = (gamma if knobs.form == "gamma" else 1.0) * (hyper["batch_size"] if knobs.batch_factor == "step" else 1.0)
    h = [eps / scale] * len(gs)
    assume(all(F(v) * F(scale) == F(eps) for v in h))
    x = oracle.exact_step(knobs_of(dialect), hyper, step, [0.0] * len(gs), h, [0.0] * len(gs), gs, h)
    assert x.d == (F(eps),) * len(gs)                                 # b1 = 0: 1 - 0^t = 1, no bias either
    ref = check.reference_step(knobs, hyper, step, [0.0] * len(gs), h, [0.0] * len(gs), gs, h)
    assert ref["u"] == [oracle.round_fraction(u) for u in x.u]


def test_recorded_maxima():
    """Report what the hypothesis tests above measured (run with -s to see it); the per-coordinate asserts
    already hold there, this checks the summary: worst <= 2 at the mu scale, nothing outside U mu."""
    if not TALLY.coordinates:
        pytest.skip("no hypothesis example ran in this session (test selection)")
    print(f"\nhypothesis: {TALLY.coordinates} coordinates, {TALLY.measured} measured; skipped {dict(TALLY.skipped)}")
    for name in [*DIALECTS, *DERIVED]:
        print(name, "| mu scale:", {q: TALLY.worst.get((name, q)) for q in oracle.QUANTITIES},
              "| largest operand:", {q: TALLY.worst_operand.get((name, q)) for q in oracle.QUANTITIES})
    print("\n".join(distance.summarize(TALLY.above_one, "1 ulp") + distance.summarize(TALLY.above_two, "2 ulp")))
    assert TALLY.overall() <= 2.0 and not TALLY.outside_bound
    assert not TALLY.not_correctly_rounded_with_one_rounding


# -- the seeded run behind `sophia-ref verify` ----------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded():
    return check.run_cases(300, 0)


def test_seeded_states_every_dialect(seeded):
    """300 states from random.Random(0) through every preset and every derived dialect (paper with one new
    knob value each; the `sophia-ref verify` default), measured with the presets of this writing (8):

    - mu scale: worst 1 ulp, every dialect and quantity (m_t, h_t, u, delta, theta + delta);
    - largest-operand scale: at most 2 in m_t and h_t, 3 in u, delta and theta except sophia_optimizer (two
      momentum updates: u 4, delta 5, theta 4.75 on paths of 16-20 roundings), always within the first-order
      bound n + 1/2 of the worst coordinate's path. Above 1 ulp there: m 22 coordinates (4-8 roundings), h 9
      (4), u 136 (4-16), delta 107 (6-19), theta 69 (8-20), about 3/4 with S > |v| (cancellation) and 1/4 to
      1/3 with a subnormal rounding upstream; above 2: u 6, delta 4, theta 6, all on paths of 7+ roundings.
      Skipped: 50 singular coordinates, 6 where the reference overflowed (ascent steps m / d of the
      sign_min dialects beyond the float range).
    """
    tally, failures = seeded
    assert not failures and not tally.outside_bound and not tally.not_correctly_rounded_with_one_rounding
    assert tally.overall() <= 1.0
    assert {name for name, _ in tally.worst} >= set(DIALECTS) | set(DERIVED)
    for key, w in tally.worst_operand.items():
        assert w <= tally.worst_roundings.get(key, 0) + 0.5, (key, w, tally.worst_case[key])
    for (q, (n, cancel, sub)), count in tally.above_one.items():
        assert n >= 3, (q, n)               # one or two roundings never reach 1 ulp of the largest operand
    assert tally.measured >= 0.99 * tally.coordinates


def test_check_step_oracle_row():
    """The CheckResult that `sophia-ref verify` prints (a short run)."""
    result = check.check_step_oracle(examples=30, seed=0)
    assert isinstance(result, CheckResult)
    assert (result.problem, result.check, result.bound, result.unit) == (
        "all dialects", "one step vs exact rationals", 2.0, "ulp")
    assert result.passed and result.worst <= 2.0
    assert any(note.startswith("worst at the largest-operand scale") for note in result.notes)
    assert result.row()[4] == "pass"


def test_rule_update_reference_matches_oracle_for_tensors_of_dialect_defaults():
    """The dialects' own default hyperparameters (official's eps = 1e-15 added, bs = 5120; optax's eps = 1e-8 ...),
    a few ordinary coordinates from a seeded torch generator: within the same criteria."""
    gen = torch.Generator().manual_seed(0)
    for dialect in DIALECT_LIST:
        dft = dialect.defaults
        hyper = dict(lr=6e-4, beta1=dft["betas"][0], beta2=dft["betas"][1], gamma=dft["gamma"], eps=dft["eps"],
                     weight_decay=dft["weight_decay"], hessian_interval=dft["hessian_interval"],
                     batch_size=dft["batch_size"])
        vec = lambda: torch.randn(16, dtype=torch.float64, generator=gen).tolist()
        case = dict(hyper=hyper, step=10, m=vec(), h=[abs(v) * 1e-3 for v in vec()], theta=vec(), g=vec(),
                    hhat=[v * 1e-4 for v in vec()], give_estimate=True)
        measure(dialect.name, dialect.knobs, case)
