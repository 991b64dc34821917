"""PyTorch Lightning: ``Trainer(callbacks=[SophiaCallback()])`` with a Sophia returned by
``configure_optimizers``.

On every training batch the callback keeps the batch's inputs; when the optimizer reaches a refresh step
it calls :func:`sophia_ref.fast.gnb_refresh` on them (``sub_batch`` examples), with the LightningModule
as the model (its forward must return logits). The win rate is logged as ``sophia/win_rate`` every
``log_every_n_steps``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl

from ..fast import gnb_refresh
from . import attach_refresh, win_rate


def _first(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class SophiaCallback(pl.Callback):
    """``inputs(batch)``: what the module's forward takes (default: the batch's first element); ``sub_batch``:
    refresh on the first n examples (default: all); ``generator``: the label sampler's stream; ``log_name``:
    the metric's name (None: do not log)."""

    def __init__(self, inputs: Callable[[Any], Any] = _first, sub_batch: int | None = None, generator=None,
                 log_name: str | None = "sophia/win_rate"):
        if sub_batch is not None and (isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1):
            raise ValueError(f"sub_batch={sub_batch!r} is not valid: expected a positive integer or None")
        self.inputs, self.sub_batch, self.generator, self.log_name = inputs, sub_batch, generator, log_name
        self._batch = None
        self.refreshes = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"SophiaCallback expects one optimizer, got {len(trainer.optimizers)}")
        self._optimizer = attach_refresh(trainer.optimizers[0], lambda: self._refresh(pl_module))

    def _refresh(self, pl_module):
        if self._batch is None:
            raise RuntimeError("SophiaCallback: a refresh step came before any training batch")
        self.refreshes += 1
        return gnb_refresh(pl_module, self.inputs(self._batch), params=self._optimizer, sub_batch=self.sub_batch,
                           generator=self.generator)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.log_name and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            rate = win_rate(self._optimizer)
            if rate is not None:
                pl_module.log(self.log_name, rate, on_step=True, prog_bar=False)
