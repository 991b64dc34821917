"""One rank of the 2-process tests of tests/test_distributed.py, launched as

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT_DIR

(gloo, CPU). Each rank trains the shared tiny model on its half of every global batch under DDP, with the
estimators reducing over the default group, and writes what it ended with to OUT_DIR/rank{r}.pt; the test
compares that with one process on the concatenated batches (``run_training(world=None)``).
"""

from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sophia_ref import SophiaRef, exact_diagonal, gnb, gnb_expectation, hutchinson  # noqa: E402
from sophia_ref.distributed import rank_generator  # noqa: E402
from sophia_ref.fast import Sophia, gnb_refresh  # noqa: E402

STEPS, K, GLOBAL_BATCH, CLASSES = 20, 5, 8, 3
ESTIMATORS = ("gnb_expectation", "exact_diagonal", "hutchinson")
SAMPLED_DRAWS = 400


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, CLASSES)).double()


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 3, generator=g, dtype=torch.float64),
             torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)) for _ in range(STEPS)]


def shard(world, *tensors):
    """This rank's slice (dim 0) of each global-batch tensor; the tensors themselves for one process."""
    if world is None:
        return tensors
    rank, size = world
    share = GLOBAL_BATCH // size
    return tuple(t[rank * share:(rank + 1) * share] for t in tensors)


def make_optimizer(kind, params, **kw):
    kwargs = {**dict(lr=0.05, gamma=0.05, weight_decay=0.1, hessian_interval=K), **kw}
    return SophiaRef(params, **kwargs) if kind == "ref" else Sophia(params, backend="foreach", **kwargs)


def _estimate(name, net, x, y, params):
    if name == "gnb_expectation":
        return lambda: gnb_expectation(lambda: net(x), params)
    if name == "exact_diagonal":
        return lambda: exact_diagonal(lambda: torch.nn.functional.cross_entropy(net(x), y), params)
    generator = torch.Generator().manual_seed(7)  # the same probes on every rank: rank_generator(7, per_rank=False)
    return lambda: hutchinson(lambda: torch.nn.functional.cross_entropy(net(x), y), params, generator=generator)


