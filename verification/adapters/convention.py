"""Adapter for SophiaRef and any ``torch.optim.Optimizer`` whose API can be found by behaviour.

The optimizer is built as ``factory(params, **keywords)`` and stepped through its own
``step()``. Which keywords carry the harness's hyperparameters, how an estimate is handed
in, and which entries of ``optimizer.state[p]`` (or of its param groups, or of the
optimizer itself) hold m, h and the counters, is found by
:func:`verification.conformance.discover.discover`, which steps a probe copy and passes
what it found to :meth:`ConventionAdapter.configure`. Until then (or where discovery fails)
the adapter falls back to the names of the original convention: ``lr``, ``betas``,
``gamma``, ``eps``, ``weight_decay``, ``hessian_interval``, ``batch_size``;
``step(hessian_estimate=...)``; state ``m``/``exp_avg``/``momentum``,
``h``/``hessian``/``hessian_moment`` and ``step``. :meth:`ConventionAdapter.build`
discovers on first use (once per factory), so a class in that convention, or one that
only names things differently, needs no adapter of its own.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Callable

import torch
from torch import Tensor

from ._torch import TorchAdapter
from .base import Hyperparameters, NotTeacherForceable, Refresh, as_float64, materialize, reloaded

M_KEYS = ("m", "exp_avg", "momentum")
H_KEYS = ("h", "hessian", "hessian_moment")
#: the harness's names, and the keyword each takes in the original convention
CONVENTION = {"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "gamma": "gamma", "eps": "eps",
              "weight_decay": "weight_decay", "hessian_interval": "hessian_interval", "batch_size": "batch_size"}


def _key(state: dict, candidates: tuple[str, ...], what: str) -> str:
    for key in candidates:
        if key in state:
            return key
    raise KeyError(f"optimizer state has none of {candidates} for {what}; its keys are {sorted(state)}")


def harness_values(hyper: Hyperparameters) -> dict:
    """The hyperparameters under the harness's names."""
    return dict(lr=hyper.lr, beta1=hyper.beta1, beta2=hyper.beta2, gamma=hyper.gamma, eps=hyper.eps,
                weight_decay=hyper.weight_decay, hessian_interval=hyper.hessian_interval,
                batch_size=hyper.batch_size)


