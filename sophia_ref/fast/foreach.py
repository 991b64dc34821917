"""The ``foreach`` backend: one bucket's step as ``torch._foreach_*`` ops (CPU and CUDA).

The equations of :mod:`.plan`, each applied to every tensor of the bucket at once, written for
the fewest passes over memory rather than the reference's order of roundings:

    m     <- lerp(m, g, 1 - b1)                   = b1 m + (1 - b1) g
    h     <- lerp(h, hhat, 1 - b2)                on refresh steps
    u     <- clip(m / (bc d), c),   d = max(scale h_used, eps)  or  scale h_used + eps
    theta <- theta (1 - lr lam) - lr u            (one multiply, then one fused multiply-add)

Each line differs from the reference's float32 evaluation by at most a rounding or two of its
operands (``lerp`` and the fused add round once where the reference rounds twice; ``bc d`` rounds
the bias correction into the denominator): the certification's tolerance model, not bit
equality, is its contract (the triton backend matches the float32 evaluation bit for bit in the
interpreter). The sign form ``sign(m) min(|m| / d, c)`` equals the clip form where ``d > 0``
but not where ``d < 0`` (a negative h in the added-eps dialects), so it has its own few lines.

Passes over memory, in float32 vectors read or written per parameter, on a CPU step without
refresh: 1 for the non-finite check of g, 3 for the momentum's lerp, 4 for d (a product, then
the eps floor), 5 for the quotient and its clip, 5 for the decay and the update: 18, against 20
for ``torch.optim.AdamW(foreach=True)`` (which also allocates its square-root temporaries).

Workspace: ``u`` needs one float32 buffer per parameter. On CPU, where every fresh allocation of a
large tensor costs page faults, the optimizer keeps it between steps (``scratch``) and the win
rate's count is read from it lazily, when asked (no cost per step). On CUDA the buffer comes from
the caching allocator each step and the count is taken at once, on the device, in three launches.
Parameters of another dtype (bfloat16, float16) are computed in float32 and rounded back to
nearest; their m and h are float32.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import Tensor

from .. import rule
from .plan import SCALARS, Bucket

_COL = {name: i for i, name in enumerate(SCALARS)}

#: the win rate's numerator: a 0-d device tensor, or a callable that computes one when asked
Count = Tensor | Callable[[], Tensor]


def _col(rows, name: str) -> list[float]:
    i = _COL[name]
    return [row[i] for row in rows]


def _by_value(values: list[float]) -> dict[float, list[int]]:
    """Indices grouped by value, so a scalar-only foreach op runs once per distinct value."""
    groups: dict[float, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        groups[v].append(i)
    return groups


def _unclipped(u: list[Tensor], c: list[float]) -> Tensor:
    """How many coordinates have ``|u| < c``: the 0-norm of ``min(|u| - c, 0)``, which is nonzero exactly there
    (the difference of two distinct floats is never 0)."""
    gaps = torch._foreach_abs(u)
    torch._foreach_sub_(gaps, c)
    torch._foreach_clamp_max_(gaps, 0.0)
    return torch.stack(torch._foreach_norm(gaps, 0)).sum().to(torch.int64)


def step(bucket: Bucket, knobs: rule.Knobs, scratch: list[Tensor] | None = None) -> Count | None:
    """Update the bucket's parameters and state in place; return the unclipped count (None for no tensors).

    ``scratch``: one float32 (float64 for float64 parameters) buffer per parameter, kept by the caller
    between steps; ``None`` allocates it for this step."""
    items = bucket.items
    if not items:
        return None
    rows = [it.scalars for it in items]
    work = torch.float32 if bucket.dtype in (torch.bfloat16, torch.float16) else bucket.dtype
    p = [it.p for it in items]
    theta = p if work == bucket.dtype else [x.to(work) for x in p]
    g = [it.g if it.g.dtype == work else it.g.to(work) for it in items]
    m = [it.m for it in items]
    h = [it.h for it in items]

    for _ in range(knobs.momentum_updates):
        torch._foreach_lerp_(m, g, _col(rows, "one_minus_b1"))                  # b1 m + (1 - b1) g
    refreshing = [i for i, it in enumerate(items) if it.hhat is not None]
    h_used = h
    if refreshing and knobs.refresh == "next_step":
        fresh = set(refreshing)
        h_used = [x.clone() if i in fresh else x for i, x in enumerate(h)]                # the pre-refresh h
    if refreshing:
        hr = [h[i] for i in refreshing]
        hhat = [items[i].hhat if items[i].hhat.dtype == work else items[i].hhat.to(work) for i in refreshing]
        torch._foreach_lerp_(hr, hhat, [rows[i][_COL["one_minus_b2"]] for i in refreshing])  # b2 h + (1 - b2) hhat

    scale, eps, c = _col(rows, "scale"), _col(rows, "eps"), _col(rows, "c")
    if scratch is None:
        d = torch._foreach_mul(h_used, scale)
    else:
        d = scratch
        for di, hi, si in zip(d, h_used, scale):
            torch.mul(hi, si, out=di)
    if knobs.eps_placement == "max":
        torch._foreach_clamp_min_(d, eps)                                       # max(scale h, eps)
        if any(e == 0.0 for e in eps):
            torch._foreach_add_(d, 0.0)  # -0.0 -> +0.0, so m / d keeps the sign of m
    else:
        torch._foreach_add_(d, eps)                                             # scale h + eps
    if knobs.bias_correction:
        torch._foreach_mul_(d, _col(rows, "bias"))                              # (m_t / (1 - b1^t)) / d = m_t / (bc d)
    if knobs.clip_form == "clip":
        if scratch is None:
            u = torch._foreach_div(m, d)
            torch._foreach_maximum_(u, [-x for x in c])
            torch._foreach_minimum_(u, c)                                       # clip(m / d, c)
        else:  # CPU: per-tensor ops that write into d's buffer and clip in one pass
            u = d
            for ui, mi, ci in zip(u, m, c):
                torch.div(mi, ui, out=ui).clamp_(-ci, ci)                       # clip(m / d, c)
    else:  # sign(m) min(|m| / d, c): the clip form where d > 0, but the bare quotient where d < 0 (a negative h)
        u = torch._foreach_div(torch._foreach_abs(m), d)
        torch._foreach_minimum_(u, c)
        torch._foreach_mul_(u, torch._foreach_sign(m))
    if knobs.eps_placement == "add" or any(e == 0.0 for e in eps):
        for ui, mi in zip(u, m):
            ui.masked_fill_(mi == 0, 0.0)                                       # 0 / 0 read as 0
    count: Count = (lambda: _unclipped(u, c)) if scratch is not None else _unclipped(u, c)

    decay = [1.0 + x for x in _col(rows, "decay")]                              # 1 - lr lam
    kept = [i for i, x in enumerate(decay) if x != 1.0]
    if kept:
        torch._foreach_mul_([theta[i] for i in kept], [decay[i] for i in kept])
    for lr, where in _by_value(_col(rows, "lr")).items():
        torch._foreach_add_([theta[i] for i in where], [u[i] for i in where], alpha=-lr)  # - lr u
    if work != bucket.dtype:
        for pi, new in zip(p, theta):
            pi.copy_(new)                                                       # rounded to the parameter dtype
    return count
