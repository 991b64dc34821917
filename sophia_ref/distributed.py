"""The estimators on ``torch.distributed``: which ranks an estimate is the estimate of, and their random streams.

Under data parallelism each rank holds a slice of the global batch, and Sophia's h must be the estimate for
the global batch, the same on every rank. The estimators (:mod:`sophia_ref.estimators`,
:func:`sophia_ref.fast.gnb_refresh`) take ``group=``:

- ``group=None`` (default): the default process group when ``torch.distributed`` is initialized with more
  than one rank, else no communication;
- a process group: its ranks;
- ``group="local"``: this rank's own data only (no communication).

What crosses ranks, in one all-reduce per dtype and device:

- GNB (``gnb``, ``gnb_refresh``): each rank samples labels for its own predictions, the gradients of the
  *summed* cross-entropy are summed over ranks and divided by the global number of predictions B, and the
  result is squared after that: ``B * ghat * ghat`` with ``ghat = grad (1/B) sum_{all ranks' b} CE(f_b,
  yhat_b)``, exactly the estimate of one process on the concatenated batch. (With equal slices this is
  the average of the ranks' mean gradients, as DDP averages ordinary gradients.)
- ``gnb_expectation``: the ranks' sums over (prediction, label) pairs, summed, over the global B.
- ``exact_diagonal`` and ``hutchinson``: the ranks' estimates, averaged: the estimate for the mean of the
  ranks' losses, which is the global loss DDP trains on. Hutchinson's probes must be the *same* on every
  rank (``u * mean(H_r u)`` needs one u): give every rank a generator with the same seed.

Random streams (:func:`rank_generator`): sampled labels must *differ* across ranks (each rank's predictions
get independent labels), so seed each rank's generator with ``seed + rank``; probes must *agree*, so seed
them all with ``seed``. A run is then reproducible for a given world size (not across world sizes: the
labels of a prediction depend on which rank holds it).

Call the estimators with the wrapped module's own forward (``ddp_model.module``), not the DDP wrapper:
they differentiate with ``torch.autograd.grad``, outside DDP's own gradient reduction.

FSDP2 (``fully_shard``: DTensor parameters): ``torch.autograd.grad`` does not reach the sharded
parameters (the forward runs on gathered copies), so ``gnb`` and ``gnb_refresh`` differentiate with a
backward pass instead, FSDP's own reduce-scatter doing the sum over ranks, and return DTensor estimates
sharded like the parameters; ``.grad`` is saved and restored around it. ``exact_diagonal``,
``hutchinson`` need second derivatives, which FSDP's backward does not give, and refuse DTensor
parameters with a message; ``gnb_expectation`` runs one forward and backward per global (prediction,
label) pair on every rank (a small-problem oracle, as everywhere).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

LOCAL = "local"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def resolve_group(group=None):
    """The process group an estimate reduces over, or None for none (``group="local"``, one rank, or no
    ``torch.distributed``)."""
    if isinstance(group, str):
        if group != LOCAL:
            raise ValueError(f"group={group!r} is not valid: expected a process group, None or {LOCAL!r}")
        return None
    dist = _dist()
    if dist is None:
        if group is not None:
            raise ValueError("group= names a process group, but torch.distributed is not initialized")
        return None
    if group is None:
        group = dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def world_size(group) -> int:
    """The number of ranks of a resolved group (1 for None)."""
    return 1 if group is None else _dist().get_world_size(group)


def rank(group=None) -> int:
    """This process's rank in ``group`` (0 without torch.distributed)."""
    resolved = resolve_group(group)
    return 0 if resolved is None else _dist().get_rank(resolved)


