"""Discovery: an optimizer's API and state slots found by behaviour, so the harness never blames it for names.

Each optimizer below is the paper's rule (SPEC section 1) in plain torch, written here, with its own
names: state ``t``/``exp_avg``/``hessian``, ``mom``/``curv``, a 0-d tensor step counter, a refresh
counter, a step counter in the param groups or on the optimizer, float32 state, and constructor
keywords ``rho``, ``k``, ``bs``, ``hessian_update_interval``, ``update_period``. The correct ones must
conform in the paper dialect once :func:`discover` has configured their ConventionAdapter. Those whose
API does not fit get one :class:`DoesNotFit` with an adapter template.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.optim import Optimizer

from sophia_ref import SophiaRef
from verification.adapters._torch import TorchAdapter
from verification.adapters.base import Adapter, NotTeacherForceable, Refresh, load_state, takes_refreshes
from verification.adapters.convention import ConventionAdapter
from sophia_ref.dialects import get_dialect
from verification.conformance import certify, reference_adapter
from verification.conformance.discover import DoesNotFit, adapter_template, discover
from verification.conformance.scenarios import Scenario

F64 = torch.float64


class _Paper(Optimizer):
    """The paper's rule; subclasses choose the names, where the counters live and the state dtype.

    Groups hold the canonical values under ``lr, b1, b2, gamma, eps, wd, k``; the constructors differ."""

    m_key, h_key = "m", "h"
    state_dtype: torch.dtype | None = None  # None: the parameter's dtype

    def _init(self, p, s) -> None:
        dtype = self.state_dtype or p.dtype
        s[self.m_key] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        s[self.h_key] = torch.zeros(p.shape, dtype=dtype, device=p.device)

    def _begin(self) -> None:
        """Called once per step() before any parameter."""

    def _group_begin(self, group) -> None:
        """Called once per group and step()."""

    def _advance(self, group, s) -> int:
        """This step's t for a parameter (its counter advanced)."""
        raise NotImplementedError

    def _refreshed(self, group, s) -> None:
        """Called when a parameter folds an estimate."""

    @torch.no_grad()
    def _step(self, estimates) -> None:
        self._begin()
        i = -1
        for group in self.param_groups:
            self._group_begin(group)
            lr, b1, b2, gamma, eps, wd, k = (group[n] for n in ("lr", "b1", "b2", "gamma", "eps", "wd", "k"))
            for p in group["params"]:
                i += 1
                if p.grad is None:
                    continue
                s = self.state[p]
                if not s:
                    self._init(p, s)
                t = self._advance(group, s)
                g = p.grad.double()
                m = b1 * s[self.m_key].double() + (1 - b1) * g
                h = s[self.h_key].double()
                if (t - 1) % k == 0:
                    h = b2 * h + (1 - b2) * estimates[i].double()
                    self._refreshed(group, s)
                s[self.m_key] = m.to(s[self.m_key].dtype)
                s[self.h_key] = h.to(s[self.h_key].dtype)
                theta = p.double()
                theta = theta - lr * wd * theta - lr * torch.clamp(m / torch.clamp(gamma * h, min=eps), -1, 1)
                p.copy_(theta)

    def _set(self, params, lr, b1, b2, gamma, eps, wd, k, **more) -> None:
        super().__init__(params, dict(lr=lr, b1=b1, b2=b2, gamma=gamma, eps=eps, wd=wd, k=k, **more))


class TExpAvgHessian(_Paper):
    """State ``t`` (int), ``exp_avg``, ``hessian``; ``rho`` is gamma, ``k`` the interval (a user's report)."""

    m_key, h_key = "exp_avg", "hessian"

    def __init__(self, params, lr=1e-3, betas=(0.96, 0.99), rho=0.01, eps=1e-12, weight_decay=0.0, k=10):
        self._set(params, lr, betas[0], betas[1], rho, eps, weight_decay, k)

    def _init(self, p, s):
        s["t"] = 0
        super()._init(p, s)

    def _advance(self, group, s):
        s["t"] += 1
        return s["t"]

    def step(self, closure=None, hessian_estimate=None):
        self._step(hessian_estimate)


