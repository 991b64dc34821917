"""The low-precision tolerance model: an implementation is held to twice the error of a naive
float32 evaluation on the same inputs plus 2 ulps; rounding the state to bfloat16 is caught."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sophia_ref import SophiaRef
from sophia_ref.dialects import PAPER
from verification.adapters import ConventionAdapter
from verification.conformance import NaiveAdapter, certify


class Bfloat16State(NaiveAdapter):
    """A kernel that keeps m and h in bfloat16: rounds the state every step."""

    def step(self, grads, refresh):
        super().step(grads, refresh)
        self.states = [s._replace(m=s.m.to(torch.bfloat16).float(), h=s.h.to(torch.bfloat16).float(),
                                  denominator=None) for s in self.states]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sophiaref_with_low_precision_parameters_conforms(dtype):
    cert = certify(ConventionAdapter(SophiaRef, "SophiaRef", dialect="paper"), quick=True, dtype=dtype)
    assert cert.conforms, cert.findings
    assert cert.metrics["naive_teacher_forced_max_ulps"] is not None  # the yardstick was measured in this run
    # float64 state and master: one rounding of the parameter, at most half an ulp of its dtype per step
    assert cert.metrics["teacher_forced_max_ulps"] <= cert.metrics["naive_teacher_forced_max_ulps"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_naive_evaluation_itself_conforms(dtype):
    assert certify(NaiveAdapter(PAPER), quick=True, dtype=dtype).conforms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_kernel_that_rounds_its_state_to_bfloat16_is_rejected(dtype):
    cert = certify(Bfloat16State(PAPER), quick=True, dtype=dtype)
    assert not cert.conforms
    assert any(f.startswith(("residual: m off", "residual: h off")) for f in cert.findings), cert.findings
    residuals = [f for f in cert.findings if f.startswith("residual:")]
    assert residuals and all("naive float32 evaluation" in f for f in residuals)  # both numbers printed


def test_float16_skips_what_it_cannot_represent():
    cert = certify(ConventionAdapter(SophiaRef, "SophiaRef", dialect="paper"), dtype=torch.float16)
    skipped = {r.scenario: r.skipped for r in cert.results if r.skipped}
    assert "overflow float16" in skipped["huge gradients"] and "underflow float16" in skipped["curvature near eps/gamma"]


def test_clip_boundary_disagreements_are_explained_or_flagged():
    """A coordinate clipped on one side only is explained when the reference's |m/d| sits at the clip
    threshold (a few roundings decide) and flagged when it is far from it."""
    from verification.conformance import Scenario, _clip_disagreements

    scenario = Scenario("crafted")
    hyper = replace(scenario.hyper, lr=0.5, weight_decay=0.0, gamma=1.0, eps=1e-12)  # lr a power of two: exact
    lr = hyper.lr
    before = [torch.zeros(2, dtype=torch.float64)]
    h = [torch.ones(2, dtype=torch.float64)]  # d = gamma h = 1, so |m/d| = |m|
    m = [torch.tensor([1.0 - 2.0 ** -45, 0.5], dtype=torch.float64)]
    want = [torch.tensor([-lr * (1.0 - 2.0 ** -45), -0.5 * lr], dtype=torch.float64)]  # the reference: unclipped
    got = [torch.tensor([-lr, -lr], dtype=torch.float64)]  # the implementation clipped both
    notes = _clip_disagreements(PAPER, hyper, scenario, 3, before, got, want, (m, h), m, h)
    assert len(notes) == 2
    assert notes[0].startswith("step 3, parameter 0[0]: the implementation clipped it") and "; explained" in notes[0]
    assert notes[1].startswith("step 3, parameter 0[1]") and "NOT explained" in notes[1]
