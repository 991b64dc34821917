"""Hessian-diagonal estimators (SPEC section 2), in float64, reproducible from a ``torch.Generator``.

All four take the parameters as a list of tensors that require grad and return a
list of float64 tensors of the same shapes, on the same devices. None of them
touches ``p.grad``.

- :func:`exact_diagonal`: ``diag(nabla^2 L)``, one Hessian row per coordinate (small problems).
- :func:`hutchinson`: ``u * (H u)`` with ``u ~ N(0, I)`` or Rademacher; unbiased.
- :func:`gnb`: Gauss-Newton-Bartlett, ``B * ghat * ghat`` with labels sampled from the model.
- :func:`gnb_expectation`: the exact expectation of :func:`gnb`, the Gauss-Newton diagonal.

Each takes ``group=``: under ``torch.distributed`` with more than one rank it returns, on every rank, the
estimate for the global batch (:mod:`sophia_ref.distributed` says how, and which random streams to use).
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import distributed

PROBES = ("gaussian", "rademacher")
HVP_MODES = ("auto", "forward", "double_backward")
_BATCH_ELEMENTS = 1 << 22  # largest batch of vector-Jacobian products built at once, in elements


def _param_list(params: Tensor | Iterable[Tensor]) -> list[Tensor]:
    params = [params] if isinstance(params, Tensor) else list(params)
    if not params:
        raise ValueError("params is empty: expected at least one tensor that requires grad")
    seen: dict[int, int] = {}
    for i, p in enumerate(params):
        if id(p) in seen:
            raise ValueError(f"params[{i}] is the same tensor as params[{seen[id(p)]}]; list each parameter once")
        seen[id(p)] = i
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, expected a torch.Tensor")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
        if not (p.is_floating_point() and not p.is_complex()):
            raise ValueError(f"params[{i}] has dtype {p.dtype}; estimators need real floating-point parameters")
    return params


def _scalar(value: Tensor, what: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must return a scalar tensor, got {shape}")
    return value.reshape(())


def _float64_zeros(p: Tensor) -> Tensor:
    return torch.zeros(p.shape, dtype=torch.float64, device=p.device)


def _batched_vjp(output: Tensor, inputs: Sequence[Tensor], cotangents: Tensor) -> list[Tensor | None]:
    """``[J_x^T c for each c in cotangents]`` for every input x (vmap, with a plain loop as fallback)."""
    try:
        return list(torch.autograd.grad(output, inputs, cotangents, retain_graph=True,
                                        allow_unused=True, is_grads_batched=True))
    except RuntimeError:  # an op without a batching rule
        rows = [torch.autograd.grad(output, inputs, c, retain_graph=True, allow_unused=True) for c in cotangents]
        return [None if r[0] is None else torch.stack(r) for r in zip(*rows)]


def exact_diagonal(loss_fn: Callable[[], Tensor], params: Iterable[Tensor], *, group=None) -> list[Tensor]:
    """``diag(nabla^2 L(theta))``, exactly (up to float rounding), by one Hessian row per coordinate.

    ``loss_fn`` takes no argument and returns the scalar loss at the current
    parameters. Costs one backward pass per coordinate (batched by vmap): for
    small problems, the oracle of the other estimators. Over ranks: the average
    of the ranks' diagonals (the diagonal of the mean of their losses).
    """
    params = _param_list(params)
    distributed.refuse_sharded(params, "exact_diagonal")
    group = distributed.resolve_group(group)
    with torch.enable_grad():
        loss = _scalar(loss_fn(), "loss_fn")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        diagonals = []
        for p, g in zip(params, grads):
            diag = _float64_zeros(p).reshape(-1)
            if g is not None and g.requires_grad:  # else the gradient does not depend on p: zero curvature
                flat = g.reshape(-1)
                n = flat.numel()
                chunk = max(1, _BATCH_ELEMENTS // max(n, 1))
                for start in range(0, n, chunk):
                    idx = torch.arange(start, min(start + chunk, n), device=p.device)
                    basis = torch.zeros(len(idx), n, dtype=flat.dtype, device=p.device)
                    basis[torch.arange(len(idx)), idx] = 1
                    (rows,) = _batched_vjp(flat, [p], basis)
                    if rows is not None:
                        diag[idx] = rows.reshape(len(idx), n)[torch.arange(len(idx)), idx].double()
            diagonals.append(diag.reshape(p.shape))
    return distributed.all_reduce_mean_(diagonals, group)


def _probe(p: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else p.device
    if kind == "gaussian":
        u = torch.randn(p.shape, dtype=torch.float64, device=device, generator=generator)
    else:
        u = torch.randint(0, 2, p.shape, device=device, generator=generator).to(torch.float64) * 2 - 1
    return u.to(device=p.device, dtype=p.dtype)


def _hvp_double_backward(loss_fn, params, probes) -> list[Tensor]:
    loss = _scalar(loss_fn(), "loss_fn")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    if live:
        dot = sum((g * probes[i]).sum() for i, g in live)
        hvps = torch.autograd.grad(dot, params, allow_unused=True)
        out = [o if h is None else h for o, h in zip(out, hvps)]
    return out


def _hvp_forward_over_reverse(loss_fn, params, probes) -> list[Tensor]:
    """H u as the jvp of the gradient: the parameters become dual tensors (tangent u) in place.

    The values are restored bit for bit afterwards, and so is each parameter's
    version counter, so a graph built before the call stays usable.
    """
    saved = [p.detach().clone() for p in params]
    versions = [p._version for p in params]
    try:
        with fwAD.dual_level(), warnings.catch_warnings():
            # torch registers forward-mode decompositions lazily through torch.jit.script, which warns about itself
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            with torch.no_grad():
                for p, s, u in zip(params, saved, probes):
                    p.copy_(fwAD.make_dual(s, u))
            loss = _scalar(loss_fn(), "loss_fn")
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            out = []
            for p, g in zip(params, grads):
                tangent = None if g is None else fwAD.unpack_dual(g).tangent
                out.append(torch.zeros_like(p) if tangent is None else tangent.detach())
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        unsafe_set = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
        if unsafe_set is not None:
            unsafe_set(tuple(params), tuple(versions))
    return out


def hutchinson(loss_fn: Callable[[], Tensor], params: Iterable[Tensor], *, samples: int = 1,
               probe: str = "gaussian", generator: torch.Generator | None = None,
               mode: str = "auto", group=None) -> list[Tensor]:
    """Hutchinson's estimate ``(1/n) sum_s u_s * (H u_s)`` of ``diag(H)`` (paper Algorithm 1).

    ``u ~ N(0, I)`` (``probe="gaussian"``) or uniform on {-1, +1}
    (``"rademacher"``), drawn in float64 from ``generator``, parameter by
    parameter in order, sample after sample. Unbiased; entries can be negative.
    Per-coordinate variance of one sample: Gaussian ``2 H_ii^2 + sum_{j != i} H_ij^2``,
    Rademacher ``sum_{j != i} H_ij^2``.

    Hessian-vector products are forward-over-reverse (the jvp of the gradient;
    ``mode="forward"``), falling back to double backward where forward mode is
    unsupported (``mode="auto"``); ``mode="double_backward"`` forces the latter.

    Over ranks: the average of the ranks' estimates, which is ``u * (mean_r H_r) u``
    only if every rank draws the same u: give every rank a generator with the
    same seed (:func:`sophia_ref.distributed.rank_generator` with ``per_rank=False``).
    """
    params = _param_list(params)
    distributed.refuse_sharded(params, "hutchinson")
    group = distributed.resolve_group(group)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} is not valid; accepted range: integers >= 1")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is not valid; accepted values: {', '.join(map(repr, PROBES))}")
    if mode not in HVP_MODES:
        raise ValueError(f"mode={mode!r} is not valid; accepted values: {', '.join(map(repr, HVP_MODES))}")
    forward_ok = mode != "double_backward" and all(p.is_leaf for p in params)
    if mode == "forward" and not forward_ok:
        raise ValueError("mode='forward' needs leaf parameters")
    total = [_float64_zeros(p) for p in params]
    with torch.enable_grad():
        for _ in range(samples):
            probes = [_probe(p, probe, generator) for p in params]
            hvps = None
            if forward_ok:
                try:
                    hvps = _hvp_forward_over_reverse(loss_fn, params, probes)
                except (RuntimeError, NotImplementedError):
                    if mode == "forward":
                        raise
                    forward_ok = False  # an op without a forward-mode formula: use double backward from now on
            if hvps is None:
                hvps = _hvp_double_backward(loss_fn, params, probes)
            for acc, u, hu in zip(total, probes, hvps):
                acc.add_(u.double() * hu.double())
    return distributed.all_reduce_mean_([acc / samples for acc in total], group)


def _flat_logits(logits_fn: Callable[[], Tensor]) -> Tensor:
    logits = logits_fn()
    if not isinstance(logits, Tensor) or logits.ndim < 1 or logits.shape[-1] < 1 or not logits.is_floating_point():
        got = f"shape {tuple(logits.shape)}, dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits_fn must return floating-point logits shaped (B, V) or (..., V), got {got}")
    return logits.reshape(-1, logits.shape[-1])


def gnb(logits_fn: Callable[[], Tensor], params: Iterable[Tensor], *,
        generator: torch.Generator | None = None, group=None) -> list[Tensor]:
    """Gauss-Newton-Bartlett estimate (paper Algorithm 2): ``B * ghat * ghat``.

    ``logits_fn()`` returns logits shaped (B, V) or (..., V); every one of the B
    rows is a prediction. Labels ``yhat_b ~ softmax(f_b)`` are drawn from
    ``generator``; ``ghat = grad (1/B) sum_b CE(f_b, yhat_b)``. Never negative; its
    expectation is :func:`gnb_expectation`, the Gauss-Newton diagonal.

    Over ranks: B is the global number of predictions and ghat the gradient of the
    global mean, summed over ranks before it is squared; each rank's labels come
    from its own generator, which must differ across ranks
    (:func:`sophia_ref.distributed.rank_generator` with ``per_rank=True``).
    """
    params = _param_list(params)
    group = distributed.resolve_group(group)
    with torch.enable_grad():
        logits = _flat_logits(logits_fn)
        batch = distributed.global_count(logits.shape[0], group, logits.device)
        probs = torch.softmax(logits.detach().double(), dim=-1)
        sample_device = generator.device if generator is not None else probs.device
        labels = torch.multinomial(probs.to(sample_device), 1, generator=generator).reshape(-1).to(logits.device)
        if group is None:
            loss = torch.nn.functional.cross_entropy(logits, labels)  # mean over the B predictions
        else:  # this rank's share of the global mean: its sum over the global B, summed over ranks below
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / batch
        if distributed.sharded(params):  # FSDP2: its backward sums over the ranks and shards the result
            grads = distributed.grads_by_backward(loss, params, group)
            return [torch.zeros_like(p, dtype=torch.float64) if g is None else batch * g.double() * g.double()
                    for p, g in zip(params, grads)]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    ghat = distributed.all_reduce_sum_([_float64_zeros(p) if g is None else g.double() for p, g in zip(params, grads)],
                                       group)
    return [batch * g * g for g in ghat]


def _gnb_expectation_sharded(logits_fn, params, group) -> list[Tensor]:
    """gnb_expectation for DTensor (FSDP2) parameters, whose gradients only FSDP's backward produces.

    FSDP's backward averages over the ranks, so the (prediction, label) pairs cannot each run on their own
    rank: every rank runs the same sequence of global pairs, one forward and backward each, and only the
    pair's owner puts a nonzero cotangent on its row, ``sqrt(p_bv / B) (p_b - e_v)``. The reduced gradient
    is then that pair's ``sqrt(p_bv / B) J_b^T (p_b - e_v)``, sharded, and its square is the pair's term."""
    import torch.distributed as dist

    world, me = distributed.world_size(group), (0 if group is None else dist.get_rank(group))
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    with torch.enable_grad():
        first = _flat_logits(logits_fn)
        local, vocab = first.shape
        counts = [local] if group is None else [None] * world
        if group is not None:
            dist.all_gather_object(counts, local, group=group)
        batch = sum(counts)
        probs = torch.softmax(first.detach().double(), dim=-1)
        del first
        for owner, rows in enumerate(counts):
            for b in range(rows):
                for v in range(vocab):
                    logits = _flat_logits(logits_fn)
                    cot = torch.zeros_like(logits, dtype=torch.float64)
                    if owner == me:
                        cot[b] = probs[b] * (probs[b, v] / batch).sqrt()
                        cot[b, v] -= (probs[b, v] / batch).sqrt()
                    grads = distributed.grads_by_backward(logits, params, group, grad_output=cot.to(logits.dtype))
                    for acc, g in zip(total, grads):
                        if g is not None:
                            acc.add_(g.double() ** 2)
    return total


def gnb_expectation(logits_fn: Callable[[], Tensor], params: Iterable[Tensor], *, group=None) -> list[Tensor]:
    """The exact expectation of :func:`gnb`: the Gauss-Newton diagonal of the mean cross-entropy.

    ``(1/B) sum_b diag(J_b^T (diag(p_b) - p_b p_b^T) J_b)``, computed by
    enumerating labels: ``diag(p) - p p^T = sum_v p_v (e_v - p)(e_v - p)^T``, so
    it is ``(1/B) sum_b sum_v p_bv (J_b^T (e_v - p_b))^2``, one vector-Jacobian
    product per (prediction, label) pair. Exact up to rounding; for small B * V.
    Over ranks: each rank's sum over its own predictions, summed, over the global B. Under FSDP2
    (DTensor parameters): one forward and one backward per global (prediction, label) pair, every rank
    taking part in each (see :func:`_gnb_expectation_sharded`); for small problems, as always.
    """
    params = _param_list(params)
    group = distributed.resolve_group(group)
    if distributed.sharded(params):
        return _gnb_expectation_sharded(logits_fn, params, group)
    total = [_float64_zeros(p) for p in params]
    with torch.enable_grad():
        logits = _flat_logits(logits_fn)
        local, vocab = logits.shape
        batch = distributed.global_count(local, group, logits.device)
        probs = torch.softmax(logits.detach().double(), dim=-1)
        pairs = [(b, v) for b in range(local) for v in range(vocab)]
        chunk = max(1, _BATCH_ELEMENTS // logits.numel())
        for start in range(0, len(pairs), chunk):
            block = pairs[start:start + chunk]
            rows = torch.tensor([b for b, _ in block], device=logits.device)
            labels = torch.tensor([v for _, v in block], device=logits.device)
            cot = torch.zeros((len(block), local, vocab), dtype=torch.float64, device=logits.device)
            cot[torch.arange(len(block)), rows] = probs[rows]
            cot[torch.arange(len(block)), rows, labels] -= 1.0       # p_b - e_v on row b
            weights = probs[rows, labels] / batch                      # p_bv / B
            vjps = _batched_vjp(logits, params, cot.to(logits.dtype))
            for acc, jv in zip(total, vjps):
                if jv is not None:
                    sq = jv.double().reshape(len(block), -1) ** 2
                    acc.add_((weights[:, None] * sq).sum(0).reshape(acc.shape))
    return distributed.all_reduce_sum_(total, group)
