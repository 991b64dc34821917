"""Focused tests of sophia_ref/dialects.py, each pinning behaviour a surviving mutant changed
(docs/MUTATION.md, "Results")."""

from __future__ import annotations

import pytest

from sophia_ref import dialects as D
from sophia_ref.dialects import DIALECTS, get_dialect, table, terminal_table, v1_to_v4, v4_to_v1

# Every preset's defaults, as the upstream optimizers (and the paper) document them; see each preset's
# summary and departures in dialects.py.
EXPECTED_DEFAULTS = {
    "paper": dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10, batch_size=1.0),
    "paper_v1": dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10,
                     batch_size=1.0),
    "official": dict(betas=(0.965, 0.99), gamma=0.04, eps=1e-15, weight_decay=0.1, hessian_interval=10,
                     batch_size=5120.0),
    "optax": dict(betas=(0.965, 0.99), gamma=0.01, eps=1e-8, weight_decay=1e-4, hessian_interval=10, batch_size=1.0),
    "pytorch_optimizer": dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10,
                              batch_size=1.0),
    "sophia_optimizer": dict(betas=(0.965, 0.99), gamma=0.04, eps=1e-15, weight_decay=0.1, hessian_interval=1,
                             batch_size=5120.0),
    "levanter": dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.1, hessian_interval=10,
                     batch_size=1.0),
    "fastxtend": dict(betas=(0.965, 0.99), gamma=0.4, eps=1e-15, weight_decay=0.01, hessian_interval=10,
                      batch_size=1.0),
}


# each preset's default hyperparameters, exactly (a changed default silently changes what a preset runs)
@pytest.mark.parametrize("name", sorted(EXPECTED_DEFAULTS))
def test_preset_defaults_exact(name):
    assert dict(DIALECTS[name].defaults) == EXPECTED_DEFAULTS[name]
    assert set(DIALECTS) == set(EXPECTED_DEFAULTS)


# v4_to_v1: the conversion, its default weight decay of 0, the rejected gamma <= 0, and the round trip
def test_v4_to_v1():
    assert v4_to_v1(2.0, 0.5, 1e-8, 0.1) == dict(lr=4.0, rho=0.5, eps=2e-8, weight_decay=0.05)
    assert v4_to_v1(2.0, 0.5, 1e-8)["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="gamma=0"):
        v4_to_v1(1.0, 0, 1e-8)
    back = v1_to_v4(**v4_to_v1(0.25, 0.5, 0.125, 0.5))
    assert back == dict(lr=0.25, gamma=0.5, eps=0.125, weight_decay=0.5)


# the update formula shown for each form: max-floor vs added eps, gamma form vs rho form
def test_update_formulas():
    f = {name: D._update_formula(d.knobs) for name, d in DIALECTS.items()}
    assert f["paper"] == "clip(m/max(γh, ε), 1)"
    assert f["paper_v1"] == "clip(m/max(h, ε), ρ)"
    assert f["official"] == "sign(m)·min(|m|/(γBh + ε), 1)"
    assert f["optax"] == "clip(m̂/max(γh, ε), 1)"


# the Markdown table: the name and formula cells in backticks, the refresh cell with its clamp note
def test_markdown_rows():
    rows = table().splitlines()
    assert rows[2].startswith("| `paper` | `clip(m/max(γh, ε), 1)` | 1e-12 | no | (t-1) mod k = 0, used at once |")
    assert len(rows) == 2 + len(DIALECTS)


# the terminal table: every column as wide as its widest cell, so the rows line up
def test_terminal_table_columns_align():
    lines = terminal_table().splitlines()
    widest = max(len(n) for n in DIALECTS)                 # "pytorch_optimizer"
    assert len(lines[1].split("  ")[0]) == widest
    for name in DIALECTS:
        [row] = [line for line in lines if line.split(" ")[0] == name]
        assert row.startswith(name.ljust(widest) + "  " + D._update_formula(get_dialect(name).knobs))