def run_training(estimator: str, optimizer: str, world: tuple[int, int] | None = None) -> dict:
    """Train 20 steps (a refresh every 5); ``world=(rank, size)``: this rank's slice of each batch, under DDP."""
    net = model()
    trained = net if world is None else torch.nn.parallel.DistributedDataParallel(net)
    params = list(net.parameters())
    opt = make_optimizer(optimizer, params)
    for x, y in batches():
        x, y = shard(world, x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(trained(x), y).backward()  # DDP averages the ranks' mean gradients
        opt.step(hessian_estimate=_estimate(estimator, net, x, y, params))
    return {"params": [p.detach().clone() for p in params], "h": [opt.state[p]["h"].clone() for p in params]}


def sampled(world: tuple[int, int] | None) -> dict:
    """Many GNB draws at one point: their mean, and (under DDP) whether every rank got the same estimate."""
    net = model()
    params = list(net.parameters())
    (x,) = shard(world, batches()[0][0])
    out = {}
    for name in ("gnb", "gnb_refresh"):
        generator = rank_generator(11, per_rank=True)
        draws = []
        for _ in range(SAMPLED_DRAWS):
            if name == "gnb":
                est = gnb(lambda: net(x), params, generator=generator)
            else:
                est = [e.double() for e in gnb_refresh(net, x, params=params, generator=generator)]
            draws.append(torch.cat([e.reshape(-1) for e in est]))
        out[name] = torch.stack(draws)
    out["expectation"] = torch.cat([e.reshape(-1) for e in gnb_expectation(lambda: net(x), params)])
    return out


def nan_on_one_rank(world: tuple[int, int]) -> dict:
    """nan_policy="skip" under DDP: rank 1's input has a NaN on step 2 only; DDP's average carries it to every
    rank's gradient, so every rank skips that step and nothing else."""
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    params = list(net.parameters())
    out = {}
    for kind in ("ref", "fast"):
        net.load_state_dict(model().state_dict())
        opt = make_optimizer(kind, params, nan_policy="skip")
        skipped = []
        for t, (x, y) in enumerate(batches()[:4], 1):
            x, y = shard(world, x.clone(), y)
            if t == 2 and world[0] == 1:
                x[0, 0] = float("nan")
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step(hessian_estimate=lambda: gnb_expectation(lambda: net(x), params))
            skipped.append(bool(opt.diagnostics.skipped))
        out[kind] = {"skipped": skipped, "params": [p.detach().clone() for p in params]}
    return out


def squared_gradient(params):
    """A deterministic estimate that runs as well on DTensor parameters: the reduced gradient, squared."""
    return lambda: [p.grad.detach() ** 2 * 8 for p in params]


def run_fsdp_training(optimizer: str, world: tuple[int, int] | None, estimator: str = "squared_gradient") -> dict:
    """20 steps as run_training, the model under FSDP2 (fully_shard) when ``world`` is given; full tensors out."""
    net = model()
    if world is not None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(net, mesh=init_device_mesh("cpu", (world[1],)))
    params = list(net.parameters())
    opt = make_optimizer(optimizer, params)
    for x, y in batches():
        x, y = shard(world, x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()  # FSDP reduce-scatters the ranks' mean gradients
        opt.step(hessian_estimate=squared_gradient(params) if estimator == "squared_gradient" else
                 (lambda: gnb_expectation(lambda: net(x), params)))
    full = (lambda t: t.full_tensor()) if world is not None else (lambda t: t)
    return {"params": [full(p.detach()).clone() for p in params], "h": [full(opt.state[p]["h"]).clone() for p in params]}


def fsdp_sampled(world: tuple[int, int]) -> dict:
    """GNB draws under FSDP2 at the initial point (full tensors), and the refusal of autograd-only estimators."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = model()
    fully_shard(net, mesh=init_device_mesh("cpu", (world[1],)))
    params = list(net.parameters())
    (x,) = shard(world, batches()[0][0])
    out = {}
    for name in ("gnb", "gnb_refresh"):
        generator = rank_generator(13, per_rank=True)
        draws = []
        for _ in range(SAMPLED_DRAWS // 2):
            est = (gnb(lambda: net(x), params, generator=generator) if name == "gnb"
                   else gnb_refresh(net, x, params=params, generator=generator))
            draws.append(torch.cat([e.full_tensor().double().reshape(-1) for e in est]))
        out[name] = torch.stack(draws)
    try:
        exact_diagonal(lambda: net(x).sum(), params)
        out["refusal"] = ""
    except ValueError as error:
        out["refusal"] = str(error)
    return out


def fsdp_nan_on_one_shard(world: tuple[int, int]) -> dict:
    """nan_policy="skip" under FSDP2 with a NaN in rank 1's shard of the estimate only: every rank must skip."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    out = {}
    for kind in ("ref", "fast"):
        net = model()
        fully_shard(net, mesh=init_device_mesh("cpu", (world[1],)))
        params = list(net.parameters())
        opt = make_optimizer(kind, params, nan_policy="skip", hessian_interval=1)
        skipped = []
        for t, (x, y) in enumerate(batches()[:3], 1):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            estimate = [p.grad.detach() ** 2 for p in params]
            if t == 2 and world[0] == 1:
                estimate[0].to_local().view(-1)[0] = float("nan")  # this rank's shard only
            opt.step(hessian_estimate=estimate)
            skipped.append(bool(opt.diagnostics.skipped))
        out[kind] = skipped
    return out


def collective_fault(world: tuple[int, int]) -> dict:
    """A collective that raises inside the Hessian estimate (every rank's all-reduce fails, as a broken
    connection would make it): the step raises on every rank, and parameters and state are as before."""
    out = {}
    for kind in ("ref", "fast"):
        net = model()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        params = list(net.parameters())
        opt = make_optimizer(kind, params, hessian_interval=2)
        x, y = batches()[0]
        for _ in range(2):  # steps 1 and 2; step 3 refreshes
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step(hessian_estimate=lambda: gnb_expectation(lambda: net(x), params))
        before = ([p.detach().clone() for p in params],
                  [(opt.state[p]["m"].clone(), opt.state[p]["h"].clone(), opt.state[p]["step"]) for p in params])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        real = dist.all_reduce

        def broken(*args, **kwargs):
            raise RuntimeError("injected: the connection to a peer was lost")

        dist.all_reduce = broken
        try:
            opt.step(hessian_estimate=lambda: gnb_expectation(lambda: net(x), params))
            raised = ""
        except RuntimeError as error:
            raised = str(error)
        finally:
            dist.all_reduce = real
        unchanged = all(torch.equal(p, b) for p, b in zip(params, before[0])) and all(
            torch.equal(opt.state[p]["m"], m) and torch.equal(opt.state[p]["h"], h) and opt.state[p]["step"] == s
            for p, (m, h, s) in zip(params, before[1]))
        out[kind] = {"raised": raised, "unchanged": unchanged}
    return out


def dcp_resume(world: tuple[int, int], out_dir: str) -> dict:
    """FSDP2 + torch.distributed.checkpoint: save model and optimizer after 6 steps, run 5 more; a fresh
    model and optimizer loaded from the checkpoint run the same 5; both end the same (full tensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def build(kind):
        net = model()
        fully_shard(net, mesh=init_device_mesh("cpu", (world[1],)))
        params = list(net.parameters())
        return net, params, make_optimizer(kind, params)

    def train(net, params, opt, xs):
        for x, y in xs:
            x, y = shard(world, x, y)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step(hessian_estimate=squared_gradient(params))

    out = {}
    data = batches()
    for kind in ("ref", "fast"):
        path = os.path.join(out_dir, f"dcp-{kind}")
        net, params, opt = build(kind)
        train(net, params, opt, data[:6])
        model_sd, optim_sd = get_state_dict(net, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        train(net, params, opt, data[6:11])
        net2, params2, opt2 = build(kind)
        opt2.init_state()  # else get_state_dict initializes the state by stepping, which a refresh step refuses
        model_sd, optim_sd = get_state_dict(net2, opt2)
        loaded = {"model": model_sd, "optim": optim_sd}
        dcp.load(loaded, checkpoint_id=path)
        set_state_dict(net2, opt2, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        train(net2, params2, opt2, data[6:11])
        same = all(torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(params, params2)) and all(
            torch.equal(opt.state[a][k].full_tensor(), opt2.state[b][k].full_tensor()) and
            opt.state[a]["step"] == opt2.state[b]["step"] for a, b in zip(params, params2) for k in ("m", "h"))
        out[kind] = same
        out[f"{kind}/final"] = [p.full_tensor().clone() for p in params]
    return out


def resume_dcp_on_one_process(kind: str, path: str) -> list:
    """The 2-rank FSDP2 checkpoint of dcp_resume, loaded into one process without FSDP (torch.distributed.checkpoint
    reshards it), then the same 5 steps on the whole batches."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    net = model()
    params = list(net.parameters())
    opt = make_optimizer(kind, params)
    opt.init_state()
    model_sd, optim_sd = get_state_dict(net, opt)
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=path)
    set_state_dict(net, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    for x, y in batches()[6:11]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step(hessian_estimate=squared_gradient(params))
    return [p.detach().clone() for p in params]


def plain_and_sharded_state_dicts(world: tuple[int, int]) -> dict:
    """A sharded (FSDP2) optimizer state dict loaded by an unsharded optimizer is refused with the reason; a full
    one loaded by a sharded optimizer is cut to its shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    out = {}
    for kind in ("ref", "fast"):
        plain_net = model()
        plain = make_optimizer(kind, list(plain_net.parameters()))
        sharded_net = model()
        fully_shard(sharded_net, mesh=init_device_mesh("cpu", (world[1],)))
        sharded = make_optimizer(kind, list(sharded_net.parameters()))
        for net, opt in ((plain_net, plain), (sharded_net, sharded)):
            for x, y in batches()[:2]:
                x, y = shard(world if net is sharded_net else None, x, y)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step(hessian_estimate=squared_gradient(list(net.parameters())))
        try:
            make_optimizer(kind, list(model().parameters())).load_state_dict(sharded.state_dict())
            out[f"{kind}/refusal"] = ""
        except ValueError as error:
            out[f"{kind}/refusal"] = str(error)
        target_net = model()
        fully_shard(target_net, mesh=init_device_mesh("cpu", (world[1],)))
        target = make_optimizer(kind, list(target_net.parameters()))
        target.load_state_dict(plain.state_dict())
        from torch.distributed.tensor import DTensor

        out[f"{kind}/resharded"] = all(
            isinstance(target.state[q][k], DTensor) and torch.equal(target.state[q][k].full_tensor(), plain.state[p][k])
            for p, q in zip(plain_net.parameters(), target_net.parameters()) for k in ("m", "h"))
    return out


def main() -> None:
    out_dir = sys.argv[1]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # a rank that fails ends the run soon
    world = (dist.get_rank(), dist.get_world_size())
    results = {f"{e}/{o}": run_training(e, o, world) for e in ESTIMATORS for o in ("ref", "fast")}
    results["sampled"] = sampled(world)
    results["nan"] = nan_on_one_rank(world)
    results["fsdp"] = {f"{e}/{o}": run_fsdp_training(o, world, e) for o in ("ref", "fast")
                       for e in ("squared_gradient", "gnb_expectation")}
    results["fsdp_sampled"] = fsdp_sampled(world)
    results["fsdp_nan"] = fsdp_nan_on_one_shard(world)
    results["collective_fault"] = collective_fault(world)
    results["dcp"] = dcp_resume(world, out_dir)
    results["state_dicts"] = plain_and_sharded_state_dicts(world)
    torch.save(results, os.path.join(out_dir, f"rank{world[0]}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
