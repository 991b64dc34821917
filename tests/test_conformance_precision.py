"""The low-precision tolerance model: an implementation is held to twice the error of a naive
float32 evaluation on the same inputs plus 2 ulps; rounding the state to bfloat16 is caught."""

from __future__ import annotations

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
    assert any(" m off by " in f or " h off by " in f for f in cert.findings)
    assert all("naive float32 evaluation" in f for f in cert.findings if " off by " in f)  # both numbers printed


def test_float16_skips_what_it_cannot_represent():
    cert = certify(ConventionAdapter(SophiaRef, "SophiaRef", dialect="paper"), quick=True, dtype=torch.float16)
    skipped = {r.scenario: r.skipped for r in cert.results if r.skipped}
    assert "overflow float16" in skipped["huge gradients"] and "underflow float16" in skipped["curvature near eps/gamma"]
