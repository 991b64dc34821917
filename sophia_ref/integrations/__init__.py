"""Thin trainer integrations: the Hessian refresh every k steps and the win rate in the logs; nothing else.

- :mod:`.lightning`: :class:`~sophia_ref.integrations.lightning.SophiaCallback` for PyTorch Lightning;
- :mod:`.huggingface`: :class:`~sophia_ref.integrations.huggingface.SophiaTrainerCallback` for the
  Hugging Face ``Trainer``.

Both work with ``SophiaRef`` and ``sophia_ref.fast.Sophia``: they set the optimizer's
``hessian_estimator`` to a :func:`sophia_ref.fast.gnb_refresh` of the current batch (or a sub-batch of
it), which the optimizer calls on its own refresh steps only (every ``hessian_interval`` steps). The
trainer keeps the loop, the backward, the scheduler and the logging.
"""

from __future__ import annotations

import torch


def attach_refresh(optimizer, estimate) -> torch.optim.Optimizer:
    """Make ``estimate`` (a callable of no argument) the optimizer's Hessian estimator, after checking that it is a
    Sophia that takes one."""
    raw = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps optimizers in a LightningOptimizer
    if not hasattr(raw, "hessian_estimator") or not isinstance(raw, torch.optim.Optimizer):
        raise TypeError(f"the Sophia callback needs a sophia_ref optimizer (SophiaRef or sophia_ref.fast.Sophia), "
                        f"got {type(raw).__name__}")
    raw.hessian_estimator = estimate
    return raw


def win_rate(optimizer) -> float | None:
    """The last step's win rate (one host read), or None before the first step or after a skipped one."""
    raw = getattr(optimizer, "optimizer", optimizer)
    d = getattr(raw, "diagnostics", None)
    if d is None or d.skipped:
        return None
    return float(d.win_rate)
