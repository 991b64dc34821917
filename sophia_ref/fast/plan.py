"""What one fast step does to each bucket of parameters, decided on the host before any kernel runs.

A *bucket* is the parameters of one device and one parameter dtype that a backend updates
together. For each parameter the plan holds its tensors (p, g, m, h, the estimate when it
refreshes) and one row of per-step scalars; the backends (:mod:`.foreach`, :mod:`.triton_step`)
only execute it. The scalars are the rule's (:mod:`sophia_ref.rule`), evaluated in float64 on
the host exactly as the reference's float32 evaluation sees them:

    m_t   = b1 m + (1 - b1) g                         (momentum_updates times)
    h_t   = b2 h + (1 - b2) hhat                      on refresh steps
    d     = max(scale h_used, eps)  or  scale h_used + eps
    u     = clip((m_t / bc) / d, c)  or  sign(m_t) min(|m_t / bc| / d, c)
    delta = theta (-(lr lam)) - lr u                  (-(lr u) when lam = 0)

with ``scale = gamma`` (times B where the batch factor is applied at step time; 1 in the rho
form), ``c = 1`` (rho in the rho form), ``bc = 1 - b1^t`` with bias correction (else 1) and
``h_used`` the pre-refresh h in the ``next_step`` phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import rule

#: the columns of a parameter's scalar row, in order
SCALARS = ("b1", "one_minus_b1", "b2", "one_minus_b2", "scale", "eps", "c", "bias", "lr", "decay")


@dataclass
class Item:
    """One parameter in one step."""

    p: Tensor
    g: Tensor
    m: Tensor
    h: Tensor
    hhat: Tensor | None          # the estimate folded into h this step, or None
    scalars: tuple[float, ...]   # SCALARS, in float64
    key: object = None           # the parameter these tensors are (the shards) of, for per-parameter caches


@dataclass
class Bucket:
    device: torch.device
    dtype: torch.dtype
    items: list[Item] = field(default_factory=list)


def scalars(hyper: rule.Hyper, knobs: rule.Knobs, t: int) -> tuple[float, ...]:
    """The row of :data:`SCALARS` for a parameter at its step t."""
    scale, c = (hyper.gamma, 1.0) if knobs.form == "gamma" else (1.0, hyper.gamma)
    if knobs.batch_factor == "step":
        scale = scale * hyper.batch_size
    bias = 1 - hyper.beta1 ** t if knobs.bias_correction else 1.0
    return (hyper.beta1, 1 - hyper.beta1, hyper.beta2, 1 - hyper.beta2, scale, hyper.eps, c, bias, hyper.lr,
            -(hyper.lr * hyper.weight_decay))


#: the knobs the fast backends implement, with the values they accept
SUPPORTED = {
    "form": rule.FORMS,
    "eps_placement": rule.EPS_PLACEMENTS,
    "clip_form": rule.CLIP_FORMS,
    "bias_correction": (False, True),
    "refresh": rule.REFRESH_PHASES,
    "batch_factor": rule.BATCH_FACTORS,
    "h_bias_correction": ("none",),
    "estimate_clamp": ("none",),
    "weight_decay_form": ("before",),
}


def unsupported(knobs: rule.Knobs) -> list[str]:
    """The knob settings the fast path cannot compute (empty when it computes them all)."""
    out = [f"{name}={getattr(knobs, name)!r}" for name, values in SUPPORTED.items()
           if getattr(knobs, name) not in values]
    if knobs.momentum_updates not in (1, 2):
        out.append(f"momentum_updates={knobs.momentum_updates!r}")
    return out