class MomCurvTensorCounter(_Paper):
    """``mom``/``curv``, a 0-d float32 tensor ``n`` as step counter and a per-parameter refresh counter;
    ``beta1``/``beta2``, ``epsilon``, ``wd``, ``hessian_update_interval``; the estimate as ``step(hessian=)``."""

    m_key, h_key = "mom", "curv"

    def __init__(self, params, lr=1e-3, beta1=0.96, beta2=0.99, gamma=0.01, epsilon=1e-12, wd=0.0,
                 hessian_update_interval=10):
        self._set(params, lr, beta1, beta2, gamma, epsilon, wd, hessian_update_interval)

    def _init(self, p, s):
        s["n"] = torch.tensor(0.0)
        s["n_refresh"] = 0
        super()._init(p, s)

    def _advance(self, group, s):
        s["n"] += 1
        return int(s["n"])

    def _refreshed(self, group, s):
        s["n_refresh"] += 1

    def step(self, closure=None, hessian=None):
        self._step(hessian)


class GroupCounter(_Paper):
    """The step counter in each param group; ``b1``/``b2``, ``p`` as gamma, ``update_period``; ``step(hhat=)``;
    ``bs`` at step time (declared default 5120), which this paper implementation does not use."""

    m_key, h_key = "exp_avg", "hessian"

    def __init__(self, params, lr=1e-3, b1=0.96, b2=0.99, p=0.01, eps=1e-12, weight_decay=0.0, update_period=10):
        self._set(params, lr, b1, b2, p, eps, weight_decay, update_period)

    def _group_begin(self, group):
        group["step"] = group.get("step", 0) + 1

    def _advance(self, group, s):
        return group["step"]

    def step(self, closure=None, hhat=None, bs=5120):
        self._step(hhat)


class GlobalCounter(_Paper):
    """Counters on the optimizer itself (``self.t`` and ``self.refreshes``); ``bs`` in the constructor."""

    def __init__(self, params, lr, betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0,
                 hessian_interval=10, bs=480):
        self._set(params, lr, betas[0], betas[1], gamma, eps, weight_decay, hessian_interval, bs=bs)
        self.t, self.refreshes = 0, 0

    def _begin(self):
        self.t += 1

    def _advance(self, group, s):
        return self.t

    def step(self, closure=None, estimate=None):
        before = self.refreshes
        self._step(estimate)
        self.refreshes = before + ((self.t - 1) % self.param_groups[0]["k"] == 0)

    def state_dict(self):
        return {**super().state_dict(), "counters": (self.t, self.refreshes)}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.t, self.refreshes = state_dict.pop("counters")
        super().load_state_dict(state_dict)


class Float32State(TExpAvgHessian):
    """Correct, but m and h kept in float32 whatever the parameters: a precision matter, not a semantic one."""

    state_dtype = torch.float32


class KeepsLastGradient(TExpAvgHessian):
    """Keeps the last gradient as well (state the harness cannot write consistently)."""

    @torch.no_grad()
    def step(self, closure=None, hessian_estimate=None):
        super().step(closure, hessian_estimate)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["last_grad"] = p.grad.detach().clone()


class NoEstimate(Optimizer):
    """A step() with no way to hand it an estimate."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, dict(lr=lr))

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad.sign(), alpha=-group["lr"])


class NeedsTokenizer(TExpAvgHessian):
    """A required constructor argument the harness has no value for."""

    def __init__(self, params, tokenizer, lr=1e-3, betas=(0.96, 0.99), rho=0.01, eps=1e-12, weight_decay=0.0, k=10):
        super().__init__(params, lr, betas, rho, eps, weight_decay, k)


class EstimateAsDict(TExpAvgHessian):
    """Takes the estimate as a dict by parameter, so the harness's list raises TypeError in step()."""

    def step(self, closure=None, hessian_estimate=None):
        if hessian_estimate is not None:
            hessian_estimate = [hessian_estimate[p] for p in self.param_groups[0]["params"]]  # list[Tensor]: TypeError
        self._step(hessian_estimate)


def _hyper():
    """The battery's hyperparameters (k = 3)."""
    return Scenario("x").hyper


def configured(cls) -> tuple[ConventionAdapter, Discovery]:
    adapter = ConventionAdapter(cls, cls.__name__)
    return adapter, discover(adapter)


# -- correct implementations with their own names conform -------------------------------------------------

