"""Stateful fuzzing: hypothesis drives SophiaRef and fast.Sophia (foreach) side by side through random sequences
of steps, refreshes, new parameter groups, checkpoint round trips, learning-rate changes, zero_grad and frozen
parameters, on random shapes, in float64 (where the two can be compared) or float32.

Invariants after every rule:
- the clip bound: no coordinate moves by more than lr c (plus its decay term) in one step;
- finite parameters and state for finite inputs;
- resume equivalence: an optimizer rebuilt from a state_dict that went through torch.save / torch.load
  (weights_only=True) takes the next step bit for bit as the original does;
- float64: fast.Sophia agrees with SophiaRef within the tolerance model's free-running bound, 16 ulps per step
  at operand scale (verification/conformance/judge.py).

Profiles: SOPHIA_FUZZ=long runs 500 sequences of up to 50 rules (a nightly run, about 35 s); the default, 60 sequences of
up to 25 rules, fits CI.
"""

from __future__ import annotations

import copy
import io
import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sophia_ref import SophiaRef
from sophia_ref.fast import Sophia

LONG = os.environ.get("SOPHIA_FUZZ") == "long"
K = 3
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _reload(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Pair:
    """One optimizer (SophiaRef or fast.Sophia) on its own copy of the parameters, with its own estimator
    stream (seeded like the other's, so both draw the same estimates)."""

    def __init__(self, kind, values, dtype, lr):
        self.kind, self.dtype = kind, dtype
        self.params = [torch.nn.Parameter(v.clone().to(dtype)) for v in values]
        self.generator = torch.Generator().manual_seed(123)
        self.opt = self._build([self.params], lr)

    def _build(self, params_or_groups, lr):
        kwargs = dict(lr=lr, gamma=0.05, weight_decay=0.1, hessian_interval=K, hessian_estimator=self._estimate)
        groups = [{"params": ps} for ps in params_or_groups]
        if self.kind == "ref":
            return SophiaRef(groups, **kwargs)
        return Sophia(groups, backend="foreach", **kwargs)

    def _estimate(self):
        ps = [p for g in self.opt.param_groups for p in g["params"]]
        return [torch.rand(p.shape, generator=self.generator, dtype=torch.float64).to(self.dtype) * 4 for p in ps]

    def all_params(self):
        return [p for g in self.opt.param_groups for p in g["params"]]


class OptimizerMachine(RuleBasedStateMachine):
    @initialize(shape_list=st.lists(shapes, min_size=1, max_size=3), dtype=st.sampled_from([torch.float64, torch.float32]),
                lr=st.sampled_from([1e-3, 0.05, 0.5]), seed=st.integers(0, 2**16))
    def start(self, shape_list, dtype, lr, seed):
        self.rng = torch.Generator().manual_seed(seed)
        values = [torch.randn(s, generator=self.rng, dtype=torch.float64) for s in shape_list]
        self.dtype = dtype
        self.ref, self.fast = Pair("ref", values, dtype, lr), Pair("fast", values, dtype, lr)
        self.frozen: set[int] = set()
        self.steps = 0
        self.before = None

    # -- rules ---------------------------------------------------------------------------------------------------

    def _grads(self):
        out = []
        for i, p in enumerate(self.ref.all_params()):
            out.append(None if i in self.frozen else
                       (torch.randn(p.shape, generator=self.rng, dtype=torch.float64) * 0.3).to(self.dtype))
        return out

    def _step(self, pair, grads):
        for p, g in zip(pair.all_params(), grads):
            p.grad = None if g is None else g.clone()
        pair.opt.step()

    @rule()
    def step(self):
        grads = self._grads()
        self.before = [([p.detach().clone() for p in pair.all_params()], pair) for pair in (self.ref, self.fast)]
        self.last_grads = grads
        self._step(self.ref, grads)
        self._step(self.fast, grads)
        self.steps += 1

    @rule(shape=shapes, lr=st.sampled_from([1e-3, 0.05, 0.5]))
    def add_group(self, shape, lr):
        value = torch.randn(shape, generator=self.rng, dtype=torch.float64)
        for pair in (self.ref, self.fast):
            p = torch.nn.Parameter(value.clone().to(self.dtype))
            pair.opt.add_param_group({"params": [p], "lr": lr})
        self.before = None

    @rule(data=st.data())
    def change_lr(self, data):
        i = data.draw(st.integers(0, len(self.ref.opt.param_groups) - 1))
        lr = data.draw(st.sampled_from([1e-4, 0.01, 0.2]))
        for pair in (self.ref, self.fast):
            pair.opt.param_groups[i]["lr"] = lr
        self.before = None

    @rule()
    def zero_grad(self):
        for pair in (self.ref, self.fast):
            pair.opt.zero_grad(set_to_none=True)

    @precondition(lambda self: len(self.frozen) < len(self.ref.all_params()))
    @rule(data=st.data())
    def freeze(self, data):
        self.frozen.add(data.draw(st.integers(0, len(self.ref.all_params()) - 1)))

    @rule()
    def thaw(self):
        self.frozen.clear()

    @rule()
    def save_and_resume(self):
        """Rebuild each optimizer from its reloaded state_dict on fresh parameter copies; the next step of the
        rebuilt one equals the original's, bit for bit; then carry on with the rebuilt one."""
        grads = self._grads()
        for pair in (self.ref, self.fast):
            saved = _reload(pair.opt.state_dict())
            twin = copy.copy(pair)
            twin_groups = [[torch.nn.Parameter(p.detach().clone()) for p in g["params"]] for g in pair.opt.param_groups]
            twin.generator = torch.Generator()
            twin.generator.set_state(pair.generator.get_state())
            twin.opt = twin._build(twin_groups, pair.opt.param_groups[0]["lr"])
            twin.opt.load_state_dict(saved)
            self._step(pair, grads)
            self._step(twin, grads)
            for a, b in zip(pair.all_params(), twin.all_params()):
                assert torch.equal(a, b), "a resumed optimizer's step differs from the original's"
            for a, b in zip(pair.all_params(), twin.all_params()):
                mine, theirs = pair.opt.state.get(a, {}), twin.opt.state.get(b, {})
                assert ("m" in mine) == ("m" in theirs)  # a parameter never stepped has no state on either side
                for key in ("m", "h"):
                    if key in mine:
                        assert torch.equal(mine[key], theirs[key])
        self.steps += 1
        self.before = None

    # -- invariants ----------------------------------------------------------------------------------------------

    @invariant()
    def finite(self):
        if not hasattr(self, "ref"):
            return
        for pair in (self.ref, self.fast):
            for p in pair.all_params():
                assert bool(torch.isfinite(p).all())
                state = pair.opt.state.get(p, {})
                for key in ("m", "h"):
                    if key in state:
                        assert bool(torch.isfinite(state[key]).all())

    @invariant()
    def clip_bound(self):
        if getattr(self, "before", None) is None:
            return
        for values, pair in self.before:
            for group in pair.opt.param_groups:
                lr, lam = group["lr"], group["weight_decay"]
                for p in group["params"]:
                    i = next((j for j, q in enumerate(pair.all_params()) if q is p), None)
                    if i is None or i >= len(values) or self.last_grads[i] is None:
                        continue
                    old = values[i].double()
                    move = (p.detach().double() - old * (1 - lr * lam)).abs()
                    ulp = torch.finfo(pair.dtype).eps * torch.maximum(old.abs(), torch.tensor(lr)) * 4
                    assert bool((move <= lr + ulp).all()), f"a step larger than lr: {float(move.max())} > {lr}"

    @invariant()
    def fast_agrees_with_the_reference(self):
        if not hasattr(self, "ref") or self.dtype != torch.float64:
            return
        for a, b in zip(self.ref.all_params(), self.fast.all_params()):
            if a.numel() == 0:
                continue
            scale = torch.maximum(a.detach().abs(), torch.tensor(0.5))
            bound = 16 * max(self.steps, 1) * torch.finfo(torch.float64).eps * scale
            assert bool(((a.detach() - b.detach()).abs() <= bound).all()), float((a - b).abs().max())


OptimizerMachine.TestCase.settings = settings(
    max_examples=500 if LONG else 60, stateful_step_count=50 if LONG else 25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], derandomize=not LONG)
TestOptimizerMachine = OptimizerMachine.TestCase
