"""Shared plumbing for adapters of ``torch.optim.Optimizer`` implementations (not an adapter itself).

Each subclass builds its optimizer on ``self.tensors`` and says where the paper's
``(t, m, h)`` live in that optimizer's state: :meth:`_read_step` / :meth:`_write_step`
for the step counter, ``m_key`` / ``h_key`` for the per-parameter state tensors.
"""

from __future__ import annotations

from importlib import metadata

import torch
from torch import Tensor

from .base import Adapter, as_float64, materialize, reloaded


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, or a clear ImportError when it is missing."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError as error:
        raise ImportError(f"the adapter needs the package {distribution!r}; install it "
                          f"(pip install 'sophia-ref[public]')") from error


class TorchAdapter(Adapter):
    """Parameters as leaf tensors with ``requires_grad``; gradients written to ``p.grad``."""

    m_key: str = "m"
    h_key: str = "h"
    supports_groups = True

    def __init__(self) -> None:
        self.opt: torch.optim.Optimizer | None = None
        self.tensors: list[Tensor] = []
        self.dtype: torch.dtype = torch.float64

    # -- helpers -------------------------------------------------------------------------------------------------

    def _make_tensors(self, params, dtype, device) -> None:
        self.dtype = dtype
        self.tensors = [materialize(p, dtype, device).requires_grad_(True) for p in params]

    def _cast(self, values) -> list[Tensor]:
        """``values`` as fresh tensors in each parameter's dtype and device."""
        if len(values) != len(self.tensors):
            raise ValueError(f"got {len(values)} tensors for {len(self.tensors)} parameters")
        return [v.detach().to(device=p.device, dtype=p.dtype).clone() for v, p in zip(values, self.tensors)]

    def _set_grads(self, grads) -> None:
        for p, g in zip(self.tensors, grads):
            p.grad = materialize(g, p.dtype, p.device)

    def round_trip(self) -> None:
        """The optimizer's state_dict through torch.save and back, loaded into it after its state is dropped."""
        saved = reloaded(self.opt.state_dict())
        self.opt.state.clear()
        self.opt.load_state_dict(saved)

    def _read_step(self, state: dict, p: Tensor) -> int:
        """Completed steps, from the optimizer's per-parameter state (subclasses may read a group instead)."""
        return int(state["step"])

    def _write_step(self, state: dict, p: Tensor, step: int) -> None:
        raise NotImplementedError

    def _init_state(self, state: dict, p: Tensor) -> None:
        """Create an empty state entry the way the optimizer itself would (used by :meth:`load` before any step)."""
        state[self.m_key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state[self.h_key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # -- the protocol --------------------------------------------------------------------------------------------

    def parameters(self) -> list[Tensor]:
        return as_float64(self.tensors)

    def _keys(self, state: dict) -> tuple[str, str] | None:
        """Where m and h live in one parameter's state (None before the optimizer created them)."""
        return (self.m_key, self.h_key) if self.m_key in state else None

    def state(self):
        steps, ms, hs = [], [], []
        for p in self.tensors:
            s = self.opt.state.get(p, {})
            keys = self._keys(s)
            if keys is None:
                steps.append(self._read_step(s, p) if s else 0)
                ms.append(torch.zeros(p.shape, dtype=torch.float64))
                hs.append(torch.zeros(p.shape, dtype=torch.float64))
                continue
            steps.append(self._read_step(s, p))
            ms.append(as_float64([s[keys[0]]])[0])
            hs.append(as_float64([s[keys[1]]])[0])
        return (steps[0] if steps else 0), ms, hs

    def load(self, params, step, m, h) -> None:
        with torch.no_grad():
            for p, value, mi, hi in zip(self.tensors, params, m, h):
                p.copy_(value.to(dtype=p.dtype, device=p.device))
                s = self.opt.state[p]
                if self.m_key not in s:
                    self._init_state(s, p)
                for key, new in ((self.m_key, mi), (self.h_key, hi)):
                    old = s[key]
                    s[key] = new.to(device=old.device, dtype=old.dtype).clone()
                self._write_step(s, p, step)
