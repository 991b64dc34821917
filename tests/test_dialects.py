"""The named dialects and the exact v1 <-> v4 (rho form <-> gamma form) conversion."""

from __future__ import annotations

import math
import unicodedata

import pytest
import torch
from hypothesis import given, strategies as st

from sophia_ref import DIALECTS, SophiaRef, get_dialect, rule, v1_to_v4, v4_to_v1
from sophia_ref import dialects
from sophia_ref.dialects import FASTXTEND, LEVANTER, OFFICIAL, OPTAX, PAPER, PAPER_V1, PYTORCH_OPTIMIZER


def test_every_required_preset_exists_and_documents_its_departures():
    for name in ("paper", "paper_v1", "official", "optax", "pytorch_optimizer", "levanter", "fastxtend"):
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
    assert [d.name for d in DIALECTS.values() if not d.knobs.clip_bounded] == ["official", "sophia_optimizer",
                                                                                "fastxtend"]
    assert (LEVANTER.knobs.bias_correction, LEVANTER.knobs.h_bias_correction, LEVANTER.knobs.refresh,
            LEVANTER.knobs.weight_decay_form, LEVANTER.defaults["eps"]) == (True, "none", "caller", "before", 1e-12)
    assert (FASTXTEND.knobs.refresh, FASTXTEND.knobs.eps_placement, FASTXTEND.knobs.clip_form,
            FASTXTEND.knobs.batch_factor, FASTXTEND.defaults["gamma"]) == ("never", "add", "sign_min", "step", 0.4)


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


@pytest.mark.parametrize("rho", [0.5, 2.0 ** -4])
@pytest.mark.parametrize("h", [0.0, -1.0, 1e-9])
def test_v1_and_v4_agree_where_eps_binds(rho, h):
    """h at or below eps (0, negative, tiny): v1 divides by eps, v4 by rho eps, and the two are one step
    only if v1_to_v4 scales eps by rho. |m| / eps <= 0.21 rho < rho keeps the clip from hiding eps."""
    eps = 1e-3
    hyper_v1, hyper_v4 = _forms(0.3, rho, eps, 0.0)
    grads = [torch.tensor([1e-4, -1e-4, 5e-5], dtype=torch.float64) * (rho * (1 + 0.1 * t)) for t in range(12)]
    runs = []
    for dialect, hyper in ((PAPER_V1, hyper_v1), (PAPER, hyper_v4)):
        theta, state, path = torch.zeros(3, dtype=torch.float64), rule.init(torch.zeros(3)), []
        for g in grads:
            state, delta, diag = rule.update(state, theta, g, hyper, dialect.knobs,
                                             torch.full((3,), h, dtype=torch.float64))
            assert diag.floored == 3 and diag.clipped == 0  # eps binds everywhere, the clip nowhere
            theta = theta + delta
            path.append(theta)
        runs.append(torch.stack(path))
    assert torch.equal(runs[0], runs[1])


def test_table_is_markdown_and_terminal_table_is_aligned_plain_text():
    """table(): one Markdown row per preset. terminal_table(): no pipes (but |m|), backticks or escapes;
    every line's cells begin at the columns the dashed rule marks, two spaces after the previous one."""
    markdown, plain = dialects.table(), dialects.terminal_table()
    rows = markdown.splitlines()
    assert len(rows) == 2 + len(DIALECTS) and rows[1] == "|" + "---|" * len(dialects.COLUMNS)
    assert all(r.startswith("| ") and r.endswith(" |") for r in rows[:1] + rows[2:])
    assert "`sign(m)·min(\\|m\\|/(γBh + ε), 1)`" in markdown and "never (h stays 0)" in markdown
    assert "|" not in plain.replace("|m|", "") and "`" not in plain and "\\" not in plain
    lines = ["".join(ch for ch in line if not unicodedata.combining(ch)) for line in plain.splitlines()]
    starts = [i for i, ch in enumerate(lines[1]) if ch == "-" and (i == 0 or lines[1][i - 1] == " ")]
    cells = lambda line: [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    assert cells(lines[0]) == list(dialects.COLUMNS)
    for line in lines[2:]:
        assert all(line[s0 - 2:s0] == "  " for s0 in starts[1:] if len(line) > s0)
    assert [cells(line)[0] for line in lines[2:] if cells(line)[0]] == list(DIALECTS)
    assert cells(lines[2])[1] == "clip(m/max(γh, ε), 1)"


def test_tables_show_the_newer_knobs_where_they_are_not_the_papers():
    from dataclasses import replace

    preset = dialects._preset("custom", replace(PAPER.knobs, h_bias_correction="refreshes", estimate_clamp="abs",
                                                weight_decay_form="after", bias_correction=True),
                              PAPER.defaults, "exact diagonal", "a test preset")
    for text in (dialects.table([preset]).replace("\\|", "|"), dialects.terminal_table([preset], width=200)):
        assert "clip(m̂/max(γĥ, ε), 1)" in text
        assert "m: 1 - β1^t; h: 1 - β2^n (n refreshes)" in text
        assert "folds |estimate|" in text and "on θ_t - ηu (after the step)" in text
    plain_paper = dialects.terminal_table([PAPER], width=200)
    assert "ĥ" not in plain_paper and "after the step" not in plain_paper and "folds" not in plain_paper


def test_sophiaref_takes_rho_in_the_rho_form_only():
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = SophiaRef([p], lr=0.1, dialect="pytorch_optimizer", rho=0.02)
    assert opt.param_groups[0]["gamma"] == 0.02
    with pytest.raises(ValueError, match=r"rho=0.02 is the clip threshold of the rho form, but dialect 'paper'"):
        SophiaRef([p], lr=0.1, rho=0.02)
    with pytest.raises(ValueError, match=r"gamma=0.1 and rho=0.02 were both given"):
        SophiaRef([p], lr=0.1, dialect="paper_v1", gamma=0.1, rho=0.02)
