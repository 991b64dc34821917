"""The batch_factor experiment: B' / B scales the estimate, which is gamma_eff = gamma B' / B; the quick run."""

from __future__ import annotations

import json

import pytest
import torch

from sophia_ref import SophiaRef
from theory import batch_factor as BF


def test_b_counts():
    cfg = BF.QUICK.task
    sequences = round(cfg.batch * cfg.gnb_fraction)
    assert BF.b_counts(cfg) == {"predictions": sequences * cfg.context, "sequences": sequences, "one": 1}


def test_scaling_the_estimate_is_scaling_gamma():
    """The docstring's identity: an estimate scaled by c gives the steps of gamma c (to rounding: gamma (c h) and
    (gamma c) h differ in the last bit at most, so 4 ulps per step)."""
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(50, dtype=torch.float64, generator=g)
    grads = [torch.randn(50, dtype=torch.float64, generator=g) for _ in range(12)]
    hhats = [torch.rand(50, dtype=torch.float64, generator=g) for _ in range(12)]
    out = []
    for gamma, c in ((0.05, 1 / 32), (0.05 / 32, 1.0)):
        p = torch.nn.Parameter(p0.clone())
        opt = SophiaRef([p], lr=0.01, gamma=gamma, hessian_interval=3)
        for grad, hhat in zip(grads, hhats):
            p.grad = grad.clone()
            opt.step(hessian_estimate=[c * hhat])
        out.append(p.detach().clone())
    assert torch.allclose(out[0], out[1], rtol=0, atol=4 * 12 * torch.finfo(torch.float64).eps * 4)
    p = torch.nn.Parameter(p0.clone())  # and a different gamma really does move the parameters
    opt = SophiaRef([p], lr=0.01, gamma=0.05, hessian_interval=3)
    for grad, hhat in zip(grads, hhats):
        p.grad = grad.clone()
        opt.step(hessian_estimate=[hhat])
    assert not torch.allclose(p.detach(), out[0], atol=1e-6)


@pytest.fixture(scope="module")
def quick():
    return BF.run(quick=True)


def test_quick_run(quick, tmp_path):
    data = quick.data
    json.dumps(quick.to_json())
    table = data["table"]
    gamma = BF.QUICK.task.gamma
    b = data["b"]
    for variant in BF.VARIANTS:
        assert table[variant]["gamma_eff"] == pytest.approx(gamma * b[variant] / b["predictions"])
        assert {r["b_scale"] for r in data["runs"][variant]} == {b[variant] / b["predictions"]}
    # a smaller effective gamma clips more: the win rate falls with B at the same lr and seeds
    wins = [table[v]["at_recipe_lr"]["win"] for v in BF.VARIANTS]
    assert wins[0] > wins[1] > wins[2] >= 0
    assert quick.claim_held is None  # measured, no verdict
    assert "a user who passes the number of sequences as B runs with gamma_eff" in quick.summary
    path = tmp_path / "bf.png"
    quick.draw(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
