r"""A GPT-2 small training run: ``sophia_ref.fast.Sophia`` against SophiaRef (float64 state), step by step.

Set-up: GPT-2 small (:mod:`.gpt2`), fp32 parameters, bf16 autocast, synthetic token batches (a fixed
random Markov chain), Sophia-G: the paper dialect with a GNB refresh every k = 10 steps by
:func:`sophia_ref.fast.gnb_refresh` (labels by Gumbel-max, on half the batch). Both optimizers start from
the same initial weights. Each step the model is run at the fused optimizer's parameters; its gradient,
and on refresh steps its GNB estimate (one draw of labels), are handed to *both* optimizers, so they
see the same data, the same sampled labels and the same gradients, and their difference is the
optimizers' alone. The reference's loss is evaluated at its own parameters on the same batch.

Reported per step: the two losses and their difference, and the parameter drift
``|theta_fast - theta_ref|`` (theta_ref: SophiaRef's float64 master copy) in float32 ulps at operand
scale ``max(|theta_ref|, lr)``, and relative to the reference's displacement from the start.

**The drift bound**, derived from the tolerance model (:mod:`verification.conformance.judge`): a correct
step adds at most 8 ulps of its working precision at operand scale to each quantity (the roundings on
one step's path), and carries earlier differences forward: m and h damp theirs by b1 and b2 < 1, the
parameters keep theirs (up to the decay factor 1 - lr lam < 1), and the direction ``u = clip(m / d, c)``
passes on whatever the state's difference implies. The fused side works in float32, the reference in
float64, so, accumulated per coordinate from each step's own operand scale:

- m may drift by ``M(t) = sum_{s <= t} 8 ulp32(max(|m_ref,s|, |m_ref,s-1|, |g_s|))``, and h by ``H(t)``,
  the same sum over the refresh steps at ``max(|h_ref,s|, |h_ref,s-1|, |hhat_s|)`` (between refreshes h
  is not recomputed): the earlier differences, damped, are within the sum;
- each parameter coordinate may drift by ``A(t) = sum_{s <= t} [8 ulp32(max(|theta_ref,s|,
  |theta_ref,s-1|, lr)) + lr |u(m_s, h_s) - u(m_ref,s, h_ref,s)|]``: the step's own roundings, plus the
  state-propagation term of :func:`.kernel_check.state_propagation`, the difference of the two
  directions recomputed by the rule from the two states. Where h is about 0 (d = eps) that term is what
  lets a cancelling m flip a full step of 2 lr, and only there does it grow large; it never excuses a
  direction that does not follow from the state.

The run passes if no coordinate ever leaves its allowance; the parameter coordinates whose drift needed
the second term are counted.

The loss difference is reported, not judged: it follows from the drift through the model, which
bf16 autocast makes sensitive to the last bits of the parameters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from sophia_ref import SophiaRef, rule
from sophia_ref.dialects import get_dialect
from sophia_ref.fast import Sophia, gnb_refresh

from ..conformance.judge import FLOAT64_STEP_ULPS
from ..conformance.run import _spacing

from .gpt2 import SMALL, GPT2, Config, batches
from .kernel_check import state_propagation

F64 = torch.float64
#: Sophia-G on GPT-2 small as in the paper's recipe: lr 6e-4, betas (0.965, 0.99), weight decay 0.1, k = 10; gamma
#: 0.01 with the estimate B ghat^2 (the paper's rho 0.05 over its batch factor)
HYPER = dict(lr=6e-4, betas=(0.965, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.1, hessian_interval=10)
_HYPER = rule.Hyper(lr=HYPER["lr"], beta1=HYPER["betas"][0], beta2=HYPER["betas"][1], gamma=HYPER["gamma"],
                    eps=HYPER["eps"], weight_decay=HYPER["weight_decay"], hessian_interval=HYPER["hessian_interval"])
_KNOBS = get_dialect("paper").knobs


@dataclass
class StepRecord:
    step: int
    refreshed: bool
    loss_fast: float
    loss_ref: float
    drift_ulps: float          # the largest |theta_fast - theta_ref| in float32 ulps at operand scale
    drift_relative: float      # ||theta_fast - theta_ref|| / ||theta_ref - theta_0||
    worst_ratio: float         # the largest drift / allowance: parameters against A(t), m and h against M(t), H(t)
    parameter_ratio: float = 0.0  # the parameters' share of it
    state_ratio: float = 0.0      # m's and h's


@dataclass
class TrainReport:
    backend: str
    device: str
    config: Config
    steps: int
    batch: int
    seq: int
    seconds: float = 0.0
    records: list[StepRecord] = field(default_factory=list)
    explained: int = 0         # coordinates whose drift needed the state-propagation term of A(t) (docstring)
    where: str = ""

    @property
    def passed(self) -> bool:
        return len(self.records) == self.steps and all(r.worst_ratio <= 1.0 for r in self.records) and all(
            math.isfinite(r.loss_fast) and math.isfinite(r.loss_ref) for r in self.records)

    def summary(self) -> str:
        last = self.records[-1] if self.records else None
        if last is None:
            return "no step ran"
        dloss = max(abs(r.loss_fast - r.loss_ref) for r in self.records)
        worst = max(self.records, key=lambda r: r.worst_ratio)
        text = (f"{self.steps} steps of GPT-2 (layers {self.config.layers}, width {self.config.width}, vocab "
                f"{self.config.vocab}), batch {self.batch} x {self.seq}: loss {self.records[0].loss_fast:.4f} -> "
                f"{last.loss_fast:.4f} (reference {last.loss_ref:.4f}); largest loss difference {dloss:.3g}; "
                f"drift at the end {last.drift_ulps:.3g} ulps (relative {last.drift_relative:.3g}); "
                f"worst drift / bound {worst.worst_ratio:.3g} at step {worst.step}; coordinates that needed the "
                f"state-propagation term: {self.explained}; {self.seconds:.0f} s")
        if self.where:
            text += f"; {self.where}"
        return text


def _loss(model, inputs, targets) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def train_check(backend: str = "auto", device: str = "cuda", cfg: Config = SMALL, steps: int = 200, batch: int = 8,
                seq: int | None = None, seed: int = 0, progress=None, make_optimizer=None) -> TrainReport:
    """Run the check (module docstring). ``make_optimizer(params, **HYPER)`` replaces ``Sophia(params,
    backend=backend, **HYPER)`` as the implementation under test (any optimizer with m and h in its state)."""
    seq = cfg.context if seq is None else seq
    report = TrainReport(backend, str(device), cfg, steps, batch, seq)
    fast_model = GPT2(cfg, seed=seed).to(device)
    ref_model = GPT2(cfg, seed=seed).to(device)
    fast_params = list(fast_model.parameters())
    ref_params = list(ref_model.parameters())
    fast = (make_optimizer(fast_params, **HYPER) if make_optimizer is not None
            else Sophia(fast_params, backend=backend, **HYPER))
    ref = SophiaRef(ref_params, **HYPER)
    start = [p.detach().to(F64) for p in ref_params]
    allowances = [_Allowance.start(p) for p in ref_params]
    lr = torch.tensor(HYPER["lr"], dtype=F64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    began = time.perf_counter()
    for t, (inputs, targets) in enumerate(batches(cfg, batch, steps, seed=seed + 2, device=device, seq=seq), 1):
        with autocast:
            loss = _loss(fast_model, inputs, targets)
        fast.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad(), autocast:
            loss_ref = _loss(ref_model, inputs, targets)
        refresh = (t - 1) % HYPER["hessian_interval"] == 0
        estimate = None
        if refresh:
            with autocast:
                estimate = gnb_refresh(fast_model, inputs, params=fast, sub_batch=max(1, batch // 2),
                                       generator=generator)
        for p, q in zip(fast_params, ref_params):
            q.grad = None if p.grad is None else p.grad.detach().clone()
        fast.step(hessian_estimate=estimate)
        ref.step(hessian_estimate=estimate)
        record = _drift(t, refresh, float(loss.detach()), float(loss_ref), fast, ref, fast_params, ref_params,
                        start, allowances, estimate, lr)
        report.records.append(record)
        if record.worst_ratio > 1.0 and not report.where:
            report.where = f"drift over its bound first at step {t} (ratio {record.worst_ratio:.3g})"
        if progress and (t % 20 == 0 or t == steps):
            progress(f"GPT-2 run ({backend}): step {t}/{steps}, loss {record.loss_fast:.4f} / {record.loss_ref:.4f}, "
                     f"drift {record.drift_ulps:.3g} ulps")
    report.explained = int(sum(int(a.explained.sum()) for a in allowances))
    report.seconds = time.perf_counter() - began
    return report


@dataclass
class _Allowance:
    """Per-coordinate accumulators of one parameter tensor (module docstring)."""

    rounding: torch.Tensor       # sum of 8 ulp32 at the parameter's operand scale
    propagation: torch.Tensor    # sum of lr |u(state) - u(reference state)|
    m: torch.Tensor              # M(t)
    h: torch.Tensor              # H(t)
    explained: torch.Tensor      # the drift once exceeded the rounding term alone
    previous: tuple              # the reference's theta, m, h after the previous step

    @classmethod
    def start(cls, theta: torch.Tensor) -> "_Allowance":
        zeros = lambda: torch.zeros(theta.shape, dtype=F64, device=theta.device)  # noqa: E731
        return cls(zeros(), zeros(), zeros(), zeros(), torch.zeros(theta.shape, dtype=torch.bool,
                   device=theta.device), (theta.detach().to(F64), zeros(), zeros()))


@torch.no_grad()
def _drift(t, refreshed, loss_fast, loss_ref, fast, ref, fast_params, ref_params, start, allowances, estimate,
           lr) -> StepRecord:
    """Grow each coordinate's allowances by one step (module docstring) and measure the drift of the parameters,
    m and h against them."""
    step_ulps = FLOAT64_STEP_ULPS
    worst_ulps, param_ratio, state_ratio, diff_sq, disp_sq = 0.0, 0.0, 0.0, 0.0, 0.0
    for i, (p, q, theta0, a) in enumerate(zip(fast_params, ref_params, start, allowances)):
        if p.numel() == 0:
            continue
        mine, theirs = fast.state[p], ref.state[q]
        theta_ref = theirs.get("master", q.detach()).to(F64)
        m_ref, h_ref = theirs["m"], theirs["h"]
        theta_prev, m_prev, h_prev = a.previous
        g = q.grad.to(F64) if q.grad is not None else torch.zeros_like(m_ref)
        a.rounding.add_(step_ulps * _spacing(torch.maximum(torch.maximum(theta_ref.abs(), theta_prev.abs()), lr),
                                             torch.float32))
        a.propagation.add_(state_propagation(mine["m"], mine["h"], m_ref, h_ref, _HYPER, _KNOBS))
        a.m.add_(step_ulps * _spacing(torch.maximum(torch.maximum(m_ref.abs(), m_prev.abs()), g.abs()), torch.float32))
        if refreshed:
            hhat = estimate[i].to(F64)
            a.h.add_(step_ulps * _spacing(torch.maximum(torch.maximum(h_ref.abs(), h_prev.abs()), hhat.abs()),
                                          torch.float32))
        a.previous = (theta_ref, m_ref.clone(), h_ref.clone())
        diff = (p.detach().to(F64) - theta_ref).abs()
        a.explained.logical_or_(diff > a.rounding)
        param_ratio = max(param_ratio, float((diff / (a.rounding + a.propagation)).max()))
        worst_ulps = max(worst_ulps, float((diff / _spacing(torch.maximum(theta_ref.abs(), lr), torch.float32)).max()))
        diff_sq += float((diff ** 2).sum())
        disp_sq += float(((theta_ref - theta0) ** 2).sum())
        for key, ref_value, bound in (("m", m_ref, a.m), ("h", h_ref, a.h)):
            drift = (mine[key].to(F64) - ref_value).abs()
            state_ratio = max(state_ratio, float(torch.where(drift == 0, 0.0, drift / bound).max()))
    relative = math.sqrt(diff_sq / disp_sq) if disp_sq > 0 else 0.0
    return StepRecord(t, refreshed, loss_fast, loss_ref, worst_ulps, relative, max(param_ratio, state_ratio),
                      param_ratio, state_ratio)
