"""Dialect detection (verification.detect): knobs inferred from behaviour alone.

- every preset, run as SophiaRef through the convention adapter, is detected as itself
  (``paper_v1`` and ``pytorch_optimizer`` have the same knobs: behaviour names both);
- every combination of the first seven knobs' values (288 custom dialects), each with one
  setting of the later knobs (h bias correction, estimate clamp, weight-decay form, and
  refresh "never") in rotation, is detected exactly, up to the knobs that do not change
  behaviour given the others (clip_form where eps sits inside max; under refresh "never"
  the estimate clamp, and h bias-corrected by refreshes, which never happen), and the
  detected knobs reproduce the implementation step for step;
- eps that ignores the hyperparameter, and weight-decay forms outside the knobs (not consistent,
  with a best fit);
- the public packages, through their adapters (skipped when missing), as their SPEC
  section 5 rows.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from importlib import metadata

import pytest
import torch

from sophia_ref import SophiaRef
from sophia_ref.dialects import DIALECTS, OFFICIAL, OPTAX, PAPER, PYTORCH_OPTIMIZER, SOPHIA_OPTIMIZER, Dialect
from sophia_ref.rule import Knobs
from verification.adapters.base import Hyperparameters
from verification.adapters.convention import ConventionAdapter
from verification.conformance.detect import Detection, detect

SAME_KNOBS = {"paper_v1": ("paper_v1", "pytorch_optimizer"), "pytorch_optimizer": ("paper_v1", "pytorch_optimizer")}


def canonical(knobs: Knobs) -> Knobs:
    """The knobs as detection reports them: moot knobs at their preset spelling."""
    if knobs.eps_placement == "max":
        knobs = replace(knobs, clip_form="clip")
    if knobs.refresh == "never":
        knobs = replace(knobs, estimate_clamp="none",
                        h_bias_correction="none" if knobs.h_bias_correction == "refreshes" else knobs.h_bias_correction)
    return knobs


def expected_moot(knobs: Knobs) -> tuple[str, ...]:
    """The knobs detection reports as moot for SophiaRef at k = 3 (it accepts any estimate)."""
    moot = ("clip_form",) if knobs.eps_placement == "max" else ()
    if knobs.refresh == "never":
        moot += (("h_bias_correction",) if knobs.h_bias_correction != "steps" else ()) + ("estimate_clamp",)
    return moot


def expected_matches(knobs: Knobs) -> tuple[str, ...]:
    return tuple(name for name, d in DIALECTS.items() if canonical(d.knobs) == canonical(knobs))


def reference(dialect) -> ConventionAdapter:
    name = dialect if isinstance(dialect, str) else dialect.name
    return ConventionAdapter(SophiaRef, f"SophiaRef ({name})", extra={"dialect": dialect})


def assert_detected(det: Detection, knobs: Knobs) -> None:
    assert det.knobs == canonical(knobs), det.describe()
    assert det.moot == expected_moot(knobs), det.describe()
    assert det.weight_decay == {"before": "decoupled", "after": "decoupled_after",
                                "coupled": "coupled"}[knobs.weight_decay_form], det.describe()
    assert det.consistent, det.describe()
    assert not det.internal_estimator
    assert det.state_dtype == "float64" and det.best_fit is None, det.describe()


@pytest.mark.parametrize("name", list(DIALECTS))
def test_every_preset_is_detected_as_itself(name):
    det = detect(reference(name))
    assert_detected(det, DIALECTS[name].knobs)
    assert det.eps == 1e-12 and det.eps_fixed is False  # SophiaRef takes any eps: the probe's own
    assert det.matches == SAME_KNOBS.get(name, (name,)), det.describe()
    assert det.preset == det.matches[0]
    assert set(det.evidence) >= {"form", "eps", "eps_placement", "clip_form", "bias_correction", "refresh",
                                 "batch_factor", "momentum_updates", "h_bias_correction", "estimate_clamp",
                                 "weight_decay", "weight_decay_form", "state_dtype", "constructor_defaults",
                                 "cross_check"}
    assert [d["knob"] for d in det.departures()] == [k for k, v in vars(DIALECTS[name].knobs).items()
                                                     if v != getattr(Knobs(), k) and k not in det.moot]


#: the later knobs' settings, one of them given to each combination of the first seven in turn
LATER = [dict(h_bias_correction=hb, estimate_clamp=cl, weight_decay_form=wd)
         for hb, cl, wd in itertools.product(("none", "steps", "refreshes"), ("none", "zero", "abs"),
                                             ("before", "after", "coupled"))]
ALL_KNOBS = [replace(Knobs(*values), **LATER[i % len(LATER)]) for i, values in enumerate(itertools.product(
    ("gamma", "rho"), ("max", "add"), ("clip", "sign_min"), (False, True),
    ("immediate", "next_step", "caller", "never"), ("estimate", "step"), (1, 2, 3)))]


def test_every_knob_combination_is_detected():
    """384 custom dialects (paper with bias correction, paper with eps added, h bias-corrected by refreshes
    with a refresh that never fires, ...): exact knobs, the right preset or none."""
    wrong = []
    for knobs in ALL_KNOBS:
        det = detect(reference(Dialect("custom", knobs, PAPER.defaults, "?", "custom")))
        if det.knobs != canonical(knobs) or det.matches != expected_matches(knobs) or not det.consistent:
            wrong.append(f"{knobs}: detected {det.knobs}, matches {det.matches}, cross-check {det.cross_check}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("knobs, preset", [
    (replace(PAPER.knobs, bias_correction=True), None),
    (replace(PAPER.knobs, eps_placement="add"), None),                       # clip(m / (gamma h + eps), 1)
    (replace(PAPER.knobs, clip_form="sign_min"), "paper"),                   # moot under max: paper's behaviour
    (replace(OFFICIAL.knobs, refresh="immediate", momentum_updates=2), "sophia_optimizer"),
    (replace(OPTAX.knobs, refresh="immediate"), None),
    (Knobs("rho", "add", "sign_min", True, "next_step", "step", 3), None),
    (replace(PAPER.knobs, h_bias_correction="refreshes", refresh="next_step"), None),
    (replace(OFFICIAL.knobs, h_bias_correction="steps", weight_decay_form="after"), None),
    (replace(OPTAX.knobs, estimate_clamp="abs", weight_decay_form="coupled"), None),
    (DIALECTS["fastxtend"].knobs, "fastxtend"),
])
def test_custom_dialects(knobs, preset):
    det = detect(reference(Dialect("custom", knobs, PAPER.defaults, "?", "custom")))
    assert_detected(det, knobs)
    assert det.preset == preset, det.describe()


def test_given_hyperparameters_set_eps_and_interval():
    hyper = Hyperparameters(lr=1.0, beta1=0.9, beta2=0.9, gamma=1.0, eps=1e-8, weight_decay=0.0,
                            hessian_interval=4, batch_size=1.0)  # gamma = 1 and wd = 0 would hide knobs
    det = detect(reference("optax"), hyper)
    assert_detected(det, OPTAX.knobs)
    assert det.eps == 1e-8 and det.eps_fixed is False and det.preset == "optax"
    assert det.hyper.eps == 1e-8 and det.hyper.hessian_interval == 4 and det.hyper.gamma == 0.25
    assert "steps 1..9" in det.evidence["refresh"]


def test_interval_one_still_tells_caller_from_schedule():
    hyper = Hyperparameters(lr=0.1, beta1=0.9, beta2=0.9, gamma=0.1, eps=1e-12, weight_decay=0.0,
                            hessian_interval=1)
    for name in ("paper", "official"):
        det = detect(reference(name), hyper)
        assert_detected(det, DIALECTS[name].knobs)


def fixed_eps(eps):
    def factory(params, **kwargs):
        kwargs["eps"] = eps  # ignores the eps it is given
        return SophiaRef(params, **kwargs)
    return factory


def test_fixed_eps_must_be_the_presets_default():
    det = detect(ConventionAdapter(fixed_eps(1e-8), "fixed eps", extra={"dialect": "optax"}))
    assert det.eps == 1e-8 and det.eps_fixed is True
    assert det.preset == "optax"  # optax's default eps
    det = detect(ConventionAdapter(fixed_eps(1e-9), "fixed eps", extra={"dialect": "optax"}))
    assert det.eps == 1e-9 and det.eps_fixed is True
    assert det.knobs == OPTAX.knobs and det.preset is None and det.matches == ()
    assert "ignores the hyperparameter" in det.evidence["eps"]


class DecayVariant(ConventionAdapter):
    """SophiaRef (paper) built without weight decay; the decay applied by hand in another form."""

    def __init__(self, mode: str):
        super().__init__(SophiaRef, f"decay {mode}", extra={"dialect": "paper"})
        self.mode = mode

    def build(self, params, hyper, dtype, device):
        self.lr, self.wd = hyper.lr, hyper.weight_decay
        super().build(params, replace(hyper, weight_decay=0.0), dtype, device)

    def step(self, grads, refresh):
        p = self.tensors[0]
        with torch.no_grad():
            if self.mode == "coupled":
                grads = [g + self.wd * p.detach() for g in grads]
            elif self.mode == "decoupled_unscaled":
                p.mul_(1 - self.wd)
        super().step(grads, refresh)
        if self.mode == "decoupled_after":
            with torch.no_grad():
                p.mul_(1 - self.lr * self.wd)


@pytest.mark.parametrize("mode, form", [("coupled", "coupled"), ("decoupled_after", "after")])
def test_weight_decay_forms_the_knob_expresses(mode, form):
    det = detect(DecayVariant(mode))
    assert det.weight_decay == mode, det.evidence["weight_decay"]
    assert det.knobs == replace(PAPER.knobs, weight_decay_form=form) and det.preset is None, det.describe()
    assert det.consistent and det.best_fit is None, det.describe()
    assert [(d["knob"], d["value"]) for d in det.departures()] == [("weight_decay_form", form)]


@pytest.mark.parametrize("mode", ["decoupled_unscaled", "none"])
def test_weight_decay_forms_outside_the_knobs(mode):
    det = detect(DecayVariant(mode))
    assert det.weight_decay == mode, det.evidence["weight_decay"]
    assert det.weight_decay_form is None and det.knobs is None and det.preset is None, det.describe()
    assert not det.consistent and det.best_fit is not None, det.describe()
    assert det.best_fit.cross_check == min(det.best_fit.cross_check, det.cross_check)
    assert ("weight_decay", mode) in [(d["knob"], d["value"]) for d in det.departures()]
    assert "best fit" in det.describe()


# -- the public packages, as their SPEC section 5 rows ------------------------------------------------------------

def _installed(distribution: str) -> None:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed")


def _adapter(module: str, cls: str):
    mod = pytest.importorskip(f"verification.adapters.{module}")
    return getattr(mod, cls)()


PUBLIC = {
    # SPEC row: update, eps, h < 0, batch factor, bias correction, weight decay, refresh, m updates
    "official": ("sophia-opt", "official", "OfficialAdapter", OFFICIAL.knobs, 1e-15, True, False, ("official",)),
    "sophia_optimizer": ("sophia-optimizer", "sophia_optimizer", "SophiaOptimizerAdapter", SOPHIA_OPTIMIZER.knobs,
                         1e-15, True, True, ("sophia_optimizer",)),
    "pytorch_optimizer": ("pytorch-optimizer", "pytorch_optimizer", "PytorchOptimizerAdapter",
                          PYTORCH_OPTIMIZER.knobs, 1e-12, False, False, ("paper_v1", "pytorch_optimizer")),
    "optax": ("optax", "optax_adapter", "OptaxAdapter", OPTAX.knobs, 1e-12, False, False, ("optax",)),
}


@pytest.mark.parametrize("name", list(PUBLIC))
def test_public_package_is_its_spec_row(name):
    distribution, module, cls, knobs, eps, eps_fixed, internal, matches = PUBLIC[name]
    _installed(distribution)
    det = detect(_adapter(module, cls))
    assert det.knobs == canonical(knobs), det.describe()
    assert det.eps == eps and det.eps_fixed is eps_fixed, det.describe()
    assert det.weight_decay == "decoupled", det.describe()
    assert det.state_dtype == "float64", det.describe()
    assert det.internal_estimator is internal, det.describe()
    assert det.matches == matches and name in det.matches, det.describe()
    assert det.consistent, det.describe()
    if name == "pytorch_optimizer":
        # beyond SPEC's "every k steps inside step()": step(hessian=...) folds an estimate on any step
        assert any("any other step" in note for note in det.notes), det.describe()
    else:
        assert det.notes == (), det.describe()
