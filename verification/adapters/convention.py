"""Adapter for SophiaRef and any optimizer that follows its convention.

The convention: a ``torch.optim.Optimizer`` built as ``cls(params, lr=..., betas=(b1, b2),
gamma=..., eps=..., weight_decay=..., hessian_interval=k)`` (plus ``dialect=`` and
``batch_size=`` where its signature has them), stepped as ``step(closure=None,
hessian_estimate=None)``, keeping per-parameter state ``m``, ``h`` and ``step`` (the
names ``exp_avg``/``momentum`` and ``hessian``/``hessian_moment`` are accepted too).
Such a class needs no adapter of its own.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from sophia_ref import SophiaRef

from ._torch import TorchAdapter
from .base import Hyperparameters, Refresh, materialize, reloaded

M_KEYS = ("m", "exp_avg", "momentum")
H_KEYS = ("h", "hessian", "hessian_moment")


def _key(state: dict, candidates: tuple[str, ...], what: str) -> str:
    for key in candidates:
        if key in state:
            return key
    raise KeyError(f"optimizer state has none of {candidates} for {what}; its keys are {sorted(state)}")


class ConventionAdapter(TorchAdapter):
    """Drives ``factory(params, **hyperparameters)`` through ``step(hessian_estimate=...)``."""

    def __init__(self, factory: Callable[..., torch.optim.Optimizer], name: str, version: str = "?",
                 dialect: str | None = None, extra: dict | None = None):
        super().__init__()
        self.factory, self.name, self.version, self.dialect = factory, name, version, dialect
        self.extra = dict(extra or {})

    def _keys(self, state: dict) -> tuple[str, str] | None:
        return (_key(state, M_KEYS, "m"), _key(state, H_KEYS, "h")) if state else None

    def _accepted(self) -> set[str] | None:
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters}

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self.tensors = [materialize(p, dtype, device).requires_grad_(True) for p in params]
        kwargs = {**dict(lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), gamma=hyper.gamma, eps=hyper.eps,
                         weight_decay=hyper.weight_decay, hessian_interval=hyper.hessian_interval,
                         batch_size=hyper.batch_size), **self.extra}  # extra overrides
        accepted = self._accepted()
        if accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in accepted or k in self.extra}
        self.kwargs = kwargs
        self.opt = self.factory(self._param_spec(), **kwargs)

    def round_trip(self) -> None:
        """A fresh optimizer on the same parameters, loaded from the old one's reloaded state_dict."""
        saved = reloaded(self.opt.state_dict())
        self.opt = self.factory(self._param_spec(), **self.kwargs)
        self.opt.load_state_dict(saved)

    def step(self, grads, refresh: Refresh | None) -> None:
        self._set_grads(grads)
        estimate = None if refresh is None else [h.to(device=p.device) for h, p in zip(refresh.hhat, self.tensors)]
        self.opt.step(hessian_estimate=estimate)

    def load(self, params, step, m, h) -> None:
        with torch.no_grad():
            for p, value, mi, hi in zip(self.tensors, params, m, h):
                p.copy_(value.to(dtype=p.dtype, device=p.device))
                s = self.opt.state[p]
                m_key = _key(s, M_KEYS, "m") if s else "m"
                h_key = _key(s, H_KEYS, "h") if s else "h"
                like = s.get(m_key, p)
                state_dtype = like.dtype if s else torch.float64
                s[m_key] = mi.to(device=p.device, dtype=state_dtype).clone()
                s[h_key] = hi.to(device=p.device, dtype=state_dtype).clone()
                s["step"] = step
                if isinstance(self.opt, SophiaRef) and p.dtype != torch.float64:
                    s["master"] = value.to(device=p.device, dtype=torch.float64).clone()  # full-precision master
        if isinstance(self.opt, SophiaRef):
            self.opt._step = step  # its optimizer-wide step counter