def all_reduce_sum_(tensors: list[Tensor], group) -> list[Tensor]:
    """Sum each tensor over the group's ranks, in place: one collective per (dtype, device), on one flat
    buffer. No-op for ``group=None``."""
    if group is None or not tensors:
        return tensors
    dist = _dist()
    buckets: dict = defaultdict(list)
    for t in tensors:
        buckets[(t.dtype, t.device)].append(t)
    for members in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for t in members:
            t.copy_(flat[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()
    return tensors


def all_reduce_mean_(tensors: list[Tensor], group) -> list[Tensor]:
    all_reduce_sum_(tensors, group)
    n = world_size(group)
    if n > 1:
        for t in tensors:
            t.div_(n)
    return tensors


def global_count(count: int, group, device="cpu") -> int:
    """``count`` summed over the group's ranks."""
    if group is None:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    _dist().all_reduce(total, op=_dist().ReduceOp.SUM, group=group)
    return int(total.item())


def rank_generator(seed: int, *, per_rank: bool, group=None, device="cpu") -> torch.Generator:
    """A generator for one rank's draws: seeded ``seed + rank`` where the draws must differ across ranks
    (``per_rank=True``: GNB's sampled labels), ``seed`` where they must agree (``per_rank=False``:
    Hutchinson's probes)."""
    return torch.Generator(device=device).manual_seed(seed + (rank(group) if per_rank else 0))


def sharded(params) -> bool:
    """Whether any parameter is a DTensor (FSDP2)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in params)


def refuse_sharded(params, name: str) -> None:
    if sharded(params):
        raise ValueError(f"{name} cannot run on DTensor (FSDP2) parameters: it differentiates with "
                         "torch.autograd.grad, which does not reach fully_shard's sharded parameters, and FSDP's backward gives no second "
                         "derivatives; under FSDP2 use gnb, gnb_expectation or sophia_ref.fast.gnb_refresh, which "
                         "differentiate through FSDP's backward")


def grads_by_backward(output: Tensor, params, group, grad_output: Tensor | None = None) -> list:
    """The gradients of ``output`` summed over the ranks, for DTensor (FSDP2) parameters: one backward pass
    through FSDP's hooks (which average over the mesh, hence the factor of the world size), with the
    parameters' ``.grad`` saved and restored around it. Entries are None where no gradient flowed."""
    n = world_size(group)
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        if grad_output is None:
            (output * n).backward()
        else:
            output.backward(grad_output * n)
        return [p.grad for p in params]
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def local(x: Tensor | None) -> Tensor | None:
    """The shard of a DTensor this rank holds (a view: writing it writes the DTensor), else x itself."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return x
    return x.to_local() if isinstance(x, DTensor) else x


def mesh_group(tensors) -> object | None:
    """The process group of the first DTensor's mesh (its only dimension, or the flattened mesh), or None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return None
    for x in tensors:
        if isinstance(x, DTensor):
            mesh = x.device_mesh
            return mesh.get_group() if mesh.ndim == 1 else mesh._flatten().get_group()
    return None


def count_over_mesh(count: int, tensors, device) -> int:
    """``count`` summed over the mesh of the DTensors among ``tensors`` (unchanged without any): one all-reduce,
    which every rank must reach."""
    group = mesh_group(tensors)
    if group is None:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    _dist().all_reduce(total, op=_dist().ReduceOp.SUM, group=group)
    return int(total.item())


def _is_dtensor(x) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, DTensor)


def layout_mismatch(saved: Tensor, p: Tensor) -> str | None:
    """Why a saved state tensor cannot be taken as the state of p by a plain load_state_dict (None if it can):
    a sharded tensor for an unsharded parameter, or one sharded over another number of ranks."""
    if _is_dtensor(saved) and not _is_dtensor(p):
        return (f"it was saved sharded (a DTensor over {saved.device_mesh.size()} ranks) and this parameter is not: "
                "load it through torch.distributed.checkpoint, which reshards")
    if _is_dtensor(saved) and _is_dtensor(p) and saved.device_mesh.size() != p.device_mesh.size():
        return (f"it was saved sharded over {saved.device_mesh.size()} ranks and this parameter is sharded over "
                f"{p.device_mesh.size()}: load it through torch.distributed.checkpoint, which reshards")
    return None


def shard_like(value: Tensor, p: Tensor) -> Tensor:
    """A full (unsharded) state tensor for a DTensor parameter, cut to the parameter's placements (each rank keeps
    its own shard, without communication); anything else unchanged."""
    if _is_dtensor(p) and not _is_dtensor(value):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
    return value
