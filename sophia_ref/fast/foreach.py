"""The ``foreach`` backend: one bucket's step as ``torch._foreach_*`` ops (CPU and CUDA).

Each line is one equation of :mod:`.plan` applied to every tensor of the bucket at once, with
the per-parameter scalars as scalar lists; the operations and their order are those of the
reference's float32 evaluation (``rule.update`` on float32 tensors), so on float32 parameters
the two agree bit for bit. Parameters of another dtype (bfloat16, float16) are computed in
float32 and rounded back; their m and h are float32. Returns a 0-d device tensor: the number
of coordinates whose step was not clipped, the win rate's numerator (no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import rule
from .plan import SCALARS, Bucket

_COL = {name: i for i, name in enumerate(SCALARS)}


def _col(bucket_scalars, name: str) -> list[float]:
    i = _COL[name]
    return [row[i] for row in bucket_scalars]


def step(bucket: Bucket, knobs: rule.Knobs) -> Tensor:
    items = bucket.items
    rows = [it.scalars for it in items]
    work = torch.float32 if bucket.dtype in (torch.bfloat16, torch.float16) else bucket.dtype
    p = [it.p for it in items]
    theta = p if work == bucket.dtype else [x.to(work) for x in p]
    g = [it.g if it.g.dtype == work else it.g.to(work) for it in items]
    m = [it.m for it in items]
    h = [it.h for it in items]

    for _ in range(knobs.momentum_updates):
        torch._foreach_mul_(m, _col(rows, "b1"))                               # b1 m
        torch._foreach_add_(m, torch._foreach_mul(g, _col(rows, "one_minus_b1")))  # + (1 - b1) g
    refreshing = [i for i, it in enumerate(items) if it.hhat is not None]
    h_before = None
    if refreshing and knobs.refresh == "next_step":
        h_before = [x.clone() for x in h]
    if refreshing:
        hr = [h[i] for i in refreshing]
        hhat = [items[i].hhat if items[i].hhat.dtype == work else items[i].hhat.to(work) for i in refreshing]
        torch._foreach_mul_(hr, [rows[i][_COL["b2"]] for i in refreshing])      # b2 h
        torch._foreach_add_(hr, torch._foreach_mul(hhat, [rows[i][_COL["one_minus_b2"]] for i in refreshing]))
    h_used = h_before if h_before is not None else h

    m_used = torch._foreach_div(m, _col(rows, "bias")) if knobs.bias_correction else m  # m_t / (1 - b1^t)
    d = torch._foreach_mul(h_used, _col(rows, "scale"))                         # gamma h
    eps = _col(rows, "eps")
    if knobs.eps_placement == "max":
        torch._foreach_clamp_min_(d, eps)                                       # max(gamma h, eps)
        torch._foreach_add_(d, 0.0)  # -0.0 -> +0.0 where eps = 0, so m / d keeps the sign of m
    else:
        torch._foreach_add_(d, eps)                                             # gamma h + eps
    c = _col(rows, "c")
    if knobs.clip_form == "clip":
        u = torch._foreach_div(m_used, d)
        torch._foreach_maximum_(u, [-x for x in c])
        torch._foreach_minimum_(u, c)                                           # clip(m / d, c)
    else:
        u = torch._foreach_div(torch._foreach_abs(m_used), d)
        torch._foreach_minimum_(u, c)
        torch._foreach_mul_(u, torch._foreach_sign(m_used))                     # sign(m) min(|m| / d, c)
    if knobs.eps_placement == "add" or any(e == 0.0 for e in eps):
        for ui, mi in zip(u, m_used):
            ui.masked_fill_(mi == 0, 0.0)                                       # 0 / 0 read as 0
    unclipped = torch.stack([torch.count_nonzero(ui.abs() < ci) for ui, ci in zip(u, c)]).sum() if u else None

    s = torch._foreach_mul(u, _col(rows, "lr"))                                 # lr u
    decay = _col(rows, "decay")
    if all(x == 0.0 for x in decay):
        delta = torch._foreach_neg(s)
    else:
        delta = list(torch._foreach_mul(theta, decay))                          # -(lr lam) theta
        torch._foreach_sub_(delta, s)                                           # - lr u
        for i, x in enumerate(decay):
            if x == 0.0:
                delta[i] = torch.neg(s[i])
    if work == bucket.dtype:
        torch._foreach_add_(p, delta)
    else:
        for pi, new in zip(p, torch._foreach_add(theta, delta)):
            pi.copy_(new)                                                       # rounded to the parameter dtype
    return unclipped
