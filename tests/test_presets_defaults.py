"""Each installable port's preset defaults equal the installed package's own: its constructor's
defaults read with inspect.signature, and constants its source hard-codes (the official eps).
A package that is not installed skips its test, saying which."""

from __future__ import annotations

import importlib.metadata
import inspect
import re

import pytest

from sophia_ref.dialects import OFFICIAL, OPTAX, PYTORCH_OPTIMIZER, SOPHIA_OPTIMIZER


def _defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _added_eps(source: str) -> float:
    """The constant added to ``rho * bs * hess`` in the official ratio."""
    found = re.findall(r"rho\s*\*\s*bs\s*\*\s*hess\s*\+\s*([0-9.]+e-?[0-9]+)", source)
    assert len(set(found)) == 1, found
    return float(found[0])


def _official_like(cls, preset) -> None:
    init, step = _defaults(cls.__init__), _defaults(cls.step)
    assert tuple(init["betas"]) == preset.defaults["betas"]
    assert init["rho"] == preset.defaults["gamma"]
    assert init["weight_decay"] == preset.defaults["weight_decay"]
    assert step["bs"] == preset.defaults["batch_size"]
    assert _added_eps(inspect.getsource(inspect.getmodule(cls))) == preset.defaults["eps"]


def test_official_defaults_are_sophia_opts():
    sophia_opt = pytest.importorskip("sophia_opt", reason="sophia-opt (the packaged official SophiaG) is not installed")
    _official_like(sophia_opt.SophiaG, OFFICIAL)


def test_sophia_optimizer_defaults_are_its_own():
    try:
        importlib.metadata.distribution("sophia-optimizer")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sophia-optimizer is not installed")
    from verification.adapters.sophia_optimizer import load_sophiag  # loads sophia/sophia.py past its broken __init__

    _official_like(load_sophiag(), SOPHIA_OPTIMIZER)


def test_pytorch_optimizer_defaults_are_sophiahs():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is not installed")
    init = _defaults(pytorch_optimizer.SophiaH.__init__)
    d = PYTORCH_OPTIMIZER.defaults
    assert (tuple(init["betas"]), init["p"], init["eps"], init["weight_decay"], init["update_period"]) == (
        d["betas"], d["gamma"], d["eps"], d["weight_decay"], d["hessian_interval"])
    assert init["hessian_distribution"] == "gaussian" and "Gaussian" in PYTORCH_OPTIMIZER.estimator


def test_optax_defaults_are_optax_contrib_sophias():
    contrib = pytest.importorskip("optax.contrib", reason="optax is not installed")
    init = _defaults(contrib.sophia)
    d = OPTAX.defaults
    assert ((init["b1"], init["b2"]), init["gamma"], init["eps"], init["weight_decay"], init["update_interval"]) == (
        d["betas"], d["gamma"], d["eps"], d["weight_decay"], d["hessian_interval"])
    assert init["clip_threshold"] == 1.0  # the gamma form's clip at 1