def keywords(mapping: dict[str, str], hyper: Hyperparameters) -> dict:
    """Constructor keywords from ``mapping`` (harness name -> keyword, ``name[i]`` for an entry of a tuple)."""
    values, out = harness_values(hyper), {}
    for name, target in mapping.items():
        key, _, index = target.partition("[")
        if index:
            slots = out.setdefault(key, [None, None])
            slots[int(index.rstrip("]"))] = values[name]
        else:
            out[key] = values[name]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _number(value) -> float | None:
    """A counter's value as a float: an int or float (not a bool), or a 0-d tensor; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Tensor) and value.dim() == 0:
        return float(value)
    return None


def _as_counter(old, value: int, template=None):
    """``value`` in the type of ``old`` (or of ``template`` where there is no old value): an int stays an int,
    a float a float, a 0-d tensor keeps its dtype and device."""
    like = old if old is not None else template
    if isinstance(like, Tensor):
        if old is not None:
            return old.fill_(value) if not old.requires_grad else torch.full_like(old, value)
        return torch.tensor(value, dtype=like.dtype)
    if isinstance(like, float):
        return float(value)
    return int(value)


class _Refreshes:
    """What the adapter knows of the refresh steps so far: a base (step, refreshes) and the steps since."""

    def __init__(self) -> None:
        self.base_step, self.base_count, self.since = 0, 0, []

    def stepped(self, refreshed: bool) -> None:
        self.since.append(bool(refreshed))

    def steps(self) -> int:
        return self.base_step + len(self.since)

    def count_at(self, step: int) -> int | None:
        """Refresh steps among ``1..step``, where this record covers them (None otherwise)."""
        if self.base_count is None or not self.base_step <= step <= self.steps():
            return None
        return self.base_count + sum(self.since[:step - self.base_step])

    def reset(self, step: int, count: int | None) -> None:
        self.base_step, self.base_count, self.since = step, count, []


class ConventionAdapter(TorchAdapter):
    """Drives ``factory(params, **keywords)`` through its own step(); API and state slots discovered by behaviour."""

    def __init__(self, factory: Callable[..., torch.optim.Optimizer], name: str, version: str = "?",
                 dialect: str | None = None, extra: dict | None = None):
        super().__init__()
        self.factory, self.name, self.version, self.dialect = factory, name, version, dialect
        self.extra = dict(extra or {})
        self.discovery = None
        self.batch_size = 1.0
        self.hessian_interval = 1
        self._refreshes = _Refreshes()

    # -- configuration -------------------------------------------------------------------------------------------

    def configure(self, discovery) -> None:
        """Read and write through what :func:`~verification.conformance.discover.discover` found."""
        self.discovery = discovery
        self.accepts_any_estimate = discovery.accepts_any_estimate

    def _slots(self):
        """The discovery, where it found the state slots (None: the names of the original convention)."""
        d = self.discovery
        return d if d is not None and getattr(d, "m", None) is not None else None

    def _ensure_discovered(self) -> None:
        """Discover on first use, once per factory; a failure leaves the original convention's names."""
        if self.discovery is not None:
            return
        try:
            from ..conformance.discover import cached_discovery

            found = cached_discovery(self)
        except Exception:  # discover() reports why; here the battery shows what goes wrong
            return
        if found is not None and found.configured:
            self.configure(found)

    def constructor_defaults(self) -> dict | None:
        """The defaults the constructor's signature declares, in the harness's names (None if it declares none)."""
        if self.discovery is not None and getattr(self.discovery, "defaults", None) is not None:
            return dict(self.discovery.defaults) or None
        from ..conformance.discover import map_constructor

        try:
            return dict(map_constructor(self.factory, self.extra).defaults) or None
        except Exception:
            return None

    def _accepted(self) -> set[str] | None:
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters}

    def _kwargs(self, hyper: Hyperparameters) -> dict:
        if self.discovery is None:
            kwargs = {**dict(lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), gamma=hyper.gamma, eps=hyper.eps,
                             weight_decay=hyper.weight_decay, hessian_interval=hyper.hessian_interval,
                             batch_size=hyper.batch_size), **self.extra}  # extra overrides
            accepted = self._accepted()
            if accepted is not None:
                kwargs = {k: v for k, v in kwargs.items() if k in accepted or k in self.extra}
            return kwargs
        return {**keywords(self.discovery.constructor, hyper), **self.extra}

    def _param_spec(self):
        """One group per tensor with the harness's overrides, spelled as the constructor spells them
        (``weight_decay`` may be ``wd``): a group key the optimizer does not know would be silently ignored."""
        if not self.groups:
            return self.tensors
        mapping = self.discovery.constructor if self.discovery is not None else {}
        spelled = [{mapping.get(k, k): v for k, v in overrides.items()} for overrides in self.groups]
        return [{"params": [t], **overrides} for t, overrides in zip(self.tensors, spelled)]

    # -- the protocol --------------------------------------------------------------------------------------------

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self._ensure_discovered()
        self.dtype = dtype
        self.tensors = [materialize(p, dtype, device).requires_grad_(True) for p in params]
        self.batch_size, self.hessian_interval = hyper.batch_size, hyper.hessian_interval
        self.kwargs = self._kwargs(hyper)
        self._refreshes.reset(0, 0)
        self.opt = self.factory(self._param_spec(), **self.kwargs)

    def round_trip(self) -> None:
        """A fresh optimizer on the same parameters, loaded from the old one's reloaded state_dict."""
        saved = reloaded(self.opt.state_dict())
        self.opt = self.factory(self._param_spec(), **self.kwargs)
        self.opt.load_state_dict(saved)

    def _estimate(self, refresh: Refresh) -> list[Tensor]:
        """What the implementation is handed: the estimate, or for one that squares it, the sampled-label gradient."""
        d = self.discovery
        if d is not None and d.estimate_form == "ghat":
            if refresh.ghat is None:
                raise ValueError(f"{self.name} folds the square of what it is handed, so it needs a GNB-shaped "
                                 "estimate with the sampled-label gradient `ghat`; this Refresh has none "
                                 "(accepts_any_estimate is False)")
            return [g.to(device=p.device, dtype=p.dtype) for g, p in zip(refresh.ghat, self.tensors)]
        return [h.to(device=p.device, dtype=p.dtype) for h, p in zip(refresh.hhat, self.tensors)]

    def step(self, grads, refresh: Refresh | None) -> None:
        d = self.discovery
        self._refreshes.stepped(refresh is not None)
        if d is None:
            self._set_grads(grads)
            estimate = None if refresh is None else self._estimate(refresh)
            self.opt.step(hessian_estimate=estimate)
            return
        kwargs = {keyword: self.batch_size for keyword in d.step_keywords.values()}
        if refresh is not None and d.estimate_via == "grad-method":  # update_hessian(): folds p.grad**2
            self._set_grads(self._estimate(refresh))
            getattr(self.opt, d.estimate_method)()
        elif refresh is not None and d.estimate_via == "method":
            self._set_grads(grads)
            getattr(self.opt, d.estimate_method)(self._estimate(refresh))
        elif refresh is not None and d.estimate_via == "keyword":
            kwargs[d.estimate_keyword] = self._estimate(refresh)
        self._set_grads(grads)
        self.opt.step(**kwargs)

    def state(self):
        d = self._slots()
        if d is None:
            return super().state()
        ms, hs = [], []
        for p in self.tensors:
            s = self.opt.state.get(p, {})
            for slot, out in ((d.m, ms), (d.h, hs)):
                value = s.get(slot.key)
                out.append(as_float64([value])[0] if isinstance(value, Tensor)
                           else torch.zeros(p.shape, dtype=torch.float64))
        return self._read_count(d), ms, hs

    def _read_count(self, d) -> int:
        """Completed steps: from the first step counter found (per parameter, group, optimizer), else counted here."""
        if not d.step:
            return self._refreshes.steps()
        slot, p = d.step[0], self.tensors[0] if self.tensors else None
        if slot.where == "state":
            value = self.opt.state.get(p, {}).get(slot.key) if p is not None else None
        elif slot.where == "group":
            value = self._group_of(p).get(slot.key)
        else:
            value = getattr(self.opt, slot.key, None)
        number = _number(value)
        return 0 if number is None else int(round(number)) - slot.offset

    def _group_of(self, p) -> dict:
        for group in self.opt.param_groups:
            if any(q is p for q in group["params"]):
                return group
        return self.opt.param_groups[0]

    def load(self, params, step, m, h, *, refreshes: int | None = None) -> None:
        """Parameters, m, h and every counter found, each in its own slot's type, dtype and device.

        A refresh counter gets ``refreshes`` (refresh steps among ``1..step``), else this adapter's own record
        of the refreshes it was handed, else the paper's schedule, ``ceil(step / k)``. State that changes with
        steps in a way discovery could not map raises :class:`NotTeacherForceable` before anything is written."""
        d = self._slots()
        if d is None:
            return self._load_by_names(params, step, m, h)
        if refreshes is None:
            refreshes = self._refreshes.count_at(step)
        if refreshes is None:
            refreshes = -(-step // max(int(self.hessian_interval), 1))
        states = [self.opt.state.get(p) for p in self.tensors]
        fresh = step == 0 and not any(states) and all(not bool(x.any()) for x in list(m) + list(h))
        if not fresh:
            self._check_forceable(d, states)
        with torch.no_grad():
            for p, value in zip(self.tensors, params):
                p.copy_(value.to(dtype=p.dtype, device=p.device))
            if not fresh:
                for p, value, mi, hi in zip(self.tensors, params, m, h):
                    self._write_parameter_state(d, p, value, mi, hi, step, refreshes)
            self._write_shared_counters(d, step, refreshes, create=not fresh)
        self._refreshes.reset(step, refreshes)

    def _check_forceable(self, d, states) -> None:
        for slot in d.extra:
            if slot.role != "changing":
                continue
            live = (any(s and slot.key in s for s in states) or not all(states)) if slot.where == "state" else \
                (any(slot.key in g for g in self.opt.param_groups) if slot.where == "group"
                 else hasattr(self.opt, slot.key))
            if live:
                raise NotTeacherForceable(slot.label(), slot.why or "it changes with the steps in a way the harness "
                                          "cannot write")

    def _write_parameter_state(self, d, p, value, mi, hi, step: int, refreshes: int) -> None:
        s = self.opt.state[p]
        if not s:
            self._create_state(d, s, p)
        for slot, new in ((d.m, mi), (d.h, hi)):
            self._write_tensor(s, slot, p, new)
        if d.master is not None and (d.master.key in s or p.dtype != torch.float64):
            self._write_tensor(s, d.master, p, value)
        for slots, count in ((d.step, step), (d.refreshes, refreshes)):
            for slot in slots:
                if slot.where == "state":
                    s[slot.key] = _as_counter(s.get(slot.key), count + slot.offset, slot.value)

    def _write_tensor(self, s: dict, slot, p: Tensor, new: Tensor) -> None:
        """``new`` into ``s[slot.key]``: in place where the entry exists (its dtype, device and layout kept)."""
        old = s.get(slot.key)
        if isinstance(old, Tensor) and old.shape == p.shape:
            old.copy_(new.to(device=old.device, dtype=old.dtype))
        else:
            s[slot.key] = new.to(device=p.device, dtype=slot.dtype_for(p.dtype)).clone()

    def _create_state(self, d, s: dict, p: Tensor) -> None:
        """A parameter's state as the implementation lays it out after a step (m, h and counters are then written)."""
        for slot in d.layout(p.dtype):
            if slot.role in ("m", "h", "master", "estimate"):
                s[slot.key] = torch.zeros(p.shape, dtype=slot.dtype_for(p.dtype), device=p.device)
            elif slot.role in ("step", "refreshes"):
                s[slot.key] = _as_counter(None, slot.offset, slot.value)
            elif slot.role == "constant":
                s[slot.key] = fresh_constant(slot.value, p)

    def _write_shared_counters(self, d, step: int, refreshes: int, create: bool) -> None:
        """Counters in the param groups or on the optimizer; ``create``: also where the optimizer has not made
        them yet (it makes them on its first step)."""
        for slots, count in ((d.step, step), (d.refreshes, refreshes)):
            for slot in slots:
                if slot.where == "group":
                    for group in self.opt.param_groups:
                        if slot.key in group or create:
                            group[slot.key] = _as_counter(group.get(slot.key), count + slot.offset, slot.value)
                elif slot.where == "optimizer" and (hasattr(self.opt, slot.key) or create):
                    old = getattr(self.opt, slot.key, None)
                    setattr(self.opt, slot.key, _as_counter(old, count + slot.offset, slot.value))

    def _load_by_names(self, params, step, m, h) -> None:
        """The original convention's names (used where discovery did not run or failed)."""
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

    def _keys(self, state: dict) -> tuple[str, str] | None:
        return (_key(state, M_KEYS, "m"), _key(state, H_KEYS, "h")) if state else None


def fresh_constant(value, p: Tensor):
    """A copy of a constant state entry for parameter ``p``: a tensor of the probe's shape becomes ``p``'s shape
    (its one value repeated), anything else is copied."""
    if isinstance(value, Tensor):
        if value.dim() >= 1:
            flat = value.reshape(-1)
            fill = float(flat[0]) if flat.numel() else 0.0
            if flat.numel() and not bool((flat == flat[0]).all()) and not math.isnan(fill):
                raise NotTeacherForceable("state entry", "a constant tensor with varying entries cannot be recreated "
                                          "for another shape")
            return torch.full(p.shape, fill, dtype=value.dtype, device=p.device)
        return value.clone()
    return copy.deepcopy(value)
