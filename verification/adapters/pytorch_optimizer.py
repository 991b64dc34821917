"""Adapter for ``pytorch-optimizer`` 4.1.0 ``SophiaH`` (the v1 rho form: ``clip(m / max(h, eps), p)``).

Built with ``p = hyper.gamma`` (rho), ``update_period = hyper.hessian_interval``, ``eps``,
``betas`` and decoupled weight decay (``weight_decouple=True``, ``fixed_decay=False``:
``p *= 1 - lr * weight_decay``). The estimate goes in through ``step(hessian=[...])``,
which refreshes h on any step it is given. On its own refresh steps
(``(step - 1) % update_period == 0``) a step without ``hessian=`` would run its own
Hutchinson estimate from ``p.grad`` (which needs ``backward(create_graph=True)``): the
harness passes ``refresh`` on those steps, and the adapter raises if it does not.

``foreach=False`` (the per-tensor loop). The ``foreach`` path was checked to give
bit-identical results on CPU float64 in this setting (tests/test_adapters.py), but the
adapter keeps the loop, the path every device and dtype takes.
"""

from __future__ import annotations

from .base import Hyperparameters, Refresh
from ._torch import TorchAdapter, installed_version

DISTRIBUTION = "pytorch-optimizer"


class PytorchOptimizerAdapter(TorchAdapter):
    """``pytorch_optimizer.SophiaH`` with the estimate supplied through ``step(hessian=...)``."""

    name = "pytorch-optimizer SophiaH"
    dialect = "pytorch_optimizer"
    accepts_any_estimate = True
    m_key, h_key = "momentum", "hessian_moment"

    def __init__(self, foreach: bool = False) -> None:
        super().__init__()
        self.foreach = foreach

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self.version = installed_version(DISTRIBUTION)
        from pytorch_optimizer import SophiaH

        self._make_tensors(params, dtype, device)
        self.opt = SophiaH(self._param_spec(), lr=hyper.lr, betas=(hyper.beta1, hyper.beta2),
                           weight_decay=hyper.weight_decay, weight_decouple=True, fixed_decay=False,
                           p=hyper.gamma, update_period=hyper.hessian_interval, eps=hyper.eps,
                           foreach=self.foreach)

    def _completed(self) -> int:
        return int(self.opt.param_groups[0].get("step", 0))

    def step(self, grads, refresh: Refresh | None) -> None:
        t = self._completed() + 1
        if refresh is None and (t - 1) % self.opt.update_period == 0:
            raise RuntimeError(
                f"step {t} is a refresh step of {self.name} ((step - 1) % update_period == 0, update_period="
                f"{self.opt.update_period}); without an estimate it would run its own Hutchinson estimate, which "
                "needs gradients built with create_graph=True. Pass `refresh` on this step.")
        self._set_grads(grads)
        hessian = None if refresh is None else self._cast(refresh.hhat)
        self.opt.step(hessian=hessian)

    # SophiaH keeps the step counter in each param group, not in the per-parameter state
    def _read_step(self, state, p) -> int:
        return self._completed()

    def _write_step(self, state, p, step) -> None:
        for group in self.opt.param_groups:
            group["step"] = int(step)
