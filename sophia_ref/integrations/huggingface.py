"""Hugging Face ``Trainer``: ``Trainer(..., optimizers=(sophia, scheduler), callbacks=[SophiaTrainerCallback()])``.

The Trainer does not show callbacks its batches, so the callback reads them from the model: a forward
pre-hook keeps the keyword inputs of the last training forward. On a refresh step the optimizer calls
:func:`sophia_ref.fast.gnb_refresh` on them (without ``labels``: the model's own loss is not needed), on
``sub_batch`` examples. The win rate is added to each log line as ``sophia_win_rate``.
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..fast import gnb_refresh
from . import attach_refresh, win_rate


class SophiaTrainerCallback(TrainerCallback):
    def __init__(self, sub_batch: int | None = None, generator=None, drop=("labels",)):
        if sub_batch is not None and (isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1):
            raise ValueError(f"sub_batch={sub_batch!r} is not valid: expected a positive integer or None")
        self.sub_batch, self.generator, self.drop = sub_batch, generator, tuple(drop)
        self._inputs = None
        self._handle = None
        self._refreshing = False
        self.refreshes = 0

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None or model is None:
            raise ValueError("SophiaTrainerCallback needs the Trainer's model and optimizer")
        self._optimizer = attach_refresh(optimizer, lambda: self._refresh(model))
        self._handle = model.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        if module.training and not self._refreshing:
            self._inputs = {k: v for k, v in kwargs.items() if k not in self.drop}

    def _refresh(self, model):
        if self._inputs is None:
            raise RuntimeError("SophiaTrainerCallback: a refresh step came before any training forward")
        self.refreshes += 1
        self._refreshing = True
        try:
            return gnb_refresh(model, dict(self._inputs), params=self._optimizer, sub_batch=self.sub_batch,
                               generator=self.generator)
        finally:
            self._refreshing = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        rate = win_rate(self._optimizer)
        if logs is not None and rate is not None:
            logs["sophia_win_rate"] = rate
            if state.log_history:
                state.log_history[-1]["sophia_win_rate"] = rate

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
