"""torch.distributed: 2 processes (gloo, CPU, launched by torchrun) reproduce one process on the concatenated
batches, for SophiaRef and fast.Sophia with each deterministic estimator reducing over the ranks; the sampled
estimators give every rank the same h and have the global Gauss-Newton diagonal as their mean."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import distributed_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ranks")


@pytest.fixture(scope="module")
def ranks(out_dir):
    out = out_dir
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          os.path.join(HERE, "distributed_worker.py"), str(out)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
@pytest.mark.parametrize("estimator", worker.ESTIMATORS)
def test_two_ranks_reproduce_one_process(ranks, estimator, optimizer):
    one = worker.run_training(estimator, optimizer)
    key = f"{estimator}/{optimizer}"
    for rank in ranks:
        for got, want in zip(rank[key]["params"] + rank[key]["h"], one["params"] + one["h"]):
            # float64 rounding: the ranks sum in another order (DDP's average, the estimators' all-reduce); 20 steps
            # of lr 0.05 on O(1) parameters carry a few ulps of each step forward
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # and the ranks agree with each other exactly: they applied the same reduced gradient and estimate
    for a, b in zip(ranks[0][key]["params"] + ranks[0][key]["h"], ranks[1][key]["params"] + ranks[1][key]["h"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gnb", "gnb_refresh"])
def test_sampled_estimates_agree_across_ranks_and_have_the_global_mean(ranks, name):
    a, b = ranks[0]["sampled"][name], ranks[1]["sampled"][name]
    assert torch.equal(a, b)  # every rank folds the same estimate into h
    want = worker.sampled(None)["expectation"]  # one process, the whole batch: the global Gauss-Newton diagonal
    torch.testing.assert_close(ranks[0]["sampled"]["expectation"], want, rtol=1e-12, atol=1e-15)
    mean, se = a.mean(0), a.std(0) / a.shape[0] ** 0.5
    # 5 standard errors on each of 31 coordinates: a false alarm well under 1e-4 for a fixed seed
    assert bool(((mean - want).abs() <= 5 * se + 1e-12).all())
    assert not bool(((2 * mean - want).abs() <= 5 * se + 1e-12).all())  # a wrong B factor (the local one) is caught


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_one_ranks_nan_skips_the_step_on_every_rank(ranks, optimizer):
    a, b = ranks[0]["nan"][optimizer], ranks[1]["nan"][optimizer]
    assert a["skipped"] == b["skipped"] == [False, True, False, False]
    assert all(torch.equal(x, y) and bool(torch.isfinite(x).all()) for x, y in zip(a["params"], b["params"]))


# FSDP2: DTensor parameters, gradients, estimates and state; the same 20 steps as one process, to float64 rounding,
# with the squared reduced gradient and with gnb_expectation (one FSDP forward and backward per global pair)
@pytest.mark.parametrize("optimizer", ["ref", "fast"])
@pytest.mark.parametrize("estimator", ["squared_gradient", "gnb_expectation"])
def test_fsdp2_reproduces_one_process(ranks, optimizer, estimator):
    one = worker.run_fsdp_training(optimizer, None, estimator)
    for rank in ranks:
        got = rank["fsdp"][f"{estimator}/{optimizer}"]
        for a, b in zip(got["params"] + got["h"], one["params"] + one["h"]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["gnb", "gnb_refresh"])
def test_fsdp2_sampled_estimates_have_the_global_mean(ranks, name):
    draws = ranks[0]["fsdp_sampled"][name]
    want = worker.sampled(None)["expectation"]
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    assert bool(((mean - want).abs() <= 5 * se + 1e-12).all())
    assert not bool(((2 * mean - want).abs() <= 5 * se + 1e-12).all())


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_fsdp2_a_nan_in_one_shard_skips_the_step_on_every_rank(ranks, optimizer):
    assert ranks[0]["fsdp_nan"][optimizer] == ranks[1]["fsdp_nan"][optimizer] == [False, True, False]


def test_fsdp2_refuses_autograd_only_estimators(ranks):
    assert "exact_diagonal cannot run on DTensor (FSDP2) parameters" in ranks[0]["fsdp_sampled"]["refusal"]


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_a_failing_collective_changes_nothing_on_any_rank(ranks, optimizer):
    for rank in ranks:
        got = rank["collective_fault"][optimizer]
        assert "injected: the connection to a peer was lost" in got["raised"] and got["unchanged"]


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_fsdp2_resume_through_distributed_checkpoint_is_bit_exact(ranks, optimizer):
    assert ranks[0]["dcp"][optimizer] is True and ranks[1]["dcp"][optimizer] is True


# torch.distributed.checkpoint reshards: the 2-rank FSDP2 checkpoint resumes on one process without FSDP
@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_fsdp2_checkpoint_resumes_on_one_process(ranks, out_dir, optimizer):
    got = worker.resume_dcp_on_one_process(optimizer, str(out_dir / f"dcp-{optimizer}"))
    for a, b in zip(got, ranks[0]["dcp"][f"{optimizer}/final"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # float64 rounding: another reduction order


@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_sharded_state_dicts_are_refused_unsharded_and_full_ones_are_cut_to_shards(ranks, optimizer):
    for rank in ranks:
        got = rank["state_dicts"]
        assert "it was saved sharded (a DTensor over 2 ranks) and this parameter is not: load it through " \
               "torch.distributed.checkpoint" in got[f"{optimizer}/refusal"]
        assert got[f"{optimizer}/resharded"] is True


def test_group_arguments_are_checked():
    from sophia_ref import gnb_expectation
    from sophia_ref.distributed import rank_generator, resolve_group

    net = worker.model()
    x, _ = worker.batches()[0]
    with pytest.raises(ValueError, match="group='world' is not valid: expected a process group, None or 'local'"):
        gnb_expectation(lambda: net(x), list(net.parameters()), group="world")
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        resolve_group(object())
    assert resolve_group(None) is None and resolve_group("local") is None
    # without torch.distributed this process is rank 0: both kinds of stream start from the seed itself
    assert torch.equal(torch.rand(3, generator=rank_generator(4, per_rank=True)),
                       torch.rand(3, generator=rank_generator(4, per_rank=False)))


# determinism: the same seeds give bit-identical trajectories on the CPU, GNB label sampling included
@pytest.mark.parametrize("optimizer", ["ref", "fast"])
def test_same_seed_same_trajectory_bit_for_bit(optimizer):
    from sophia_ref import SophiaRef, gnb
    from sophia_ref.fast import Sophia, gnb_refresh

    def trajectory(refresh):
        net = worker.model()
        params = list(net.parameters())
        kwargs = dict(lr=0.05, gamma=0.05, weight_decay=0.1, hessian_interval=3)
        opt = SophiaRef(params, **kwargs) if optimizer == "ref" else Sophia(params, backend="foreach", **kwargs)
        generator = torch.Generator().manual_seed(3)
        for x, y in worker.batches():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            if refresh == "gnb":
                opt.step(hessian_estimate=lambda: gnb(lambda: net(x), params, generator=generator))
            else:
                opt.step(hessian_estimate=lambda: gnb_refresh(net, x, params=opt, generator=generator))
        return [p.detach().clone() for p in params] + [opt.state[p]["h"].clone() for p in params]

    for refresh in ("gnb", "gnb_refresh"):
        first, second = trajectory(refresh), trajectory(refresh)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
        assert any(bool((h != 0).any()) for h in first[len(first) // 2:])
