"""Adapter for ``sophia-optimizer`` 0.2.5 (module ``sophia``, class ``SophiaG``; third party).

Its ``step(bs=B)`` first calls ``update_hessian()``, folding ``p.grad**2`` of the
gradient it is stepping with into ``state['hessian']`` (on every step), then
``update_exp_avg()`` and then the official update, which updates ``exp_avg`` a second
time: m absorbs the gradient twice per step. It takes no external estimate, so
:meth:`internal_estimate` returns the ``g**2`` it folds and the harness's ``refresh`` is
ignored. rho is ``hyper.gamma``; eps is hard-coded 1e-15; there is no interval, so
``hyper.hessian_interval`` must be 1.

Packaging defect: ``sophia/__init__.py`` runs ``from sophia.sophia import SophiaG, sophiag``
but ``sophia/sophia.py`` defines no ``sophiag``, so ``import sophia`` (and therefore
``from sophia.sophia import SophiaG``) raises ImportError. The adapter loads the installed
``sophia/sophia.py`` by its file location (found through the distribution's metadata)
as a module of its own, without running the broken ``__init__``.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata

import torch

from .base import Hyperparameters, Refresh
from ._torch import TorchAdapter, installed_version
from .official import check_fixed_eps

DISTRIBUTION = "sophia-optimizer"
_MODULE = "_sophia_optimizer_sophia"  # private name for sophia/sophia.py loaded on its own


def load_sophiag() -> type:
    """``SophiaG`` of the installed sophia-optimizer (works around its broken ``__init__``)."""
    try:
        from sophia.sophia import SophiaG  # the package's intended import, should it ever be fixed
        return SophiaG
    except ImportError:
        pass
    if _MODULE in sys.modules:
        return sys.modules[_MODULE].SophiaG
    files = metadata.distribution(DISTRIBUTION).files or []
    source = [f for f in files if str(f).replace("\\", "/") == "sophia/sophia.py"]
    if not source:
        raise ImportError(f"{DISTRIBUTION} is installed but has no sophia/sophia.py")
    spec = importlib.util.spec_from_file_location(_MODULE, source[0].locate())
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module.SophiaG


class SophiaOptimizerAdapter(TorchAdapter):
    """``sophia.SophiaG`` of sophia-optimizer: g**2 folded into h on every step, m updated twice."""

    name = "sophia-optimizer SophiaG"
    dialect = "sophia_optimizer"
    accepts_any_estimate = False  # it takes no estimate at all: h absorbs p.grad**2 of the step's own gradient
    fixed = {"eps": 1e-15, "hessian_interval": 1}  # built in: `+ 1e-15`, and a refresh on every step
    m_key, h_key = "exp_avg", "hessian"

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self.version = installed_version(DISTRIBUTION)
        SophiaG = load_sophiag()
        check_fixed_eps(hyper, f"{DISTRIBUTION} SophiaG")
        if hyper.hessian_interval != 1:
            raise ValueError(f"{DISTRIBUTION} SophiaG folds p.grad**2 into h on every step and has no interval; "
                             f"got hessian_interval={hyper.hessian_interval!r}: use 1 to drive it")
        self._make_tensors(params, dtype, device)
        self.batch_size = hyper.batch_size
        self.opt = SophiaG(self._param_spec(), lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), rho=hyper.gamma,
                           weight_decay=hyper.weight_decay)

    def step(self, grads, refresh: Refresh | None) -> None:
        self._set_grads(grads)  # refresh is ignored: the optimizer makes its own estimate from p.grad
        self.opt.step(bs=self.batch_size)

    def internal_estimate(self, grads, refresh: Refresh | None):
        """``g**2`` of the gradient as the optimizer sees it (rounded to the parameter dtype), in float64."""
        return [g.to(torch.float64) ** 2 for g in self._cast(grads)]

    def _write_step(self, state, p, step) -> None:
        state["step"] = torch.full_like(state["step"], float(step))

    def _init_state(self, state, p) -> None:
        state["step"] = torch.tensor(0.0)
        super()._init_state(state, p)
