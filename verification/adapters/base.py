"""The protocol an implementation under test satisfies, so the harness can drive it step by step.

The harness owns the data: float64 initial parameters, one gradient per step, and on
refresh steps a :class:`Refresh` holding the estimate in both of the forms that
implementations consume (the estimate itself, and for GNB-style implementations the
sampled-label gradient it is made of). An adapter turns these into calls of its
implementation's own API, and reads back (and, for teacher forcing, writes) the
parameters and the paper's state ``(t, m, h)`` as float64 tensors.

Optional members, all compatible with adapters that define none of them:

- ``load(params, step, m, h, *, refreshes=None)``: an adapter whose implementation keeps a
  refresh counter may take the keyword ``refreshes``, the number of refresh steps among
  ``1..step`` of the harness's schedule. The harness passes it only where the signature of
  ``load`` has it (:func:`load_state`), so five-argument overrides keep working.
- ``load`` may raise :class:`NotTeacherForceable` for state it cannot write (a counter or
  buffer it cannot set consistently): the teacher-forced tier of that scenario is then
  reported as skipped, and the free-running tier still decides.
- :meth:`Adapter.constructor_defaults`: the defaults the implementation's constructor
  declares, in the harness's names (None: unknown).
- :meth:`Adapter.round_trip`, :meth:`Adapter.internal_estimate`, and the class attributes
  ``accepts_any_estimate``, ``fixed``, ``supports_groups`` (documented on :class:`Adapter`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Refresh:
    """A Hessian-diagonal estimate for one step.

    ``hhat`` is the estimate as the paper's rule folds it into h (GNB: ``B ghat^2``);
    ``ghat`` is the sampled-label gradient with ``hhat = batch * ghat^2`` when the
    estimate is GNB-shaped (None for estimates that may be negative, e.g. Hutchinson).
    Implementations whose batch factor lives at step time (the official code) fold
    ``ghat^2`` itself and multiply by ``batch`` when they step.
    """

    hhat: list[Tensor]
    ghat: list[Tensor] | None = None
    batch: float = 1.0


@dataclass(frozen=True)
class Hyperparameters:
    """The paper's hyperparameters in the v4 (gamma) form; rho-form implementations read gamma as rho."""

    lr: float
    beta1: float
    beta2: float
    gamma: float
    eps: float
    weight_decay: float
    hessian_interval: int
    batch_size: float = 1.0


class NotTeacherForceable(Exception):
    """State an adapter cannot write consistently (raised by ``load``): the teacher-forced tier is reported as not
    teacher-forceable and the free-running tier still decides. ``key`` names the state, ``why`` says why."""

    def __init__(self, key: str, why: str):
        super().__init__(f"not teacher-forceable: {key} ({why})")
        self.key, self.why = key, why


class Adapter(ABC):
    """One implementation under test. Subclasses set ``name``, ``version`` and ``dialect`` (the preset it
    claims, or None when unknown) and implement the five methods below; the rest is optional (see the
    module docstring)."""

    name: str = "?"
    version: str = "?"
    dialect: str | None = None
    #: whether ``step`` can take any estimate (True) or only GNB-shaped ones built from ``ghat`` (False)
    accepts_any_estimate: bool = True
    #: hyperparameters the implementation has built in (e.g. ``{"eps": 1e-15}``): the harness uses these values
    #: for the reference too, instead of the scenario's
    fixed: dict = {}
    #: whether ``build`` honours :attr:`groups`: one parameter group per tensor, with these overrides of ``lr``
    #: and ``weight_decay`` (set by the harness before ``build``; None means a single group)
    supports_groups: bool = False
    groups: list[dict] | None = None

    @abstractmethod
    def build(self, params: list[Tensor], hyper: Hyperparameters, dtype: torch.dtype, device: str) -> None:
        """Create the implementation on copies of ``params`` (float64 values) in ``dtype`` on ``device``."""

    @abstractmethod
    def step(self, grads: list[Tensor], refresh: Refresh | None) -> None:
        """Take one step with these gradients; ``refresh`` is given on the steps the harness refreshes."""

    @abstractmethod
    def parameters(self) -> list[Tensor]:
        """The current parameters, as float64 copies."""

    @abstractmethod
    def state(self) -> tuple[int, list[Tensor], list[Tensor]]:
        """``(t, m, h)``: completed steps and the paper's m and h (B-free h where B lives at step time)."""

    @abstractmethod
    def load(self, params: list[Tensor], step: int, m: list[Tensor], h: list[Tensor]) -> None:
        """Overwrite parameters and state (teacher forcing): the next step continues from these values.

        An override may add the keyword-only ``refreshes=None`` (refresh steps among ``1..step``; see
        :func:`load_state`) and may raise :class:`NotTeacherForceable` for state it cannot write."""

    def round_trip(self) -> None:
        """Save the implementation's state as it saves it (``state_dict`` through ``torch.save``), then go on
        from a reload of those bytes. Adapters that cannot raise NotImplementedError (the scenario is skipped)."""
        raise NotImplementedError("this adapter has no state_dict round trip")

    def internal_estimate(self, grads: list[Tensor], refresh: Refresh | None) -> list[Tensor] | None:
        """For an implementation that makes its own estimate from what a step sees (e.g. p.grad**2 on
        every step), the estimate it folds into h at this step, so the reference can be fed the same;
        None when it takes the harness's estimate."""
        return None

    def constructor_defaults(self) -> dict | None:
        """The defaults the implementation's constructor declares, in the harness's names (``lr``, ``beta1``,
        ``beta2``, ``gamma``, ``eps``, ``weight_decay``, ``hessian_interval``, ``batch_size``); None when unknown."""
        return None

    def _param_spec(self):
        """What a torch optimizer is built on: ``self.tensors``, or one group per tensor with the harness's
        overrides (:attr:`groups`)."""
        if not self.groups:
            return self.tensors
        return [{"params": [t], **overrides} for t, overrides in zip(self.tensors, self.groups)]

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def takes_refreshes(adapter: Adapter) -> bool:
    """Whether ``adapter.load`` accepts the keyword ``refreshes`` (by name or through ``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(adapter.load).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "refreshes" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               or p.kind is p.VAR_KEYWORD for p in parameters)


def load_state(adapter: Adapter, params, step: int, m, h, refreshes: int | None = None) -> None:
    """``adapter.load(params, step, m, h)``, with ``refreshes=`` (the number of refresh steps among ``1..step``)
    where its ``load`` takes that keyword. May raise :class:`NotTeacherForceable`."""
    if refreshes is not None and takes_refreshes(adapter):
        adapter.load(params, step, m, h, refreshes=refreshes)
    else:
        adapter.load(params, step, m, h)


def materialize(src: Tensor, dtype: torch.dtype, device) -> Tensor:
    """A fresh leaf tensor with src's values in ``dtype`` on ``device``, keeping src's strides when it is
    not contiguous (so an implementation under test really sees a non-contiguous tensor)."""
    if src.is_contiguous() or src.dim() == 0:
        return src.detach().to(device=device, dtype=dtype).clone()
    out = torch.empty_strided(tuple(src.shape), src.stride(), dtype=dtype, device=device)
    return out.copy_(src.detach())


def reloaded(state_dict: dict) -> dict:
    """``state_dict`` after a trip through ``torch.save`` / ``torch.load``, as a checkpoint would be."""
    import io

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def as_float64(tensors) -> list[Tensor]:
    return [t.detach().to(device="cpu", dtype=torch.float64).clone() for t in tensors]
