"""The named dialects and the exact v1 <-> v4 (rho form <-> gamma form) conversion."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from sophia_ref import DIALECTS, SophiaRef, get_dialect, rule, v1_to_v4, v4_to_v1
from sophia_ref.dialects import OFFICIAL, OPTAX, PAPER, PAPER_V1, PYTORCH_OPTIMIZER


def test_every_required_preset_exists_and_documents_its_departures():
    for name in ("paper", "paper_v1", "official", "optax", "pytorch_optimizer"):
        d = get_dialect(name)
        assert d.name == name and d.__doc__.startswith(f"{name}: ")
        assert len(d.departures) >= (0 if name == "paper" else 1)
    assert PAPER.knobs == rule.Knobs() and "none: this is the paper" in PAPER.__doc__


def test_presets_encode_the_spec_table():
    """SPEC section 5, as knob values (the conformance tool checks the same claims against the packages)."""
    assert (OFFICIAL.knobs.eps_placement, OFFICIAL.knobs.clip_form, OFFICIAL.knobs.batch_factor,
            OFFICIAL.knobs.refresh, OFFICIAL.defaults["eps"]) == ("add", "sign_min", "step", "caller", 1e-15)
    assert (OPTAX.knobs.bias_correction, OPTAX.knobs.refresh, OPTAX.defaults["eps"]) == (True, "next_step", 1e-8)
    assert (PYTORCH_OPTIMIZER.knobs.form, PYTORCH_OPTIMIZER.defaults["eps"]) == ("rho", 1e-12)
    assert DIALECTS["sophia_optimizer"].knobs.momentum_updates == 2
    assert [d.name for d in DIALECTS.values() if not d.knobs.clip_bounded] == ["official", "sophia_optimizer"]


def test_unknown_dialect_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"dialect='sophia' is not valid; accepted values: 'paper', 'paper_v1'"):
        get_dialect("sophia")


@given(st.floats(1e-6, 10.0), st.floats(1e-4, 1.0), st.just(0.0) | st.floats(1e-300, 1e-3), st.floats(0.0, 1.0))
def test_conversion_round_trips(lr, rho, eps, lam):
    """v4_to_v1(v1_to_v4(x)) == x up to the two roundings of each multiply-then-divide (2 ulps).

    Normal numbers only: a subnormal rho * eps keeps fewer bits, and no ulp bound holds there.
    """
    back = v4_to_v1(**v1_to_v4(lr, rho, eps, lam))
    for key, value in dict(lr=lr, rho=rho, eps=eps, weight_decay=lam).items():
        assert abs(back[key] - value) <= 2 * math.ulp(value)


def _quadratic_with_ripple(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    a = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    center = torch.randn(n, dtype=torch.float64, generator=gen)
    start = torch.randn(n, dtype=torch.float64, generator=gen)

    def grad_and_diag(theta):  # L = (theta - c)^T A (theta - c) / 2 + 0.1 sum sin(3 theta): non-convex ripples
        return a @ (theta - center) + 0.3 * torch.cos(3 * theta), torch.diag(a) - 0.9 * torch.sin(3 * theta)

    return start, grad_and_diag


def _forms(lr, rho, eps, lam):
    v4 = v1_to_v4(lr, rho, eps, lam)
    hyper_v1 = rule.Hyper(lr=lr, beta1=0.9, beta2=0.99, gamma=rho, eps=eps, weight_decay=lam, hessian_interval=3)
    hyper_v4 = rule.Hyper(lr=v4["lr"], beta1=0.9, beta2=0.99, gamma=v4["gamma"], eps=v4["eps"],
                          weight_decay=v4["weight_decay"], hessian_interval=3)
    return hyper_v1, hyper_v4


@pytest.mark.parametrize("rho", [0.5, 0.125, 2.0 ** -6])
def test_v1_and_v4_trajectories_are_bit_identical_when_the_conversion_is_exact(rho):
    """With rho a power of two, eta rho, rho h, rho eps and lam / rho are exact: 300 free-running
    steps of both forms (non-convex problem, refresh every 3 steps) agree bit for bit."""
    start, grad_and_diag = _quadratic_with_ripple(30, seed=1)
    hyper_v1, hyper_v4 = _forms(0.3, rho, 1e-12, 0.1)
    runs = []
    for dialect, hyper in ((PAPER_V1, hyper_v1), (PAPER, hyper_v4)):
        theta, state, path = start.clone(), rule.init(start), []
        for _ in range(300):
            g, hhat = grad_and_diag(theta)
            state, delta, _ = rule.update(state, theta, g, hyper, dialect.knobs, hhat)
            theta = theta + delta
            path.append(theta)
        runs.append(torch.stack(path))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("rho", [0.01, 0.03, 0.05, 0.07, 0.3])
@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_v1_and_v4_steps_agree_to_an_ulp_at_operand_scale(rho, lam):
    """For any rho: from the same state (teacher-forced along a 500-step trajectory), one step of
    each form gives parameters within 2 ulps of max(|theta_t|, |theta_t+1|, eta') per coordinate.

    The forms differ by the roundings of eta rho, rho h, rho eps, lam / rho: at most
    about 6 U |delta| between the deltas. The final sum theta + delta rounds each to
    within half an ulp, so they land on the same or a neighbouring float unless the
    delta difference straddles a rounding boundary; measured maximum over these cases:
    2 ulps (1 in most), so 2 is the bound, never 1 plus slack.
    """
    start, grad_and_diag = _quadratic_with_ripple(50, seed=0)
    hyper_v1, hyper_v4 = _forms(0.3, rho, 1e-12, lam)
    theta, state = start.clone(), rule.init(start)
    worst = 0.0
    for _ in range(500):
        g, hhat = grad_and_diag(theta)
        _, delta_v1, _ = rule.update(state, theta, g, hyper_v1, PAPER_V1.knobs, hhat)
        state, delta_v4, _ = rule.update(state, theta, g, hyper_v4, PAPER.knobs, hhat)
        new_v1, new_v4 = theta + delta_v1, theta + delta_v4
        scale = torch.maximum(torch.maximum(theta.abs(), new_v4.abs()), torch.tensor(hyper_v4.lr, dtype=torch.float64))
        ulps = (new_v1 - new_v4).abs() / (torch.nextafter(scale, torch.tensor(math.inf, dtype=torch.float64)) - scale)
        worst = max(worst, float(ulps.max()))
        theta = new_v4
    assert worst <= 2.0


def test_sophiaref_takes_rho_in_the_rho_form_only():
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = SophiaRef([p], lr=0.1, dialect="pytorch_optimizer", rho=0.02)
    assert opt.param_groups[0]["gamma"] == 0.02
    with pytest.raises(ValueError, match=r"rho=0.02 is the clip threshold of the rho form, but dialect 'paper'"):
        SophiaRef([p], lr=0.1, rho=0.02)
    with pytest.raises(ValueError, match=r"gamma=0.1 and rho=0.02 were both given"):
        SophiaRef([p], lr=0.1, dialect="paper_v1", gamma=0.1, rho=0.02)
