"""Checkpoints: a mid-run save through torch.save / torch.load(weights_only=True) resumes bit for bit (the refresh
phase and the label sampler's generator included); truncated, corrupted or foreign checkpoints are refused with a
message saying what is wrong, and the optimizer is left as it was."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from sophia_ref import SophiaRef, gnb
from sophia_ref.fast import Sophia

KINDS = ["ref", "foreach", "triton"]


@pytest.fixture(autouse=True)
def _triton_needs_the_interpreter(request):
    if "triton" in request.node.name and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the triton backend runs on CPU tensors only under TRITON_INTERPRET=1")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))


def _make(kind, params, **kw):
    kwargs = dict(lr=0.02, gamma=0.05, weight_decay=0.1, hessian_interval=4, **kw)
    return SophiaRef(params, **kwargs) if kind == "ref" else Sophia(params, backend=kind, **kwargs)


def _train(net, opt, generator, steps, start=0):
    data = torch.Generator().manual_seed(5)
    xs = [torch.randn(6, 3, generator=data) for _ in range(start + steps)][start:]
    params = list(net.parameters())
    for x in xs:
        opt.zero_grad()
        net(x).logsumexp(-1).mean().backward()
        opt.step(hessian_estimate=lambda: [e.float() for e in gnb(lambda: net(x), params, generator=generator)])


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_run_is_bit_exact(kind, tmp_path):
    # uninterrupted: 11 steps (refreshes at 1, 5, 9). Interrupted after 6: model, optimizer and the sampler's
    # generator saved, everything rebuilt from the file, 5 more steps.
    net, generator = _model(), torch.Generator().manual_seed(9)
    opt = _make(kind, list(net.parameters()))
    _train(net, opt, generator, 11)

    net2, generator2 = _model(), torch.Generator().manual_seed(9)
    opt2 = _make(kind, list(net2.parameters()))
    _train(net2, opt2, generator2, 6)
    torch.save({"model": net2.state_dict(), "optimizer": opt2.state_dict(), "generator": generator2.get_state()},
               tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    net3 = _model()
    net3.load_state_dict(saved["model"])
    opt3 = _make(kind, list(net3.parameters()))
    opt3.load_state_dict(saved["optimizer"])
    generator3 = torch.Generator()
    generator3.set_state(saved["generator"])
    _train(net3, opt3, generator3, 5, start=6)

    for a, b in zip(net.parameters(), net3.parameters()):
        assert torch.equal(a, b)
        for key in ("m", "h", "step", "refreshes"):
            x, y = opt.state[a][key], opt3.state[b][key]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def _trained(kind):
    net = _model()
    opt = _make(kind, list(net.parameters()))
    _train(net, opt, torch.Generator().manual_seed(1), 3)
    return net, opt


def _unchanged(opt, before):
    after = opt.state_dict()
    for pid, entry in before["state"].items():
        for key, value in entry.items():
            other = after["state"][pid][key]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_checkpoint_fails_to_load(kind, tmp_path):
    _, opt = _trained(kind)
    path = tmp_path / "ckpt.pt"
    torch.save(opt.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="zip|archive|central directory|EOF"):
        torch.load(path, weights_only=True)


def _corrupt(state_dict, change):
    state_dict = copy.deepcopy(state_dict)
    change(state_dict["state"][0])
    return state_dict


CORRUPTIONS = [
    (lambda e: e.update(m=torch.zeros(7)), r"m is shape \(7,\), dtype torch.float\d+; expected a floating tensor of "
                                           r"shape \(5, 3\)"),
    (lambda e: e["h"].view(-1).__setitem__(0, float("nan")), "h has non-finite entries"),
    (lambda e: e.update(m=torch.zeros(5, 3, dtype=torch.int64)), "m is shape"),
    (lambda e: e.update(step=-1), "step is -1; expected a count >= 0"),
    (lambda e: e.update(refreshes=99), "refreshes is 99; expected a count between 0 and step=3"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change, message", CORRUPTIONS)
def test_corrupted_entries_are_refused_and_change_nothing(kind, change, message):
    _, opt = _trained(kind)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(_corrupt(before, change))
    _unchanged(opt, before)


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_checkpoints_are_refused_with_the_reason(kind):
    _, opt = _trained(kind)
    before = copy.deepcopy(opt.state_dict())
    # another parameter layout: one parameter fewer, or two groups
    smaller = torch.nn.Linear(3, 5)
    other = _make(kind, list(smaller.parameters()))
    with pytest.raises(ValueError, match="parameter group 0 has 4 parameters in this state dict and 2 in the optimizer"):
        other.load_state_dict(before)
    params = list(_model().parameters())
    grouped = _make(kind, [{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ValueError, match="this state dict has 1 parameter groups, the optimizer 2"):
        grouped.load_state_dict(before)
    # another dialect
    official = _make(kind, list(_model().parameters()), dialect="official") if kind != "ref" else \
        SophiaRef(list(_model().parameters()), lr=0.02, dialect="official")
    with pytest.raises(ValueError, match="saved by a .* with dialect 'paper', which differs from this optimizer's "
                                         "'official'"):
        official.load_state_dict(before)
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        opt.load_state_dict({"weights": before["state"]})
    _unchanged(opt, before)


# init_state() creates what a first step would find, so a run after it is the same run
@pytest.mark.parametrize("kind", KINDS)
def test_init_state_changes_no_result(kind):
    nets = [_model(), _model()]
    opts = [_make(kind, list(n.parameters())) for n in nets]
    opts[1].init_state()
    assert all(opts[1].state[p]["step"] == 0 and not bool(opts[1].state[p]["h"].any()) for p in nets[1].parameters())
    for net, opt in zip(nets, opts):
        _train(net, opt, torch.Generator().manual_seed(4), 6)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b) and torch.equal(opts[0].state[a]["h"], opts[1].state[b]["h"])
