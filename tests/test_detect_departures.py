"""Detection names each deliberately wrong implementation (tests/independent_sophia.py) by what it does.

- one departure each, expressible by the knobs: the right knob and value in ``departures()``, the
  detected knobs reproduce it step for step (consistent), no best fit needed;
- state kept in float32 in a float64 run: the paper's knobs, ``state_dtype`` "float32" reported as a
  precision departure, consistent within the rounding of float32 state;
- outside the knobs (weight decay not scaled by lr; h bias-corrected with b1 instead of b2; h
  bias-corrected by steps together with unscaled weight decay): not consistent, and a best fit whose
  lock-step deviation is the smallest found;
- the adapter's ``fixed`` hyperparameters and its ``constructor_defaults()`` hook.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from independent_sophia import (DecayAfterStep, DecayCoupled, DecayUnscaled, EpsAdded, EstimateAbs,
                                EstimateClampedAtZero, Float32State, HBiasByB1, HBiasByRefreshes, HBiasBySteps,
                                HBiasStepsDecayUnscaled, IndependentSophia, RefreshNever)

from sophia_ref import SophiaRef
from sophia_ref.dialects import OPTAX
from sophia_ref.rule import Knobs
from verification.adapters.convention import ConventionAdapter
from verification.conformance.detect import CHECK_REL, detect


def adapter(cls) -> ConventionAdapter:
    return ConventionAdapter(cls, cls.__name__)


@pytest.mark.parametrize("cls, knob, value", [
    (HBiasBySteps, "h_bias_correction", "steps"),
    (HBiasByRefreshes, "h_bias_correction", "refreshes"),
    (EstimateClampedAtZero, "estimate_clamp", "zero"),
    (EstimateAbs, "estimate_clamp", "abs"),
    (RefreshNever, "refresh", "never"),
    (DecayAfterStep, "weight_decay_form", "after"),
    (DecayCoupled, "weight_decay_form", "coupled"),
    (EpsAdded, "eps_placement", "add"),
])
def test_one_departure_is_named(cls, knob, value):
    det = detect(adapter(cls))
    assert det.knobs == replace(Knobs(), **{knob: value}), det.describe()
    assert det.consistent and det.best_fit is None, det.describe()
    departures = det.departures()
    assert [(d["knob"], d["value"], d["paper"], d["severity"]) for d in departures] == [
        (knob, value, getattr(Knobs(), knob), "semantic")], det.describe()
    assert departures[0]["evidence"] == det.evidence[knob] and departures[0]["evidence"]
    assert det.preset is None and det.state_dtype == "float64"
    json.dumps(departures)


def test_refresh_that_never_fires_is_said_in_plain_words():
    det = detect(adapter(RefreshNever))
    assert "the refresh never fires" in det.evidence["refresh"]
    assert "every step is a sign step" in det.evidence["refresh"]
    assert {"h_bias_correction", "estimate_clamp"} <= set(det.moot), det.describe()


def test_float32_state_is_a_precision_departure():
    det = detect(adapter(Float32State))
    assert det.knobs == Knobs() and det.preset == "paper", det.describe()
    assert det.state_dtype == "float32" and "state precision: float32" in det.evidence["state_dtype"]
    assert [(d["knob"], d["value"], d["paper"], d["severity"]) for d in det.departures()] == [
        ("state_dtype", "float32", "float64", "precision")]
    # float32 rounding moves steps by ~1e-8: beyond the float64 bound, within the float32 one
    assert CHECK_REL < det.cross_check <= det.tolerance and det.consistent, det.describe()
    assert "state precision: float32" in det.describe()


def test_the_correct_rule_departs_in_nothing():
    det = detect(adapter(IndependentSophia))
    assert det.knobs == Knobs() and det.consistent and det.preset == "paper"
    assert det.departures() == [] and det.best_fit is None


@pytest.mark.parametrize("cls, expect", [
    (DecayUnscaled, dict(weight_decay="decoupled_unscaled", weight_decay_form=None)),
    # with b1 = 0 its h correction 1 - b1^t is 1: the h-bias probe reads "none", and the m bias-correction
    # probe sees a factor that is neither 1 nor 1 / (1 - b1^t)
    (HBiasByB1, dict(h_bias_correction="none", bias_correction=None)),
    (HBiasStepsDecayUnscaled, dict(h_bias_correction="steps", weight_decay="decoupled_unscaled",
                                   weight_decay_form=None)),
])
def test_outside_the_knobs_has_a_best_fit(cls, expect):
    det = detect(adapter(cls))
    for field, value in expect.items():
        assert getattr(det, field) == value, det.describe()
    assert det.knobs is None and not det.consistent, det.describe()
    best = det.best_fit
    assert best is not None and best.cross_check > det.tolerance, det.describe()
    assert det.cross_check is not None and best.cross_check <= det.cross_check
    assert isinstance(best.knobs, Knobs) and best.label in det.evidence["best_fit"]
    assert f"best fit: {best.label}" in det.describe()
    json.dumps(best.as_dict())
    if cls is HBiasByB1:  # the nearest knob: h / (1 - b2^t) rather than h / (1 - b1^t)
        assert best.knobs == replace(Knobs(), h_bias_correction="steps"), det.describe()
        assert best.cross_check < det.cross_check
        assert ("bias_correction", None) in [(d["knob"], d["value"]) for d in det.departures()]
    else:
        assert ("weight_decay", "decoupled_unscaled") in [(d["knob"], d["value"]) for d in det.departures()]
    if cls is HBiasStepsDecayUnscaled:
        assert ("h_bias_correction", "steps") in [(d["knob"], d["value"]) for d in det.departures()]


# -- what the adapter declares: fixed hyperparameters, constructor defaults ----------------------------------

class InsistsOnEps(ConventionAdapter):
    """SophiaRef (optax) whose build refuses any eps but 1e-8 and any interval but 2, as its ``fixed`` says."""

    fixed = {"eps": 1e-8, "hessian_interval": 2}

    def __init__(self):
        super().__init__(SophiaRef, "insists", extra={"dialect": "optax"})

    def build(self, params, hyper, dtype, device):
        if hyper.eps != 1e-8 or hyper.hessian_interval != 2:
            raise ValueError(f"eps={hyper.eps} / k={hyper.hessian_interval}: only eps=1e-8, k=2 are supported")
        super().build(params, hyper, dtype, device)


def test_fixed_hyperparameters_are_used_by_every_probe():
    det = detect(InsistsOnEps())
    assert det.hyper.eps == 1e-8 and det.hyper.hessian_interval == 2
    assert "fixes eps=1e-08, hessian_interval=2" in det.evidence["hyperparameters"]
    assert "refused" not in det.evidence["hyperparameters"]  # no eps or interval was tried first
    assert det.eps == 1e-8 and det.eps_fixed is True and "fixes eps" in det.evidence["eps"]
    assert det.knobs == OPTAX.knobs and det.preset == "optax" and det.consistent, det.describe()
    assert "steps 1..5" in det.evidence["refresh"]


class WithDefaults(ConventionAdapter):
    def __init__(self, defaults):
        super().__init__(SophiaRef, "with defaults", extra={"dialect": "optax"})
        self.defaults = defaults

    def constructor_defaults(self):
        return self.defaults


def test_constructor_defaults_are_reported():
    found = dict(OPTAX.defaults)
    det = detect(WithDefaults(found))
    assert det.constructor_defaults == found
    assert "those of preset optax" in det.evidence["constructor_defaults"]
    assert "constructor defaults: {" in det.describe()
    det = detect(WithDefaults(dict(betas=(0.5, 0.5), eps=3e-7)))
    assert "no preset has these defaults" in det.evidence["constructor_defaults"]
    det = detect(WithDefaults(None))
    assert det.constructor_defaults is None and det.evidence["constructor_defaults"].startswith("not available")
    det = detect(adapter(IndependentSophia))  # discovery reads the defaults from the constructor's signature
    assert det.constructor_defaults == dict(beta1=0.96, beta2=0.99, gamma=0.01, eps=1e-12, weight_decay=0.0,
                                            hessian_interval=10), det.constructor_defaults


def test_eps_that_ignores_the_hyperparameter_is_a_departure():
    def factory(params, **kwargs):
        return SophiaRef(params, **{**kwargs, "eps": 1e-9})

    det = detect(ConventionAdapter(factory, "eps 1e-9"))
    assert ("eps", 1e-9, 1e-12) in [(d["knob"], d["value"], d["paper"]) for d in det.departures()]
