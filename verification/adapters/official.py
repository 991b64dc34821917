"""Adapter for the official SophiaG, as packaged by ``sophia-opt`` 0.2.2 (module ``sophia_opt``).

The official recipe (Liuhong99/Sophia, ``train_sophiag.py``): every k steps the caller
samples labels from the model, back-propagates that loss and calls
``optimizer.update_hessian()``, which folds ``p.grad**2`` (the sampled-label gradient
``ghat``, squared; no batch factor) into ``state['hessian']``; ``step(bs=B)`` multiplies
h by ``rho * bs`` when it steps: ``sign(m) min(|m| / (rho bs h + 1e-15), 1)``.

Here a :class:`Refresh` becomes exactly that: ``p.grad = ghat``, ``update_hessian()``,
then ``p.grad = g`` and ``step(bs=hyper.batch_size)``: the new h is used by the same step
(the dialect's ``refresh="caller"``). ``bs`` is ``hyper.batch_size`` on every step (it
multiplies h between refreshes too), so ``Refresh.batch`` is not read: it should equal it.
rho is ``hyper.gamma``; eps is hard-coded 1e-15 in the package, so ``hyper.eps`` must be
1e-15 (build raises otherwise).
"""

from __future__ import annotations

import torch

from .base import Hyperparameters, Refresh
from ._torch import TorchAdapter, installed_version

DISTRIBUTION = "sophia-opt"
FIXED_EPS = 1e-15  # `rho * bs * hess + 1e-15` in the package's source; not a constructor argument


def check_fixed_eps(hyper: Hyperparameters, who: str) -> None:
    if hyper.eps != FIXED_EPS:
        raise ValueError(f"{who} has eps = {FIXED_EPS:g} built in (added to the denominator) and takes no eps "
                         f"argument; got eps={hyper.eps!r}: use eps={FIXED_EPS:g} to drive it")


class OfficialAdapter(TorchAdapter):
    """``sophia_opt.SophiaG`` driven by the official recipe (``update_hessian()`` + ``step(bs=B)``)."""

    name = "sophia-opt SophiaG"
    dialect = "official"
    accepts_any_estimate = False  # update_hessian() can only fold squares of p.grad
    fixed = {"eps": FIXED_EPS}
    m_key, h_key = "exp_avg", "hessian"

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self.version = installed_version(DISTRIBUTION)
        from sophia_opt import SophiaG

        check_fixed_eps(hyper, f"{DISTRIBUTION} SophiaG")
        self._make_tensors(params, dtype, device)
        self.batch_size = hyper.batch_size
        self.opt = SophiaG(self._param_spec(), lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), rho=hyper.gamma,
                           weight_decay=hyper.weight_decay)

    def step(self, grads, refresh: Refresh | None) -> None:
        if refresh is not None:
            if refresh.ghat is None:
                raise ValueError(f"{self.name} folds p.grad**2 into h (update_hessian()), so it needs a GNB-shaped "
                                 "estimate with the sampled-label gradient `ghat`; this Refresh has none "
                                 "(accepts_any_estimate is False)")
            self._set_grads(refresh.ghat)
            self.opt.update_hessian()
        self._set_grads(grads)
        self.opt.step(bs=self.batch_size)

    def _write_step(self, state, p, step) -> None:
        state["step"] = torch.full_like(state["step"], float(step))  # keep its own type: a float32 tensor

    def _init_state(self, state, p) -> None:
        # as SophiaG.update_hessian()/step() initialise it (capturable=False): step is torch.tensor(0.)
        state["step"] = torch.tensor(0.0)
        super()._init_state(state, p)
