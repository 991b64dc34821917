r"""A cheap Gauss-Newton-Bartlett refresh for a plain PyTorch training loop: :func:`gnb_refresh`.

It computes what :func:`sophia_ref.gnb` computes (the paper's Algorithm 2),

.. math::  \hat y_b \sim \mathrm{softmax}(f_b), \quad
           \hat g = \nabla_\theta \tfrac1B \textstyle\sum_b \mathrm{CE}(f_b, \hat y_b), \quad
           \hat h = B\, \hat g \odot \hat g,

where the B rows ``f_b`` are every prediction of the (sub-)batch (batch x sequence for a language
model), but without the costs a training step cannot afford:

- **labels by Gumbel-max**: ``yhat_b = argmax_v (f_bv - log E_bv)`` with ``E ~ Exp(1)``, which is
  exactly a draw from ``softmax(f_b)`` (``-log E`` is standard Gumbel). No distribution object, no
  normalisation, no float64 probabilities;
- **no float32 copy of the logits**: the rows are processed in chunks of at most
  ``chunk_bytes`` of float32 workspace. Each chunk is upcast once, sampled, and turned into its
  cross-entropy cotangent ``(softmax(f_b) - e_{yhat_b}) / B``, which is written into one buffer of
  the logits' own dtype (the buffer the cross-entropy backward would allocate anyway). Autograd then
  runs one vector-Jacobian product from the logits to the parameters; no loss tensor is built;
- **a sub-batch**: ``sub_batch=n`` uses the first n examples of the batch (the paper refreshes on a
  part of the batch; the estimate is unbiased for the Gauss-Newton diagonal of whatever it is given).

The estimate is in float32 (float64 for float64 parameters): the dtype of
:class:`~sophia_ref.fast.Sophia`'s h, so the step reads it without a cast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import distributed

DEFAULT_CHUNK_BYTES = 64 * 2**20


def _parameters(model: torch.nn.Module, params) -> list[Tensor]:
    if params is None:
        return [p for p in model.parameters() if p.requires_grad]
    if isinstance(params, torch.optim.Optimizer):
        return [p for group in params.param_groups for p in group["params"]]
    if isinstance(params, Tensor):
        return [params]
    return list(params)


def _estimate_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _first_rows(inputs: Any, n: int | None) -> Any:
    """The first ``n`` examples (dim 0) of a tensor, or of each tensor of a tuple, list or dict."""
    if n is None:
        return inputs
    if isinstance(inputs, Tensor):
        return inputs[:n]
    if isinstance(inputs, Mapping):
        return {k: _first_rows(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_first_rows(v, n) for v in inputs)
    return inputs


def _call(model, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _logits_of(output: Any) -> Tensor:
    """Logits from a model's output: a tensor, an object with ``.logits`` (Hugging Face), a mapping
    with a ``"logits"`` entry, or a tuple whose first element is the logits."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    elif not isinstance(output, Tensor) and hasattr(output, "logits"):
        output = output.logits
    elif isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    if not isinstance(output, Tensor) or output.ndim < 1 or output.shape[-1] < 1 or not output.is_floating_point():
        got = f"shape {tuple(output.shape)}, dtype {output.dtype}" if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"gnb_refresh: the model must return floating-point logits shaped (..., V) (a tensor, a "
                         f"tuple whose first element is one, an object with .logits or a dict with 'logits'), got {got}")
    if not output.requires_grad:
        raise ValueError("gnb_refresh: the logits do not require grad; call it outside torch.no_grad() and "
                         "with parameters that require grad")
    return output


def sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One label per row of ``logits`` (shape (R, V), any float dtype), drawn from ``softmax(row)`` by
    Gumbel-max in float32: ``argmax_v (f_v - log E_v)``, ``E ~ Exp(1)``."""
    scores = logits.detach().float()  # the logits themselves when they are float32: not written to
    noise = torch.empty_like(scores, memory_format=torch.contiguous_format).exponential_(generator=generator)
    return noise.log_().neg_().add_(scores).argmax(dim=-1)


def _cotangent(logits: Tensor, generator: torch.Generator | None, chunk_bytes: int, rows: int) -> Tensor:
    """``(softmax(f_b) - e_{yhat_b}) / B`` for every row b (B = ``rows``, the global count), in the logits'
    dtype, built chunk by chunk."""
    flat = logits.detach().reshape(-1, logits.shape[-1])
    local, vocab = flat.shape
    cot = torch.empty_like(flat)
    step = max(1, chunk_bytes // (4 * vocab))
    for start in range(0, local, step):
        chunk = flat[start:start + step]
        labels = sample_labels(chunk, generator)
        grad = torch.softmax(chunk.float(), dim=-1)
        grad[torch.arange(grad.shape[0], device=grad.device), labels] -= 1.0
        cot[start:start + step] = grad.div_(rows)
    return cot.reshape(logits.shape)


def gnb_refresh(model: torch.nn.Module, inputs: Any, *, params: Iterable[Tensor] | torch.optim.Optimizer | None = None,
                sub_batch: int | None = None, generator: torch.Generator | None = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, group=None) -> list[Tensor]:
    """One GNB estimate ``B * ghat * ghat`` per parameter, from one forward and one backward pass.

    ``model(inputs)`` (``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict) must
    return logits shaped (..., V). ``params``: the parameters to estimate for, in order; pass the
    optimizer itself to get them in its order (all groups), which is what
    ``Sophia.step(hessian_estimate=...)`` expects. Default: ``model``'s parameters that require grad.
    A parameter the logits do not depend on gets zeros. ``sub_batch``: use only the first n
    examples. ``generator`` drives the label sampling (on the logits' device). Autocast, if active,
    applies to the forward pass. Parameters' ``.grad`` are left untouched.

    ``group``: under ``torch.distributed``, the estimate for the global (sub-)batch on every rank, as
    :func:`sophia_ref.gnb` computes it (:mod:`sophia_ref.distributed`): B is the global number of
    predictions and the gradients are summed over ranks before they are squared; give each rank its own
    label stream (``rank_generator(seed, per_rank=True)``). Call it with the module DDP wraps
    (``ddp_model.module``).

    Typical use, on refresh steps only::

        opt.step(hessian_estimate=lambda: gnb_refresh(model, x, params=opt, sub_batch=8))
    """
    if sub_batch is not None and (isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1):
        raise ValueError(f"gnb_refresh: sub_batch={sub_batch!r} is not valid: expected a positive integer or None")
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"gnb_refresh: chunk_bytes={chunk_bytes!r} is not valid: expected a positive integer")
    params = _parameters(model, params)
    if not params:
        raise ValueError("gnb_refresh: no parameters to estimate for")
    group = distributed.resolve_group(group)
    with torch.enable_grad():
        logits = _logits_of(_call(model, _first_rows(inputs, sub_batch)))
        rows = distributed.global_count(logits.numel() // logits.shape[-1], group, logits.device)
        cot = _cotangent(logits, generator, chunk_bytes, rows)
        if distributed.sharded(params):  # FSDP2: its backward sums over the ranks and shards the result
            grads = distributed.grads_by_backward(logits, params, group, grad_output=cot)
            return [torch.zeros_like(p, dtype=_estimate_dtype(p)) if g is None else
                    g.to(_estimate_dtype(p)).pow(2).mul(rows) for p, g in zip(params, grads)]
        grads = torch.autograd.grad(logits, params, grad_outputs=cot, allow_unused=True)
    ghat = []
    for p, g in zip(params, grads):
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        # autograd's own buffer when the dtype already matches: squared in place below
        ghat.append(torch.zeros(p.shape, dtype=dtype, device=p.device) if g is None else g.to(dtype))
    distributed.all_reduce_sum_(ghat, group)
    return [g.mul_(g).mul_(rows) for g in ghat]
