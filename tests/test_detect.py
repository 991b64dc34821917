"""Dialect detection (verification.detect): knobs inferred from behaviour alone.

- every preset, run as SophiaRef through the convention adapter, is detected as itself
  (``paper_v1`` and ``pytorch_optimizer`` have the same knobs: behaviour names both);
- every combination of knob values (288 custom dialects) is detected exactly, up to the one
  knob that does not change behaviour (clip_form where eps sits inside max), and the
  detected knobs reproduce the implementation step for step;
- eps that ignores the hyperparameter, and weight-decay forms the rule does not have;
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
    return replace(knobs, clip_form="clip") if knobs.eps_placement == "max" else knobs


def expected_matches(knobs: Knobs) -> tuple[str, ...]:
    return tuple(name for name, d in DIALECTS.items() if canonical(d.knobs) == canonical(knobs))


def reference(dialect) -> ConventionAdapter:
    name = dialect if isinstance(dialect, str) else dialect.name
    return ConventionAdapter(SophiaRef, f"SophiaRef ({name})", extra={"dialect": dialect})


def assert_detected(det: Detection, knobs: Knobs) -> None:
    assert det.knobs == canonical(knobs), det.describe()
    assert det.moot == (("clip_form",) if knobs.eps_placement == "max" else ()), det.describe()
    assert det.weight_decay == "decoupled", det.describe()
    assert det.consistent, det.describe()
    assert not det.internal_estimator


@pytest.mark.parametrize("name", list(DIALECTS))
def test_every_preset_is_detected_as_itself(name):
    det = detect(reference(name))
    assert_detected(det, DIALECTS[name].knobs)
    assert det.eps == 1e-12 and det.eps_fixed is False  # SophiaRef takes any eps: the probe's own
    assert det.matches == SAME_KNOBS.get(name, (name,)), det.describe()
    assert det.preset == det.matches[0]
    assert set(det.evidence) >= {"form", "eps", "eps_placement", "clip_form", "bias_correction", "refresh",
                                 "batch_factor", "momentum_updates", "weight_decay", "cross_check"}


ALL_KNOBS = [Knobs(*values) for values in itertools.product(
    ("gamma", "rho"), ("max", "add"), ("clip", "sign_min"), (False, True), ("immediate", "next_step", "caller"),
    ("estimate", "step"), (1, 2, 3))]


def test_every_knob_combination_is_detected():
    """288 custom dialects (paper with bias correction, paper with eps added, ...): exact knobs, the right
    preset or none."""
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


@pytest.mark.parametrize("mode", ["coupled", "decoupled_unscaled", "decoupled_after", "none"])
def test_weight_decay_forms(mode):
    det = detect(DecayVariant(mode))
    assert det.weight_decay == mode, det.evidence["weight_decay"]
    assert det.knobs == PAPER.knobs and det.preset is None


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
    assert det.internal_estimator is internal, det.describe()
    assert det.matches == matches and name in det.matches, det.describe()
    assert det.consistent, det.describe()
    if name == "pytorch_optimizer":
        # beyond SPEC's "every k steps inside step()": step(hessian=...) folds an estimate on any step
        assert any("any other step" in note for note in det.notes), det.describe()
    else:
        assert det.notes == (), det.describe()