@pytest.mark.parametrize("cls, m, h, step, refreshes, constructor", [
    (TExpAvgHessian, "exp_avg", "hessian", ["state['t']"], [], {"gamma": "rho", "hessian_interval": "k"}),
    (MomCurvTensorCounter, "mom", "curv", ["state['n']"], ["state['n_refresh']"],
     {"beta1": "beta1", "eps": "epsilon", "weight_decay": "wd", "hessian_interval": "hessian_update_interval"}),
    (GroupCounter, "exp_avg", "hessian", ["param_groups[*]['step']"], [],
     {"beta1": "b1", "gamma": "p", "hessian_interval": "update_period"}),
    (GlobalCounter, "m", "h", ["optimizer.t"], ["optimizer.refreshes"], {"batch_size": "bs", "beta2": "betas[1]"}),
])
def test_own_names_are_found_and_it_conforms(cls, m, h, step, refreshes, constructor):
    adapter, found = configured(cls)
    assert found.configured and not found.declared
    assert (found.m.key, found.h.key) == (m, h)
    assert (found.m.form, found.h.form) == ("ema of g", "ema of the estimates")
    assert [s.label() for s in found.step] == step
    assert [s.label() for s in found.refreshes] == refreshes
    assert constructor.items() <= found.constructor.items()
    assert found.unmapped == ([] if "batch_size" in {**found.constructor, **found.step_keywords} else ["batch_size"])
    assert all("batch_size is not mapped" in f for f in found.findings), found.findings  # reported, not dropped
    assert found.state_dtype == "float64"
    assert found.not_teacher_forceable == []
    cert = certify(adapter, dialect="paper", quick=True)
    assert cert.conforms, cert.findings
    assert not any(r.error or r.skipped for r in cert.results), [(r.scenario, r.error, r.skipped) for r in cert.results]


def test_without_an_explicit_discover_the_adapter_discovers_on_first_build():
    cert = certify(ConventionAdapter(TExpAvgHessian, "TExpAvgHessian"), dialect="paper", quick=True)
    assert cert.conforms and not any("KeyError" in (r.error or "") for r in cert.results), cert.findings


def test_the_estimate_keyword_and_a_step_time_batch_keyword_come_from_step():
    _, found = configured(GroupCounter)
    assert found.estimate_keyword == "hhat" and found.step_keywords == {"batch_size": "bs"}
    assert found.defaults == {"lr": 1e-3, "beta1": 0.96, "beta2": 0.99, "gamma": 0.01, "eps": 1e-12,
                              "weight_decay": 0.0, "hessian_interval": 10, "batch_size": 5120}
    assert ConventionAdapter(MomCurvTensorCounter, "x").constructor_defaults()["hessian_interval"] == 10
    assert configured(MomCurvTensorCounter)[1].estimate_keyword == "hessian"


def test_counters_keep_their_type_and_refreshes_are_written():
    adapter, _ = configured(MomCurvTensorCounter)
    adapter.build([torch.zeros(3, dtype=F64)], _hyper(), F64, "cpu")  # k = 3
    m, h = [torch.full((3,), 0.5, dtype=F64)], [torch.full((3,), 2.0, dtype=F64)]
    assert takes_refreshes(adapter)
    load_state(adapter, [torch.ones(3, dtype=F64)], 5, m, h, refreshes=1)
    s = adapter.opt.state[adapter.tensors[0]]
    assert isinstance(s["n"], torch.Tensor) and s["n"].dtype == torch.float32 and float(s["n"]) == 5.0
    assert s["n_refresh"] == 1 and type(s["n_refresh"]) is int
    assert adapter.state()[0] == 5 and torch.equal(adapter.state()[2][0], h[0])
    adapter.load([torch.ones(3, dtype=F64)], 4, m, h)  # no count given, none recorded: the schedule's, ceil(4 / 3)
    assert s["n_refresh"] == 2


@pytest.mark.parametrize("cls", [TExpAvgHessian, MomCurvTensorCounter, GroupCounter, GlobalCounter])
def test_a_fresh_optimizer_loaded_mid_run_continues_like_the_reference(cls):
    """load() on a never-stepped optimizer creates its state in its own layout, counters included: the next step
    is t = 6, which does not refresh (k = 3), as in the reference (a counter left at 0 would refresh)."""
    adapter, _ = configured(cls)
    reference = reference_adapter(get_dialect("paper"))
    gen = torch.Generator().manual_seed(3)
    theta, m, h, g, hhat = (torch.randn(4, dtype=F64, generator=gen) for _ in range(5))
    for side in (adapter, reference):
        side.build([theta.clone()], _hyper(), F64, "cpu")
        load_state(side, [theta.clone()], 5, [m.clone()], [h.abs()], refreshes=2)
        side.step([g.clone()], Refresh(hhat=[hhat.abs()]))
    assert adapter.state()[0] == reference.state()[0] == 6
    got, want = (adapter.parameters(), *adapter.state()[1:]), (reference.parameters(), *reference.state()[1:])
    for mine, theirs in zip(got, want):
        assert torch.allclose(mine[0], theirs[0], rtol=1e-14, atol=1e-15)


def test_float32_state_is_found_and_reported_as_precision():
    adapter, found = configured(Float32State)
    assert (found.m.dtype, found.h.dtype, found.state_dtype) == ("float32", "float32", "float32")
    assert any(f.startswith("state precision:") for f in found.findings), found.findings
    cert = certify(adapter, dialect="paper", quick=True)
    assert not any(r.error or r.harness_error for r in cert.results), [r.error for r in cert.results]


def test_state_it_cannot_write_is_not_teacher_forceable_and_free_running_decides():
    adapter, found = configured(KeepsLastGradient)
    assert found.not_teacher_forceable == ["state['last_grad']"]
    assert any(f.startswith("not teacher-forceable: state['last_grad']") for f in found.findings)
    adapter.build([torch.zeros(2, dtype=F64)], _hyper(), F64, "cpu")
    adapter.step([torch.ones(2, dtype=F64)], Refresh(hhat=[torch.ones(2, dtype=F64)]))
    with pytest.raises(NotTeacherForceable, match=r"^not teacher-forceable: state\['last_grad'\] \("):
        adapter.load(adapter.parameters(), 1, [torch.zeros(2, dtype=F64)], [torch.zeros(2, dtype=F64)])
    cert = certify(adapter, dialect="paper", quick=True)
    forced = [r for r in cert.results if r.tier == "teacher-forced"]
    assert forced and all(r.skip_kind == "not teacher-forceable" for r in forced if r.skipped)
    assert all(r.error is None for r in cert.results) and any(r.tier == "free-running" and r.passed
                                                              for r in cert.results)


def test_sophia_ref_is_discovered_with_its_counters_and_master_copy():
    adapter, found = configured(SophiaRef)
    assert (found.m.key, found.h.key, found.findings) == ("m", "h", [])
    assert {s.label() for s in found.step} == {"state['step']", "optimizer._step"}
    assert "state['refreshes']" in {s.label() for s in found.refreshes}
    assert found.master is not None and found.master.key == "master" and found.master.low_dtype == "float64"
    assert json.loads(json.dumps(found.as_dict()))["m"]["key"] == "m"


# -- APIs that do not fit: one DoesNotFit, with the adapter to write ------------------------------------------

@pytest.mark.parametrize("cls, words", [
    (NoEstimate, ["takes no Hessian-diagonal estimate", "hessian_estimate"]),
    (NeedsTokenizer, ["'tokenizer'"]),
    (EstimateAsDict, ["TypeError"]),
])
def test_an_api_that_does_not_fit_raises_one_does_not_fit_with_the_template(cls, words):
    with pytest.raises(DoesNotFit) as caught:
        discover(ConventionAdapter(cls, cls.__name__))
    message = caught.value.args[0]
    assert all(w in message for w in words), message
    assert "class MyAdapter(Adapter)" in caught.value.template


def test_the_template_is_an_importable_adapter():
    namespace: dict = {}
    exec(compile(adapter_template("PortAdapter", "their.module:TheirSophia"), "template.py", "exec"), namespace)
    cls = namespace["PortAdapter"]
    assert issubclass(cls, Adapter) and cls.name == "TheirSophia"
    adapter = cls()  # every abstract method is there
    assert takes_refreshes(adapter) and adapter.constructor_defaults() is None
    assert "from their.module import TheirSophia" in adapter_template(spec="their.module:TheirSophia")


def test_an_adapter_that_declares_its_api_is_left_alone():
    class Declared(TorchAdapter):
        name = "declared"

        def build(self, params, hyper, dtype, device):
            raise NotImplementedError

        def step(self, grads, refresh):
            raise NotImplementedError

        def load(self, params, step, m, h):  # the five-argument form of adapters written before refreshes=
            self.loaded = step

    adapter = Declared()
    found = discover(adapter)
    assert found.declared and found.findings == [] and not takes_refreshes(adapter)
    load_state(adapter, [], 3, [], [], refreshes=1)
    assert adapter.loaded == 3
