"""An independent Sophia (SPEC section 1, dialect ``paper``), written from SPEC, not from sophia_ref.

A textbook per-tensor ``torch.optim.Optimizer`` in the convention the conformance harness
drives (``ConventionAdapter``): built as ``cls(params, lr=, betas=, gamma=, eps=,
weight_decay=, hessian_interval=)``, stepped as ``step(closure=None, hessian_estimate=None)``,
float64 per-parameter state ``m``, ``h``, ``step``::

    m_t = b1 m_{t-1} + (1 - b1) g_t
    if (t - 1) % k == 0:  h_t = b2 h_{t-k} + (1 - b2) hhat_t      (hhat_t: this step's estimate)
    theta -= lr wd theta
    theta -= lr clamp(m_t / max(gamma h_t, eps), -1, 1)

Deliberately wrong variants are subclasses that flip one class-level flag each; they exist
to check that the harness rejects them.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

F64 = torch.float64


class IndependentSophia(Optimizer):
    # -- flags: the correct rule is the defaults; each wrong variant below flips one -----------------
    refresh_phase = "paper"      # "paper": (t-1) % k == 0, estimate of this step, used at once
                                 # "t_mod_k": refresh when t % k == 0 with the latest estimate it was handed
                                 # "delayed": refresh on the paper's steps, but this step divides by the old h
    eps_override = None          # a float: use it instead of the given eps
    clip = True                  # False: m / max(gamma h, eps) unclipped
    bias_correction = False      # True: m / (1 - b1^t) in the step
    momentum_updates = 1         # 2: m absorbs the gradient twice per step
    eps_placement = "max"        # "add": gamma h + eps
    weight_decay_mode = "before"  # "after": decay the already-stepped theta; "coupled": g += wd theta
    ignore_estimate = False      # True: refresh steps keep h as it was

    def __init__(self, params, lr, betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0,
                 hessian_interval=10):
        if not lr >= 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if not gamma > 0.0 or not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError("invalid gamma, eps or weight_decay")
        if int(hessian_interval) != hessian_interval or hessian_interval < 1:
            raise ValueError(f"invalid hessian_interval {hessian_interval}")
        defaults = dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay,
                        hessian_interval=int(hessian_interval))
        super().__init__(params, defaults)
        self._latest_estimate = None  # only the "t_mod_k" variant reads it

    @torch.no_grad()
    def step(self, closure=None, hessian_estimate=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if hessian_estimate is not None:
            self._latest_estimate = list(hessian_estimate)

        index = -1  # position of p among all parameters, all groups: the estimate list's order
        for group in self.param_groups:
            lr, (b1, b2), gamma = group["lr"], group["betas"], group["gamma"]
            wd, k = group["weight_decay"], group["hessian_interval"]
            eps = group["eps"] if self.eps_override is None else self.eps_override
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["m"] = torch.zeros(p.shape, dtype=F64, device=p.device)
                    state["h"] = torch.zeros(p.shape, dtype=F64, device=p.device)
                state["step"] += 1
                t = state["step"]
                theta = p.detach().to(F64).clone()
                grad = p.grad.detach().to(F64)
                if self.weight_decay_mode == "coupled":
                    grad = grad + wd * theta

                m, h = state["m"], state["h"]
                for _ in range(self.momentum_updates):
                    m.mul_(b1).add_(grad, alpha=1 - b1)

                h_used = h
                if self.refresh_phase == "t_mod_k":
                    refresh = t % k == 0
                    estimate = self._latest_estimate
                else:
                    refresh = (t - 1) % k == 0
                    estimate = hessian_estimate
                if refresh and estimate is not None and not self.ignore_estimate:
                    if self.refresh_phase == "delayed":
                        h_used = h.clone()
                    h.mul_(b2).add_(estimate[index].detach().to(F64), alpha=1 - b2)
                elif refresh and estimate is None and self.refresh_phase == "paper":
                    raise ValueError(f"step {t} refreshes h but no hessian_estimate was given")

                if self.weight_decay_mode == "before":
                    theta.mul_(1 - lr * wd)

                m_used = m / (1 - b1 ** t) if self.bias_correction else m
                if self.eps_placement == "max":
                    denominator = torch.clamp(gamma * h_used, min=eps)
                else:
                    denominator = gamma * h_used + eps
                ratio = m_used / denominator
                if self.clip:
                    ratio = torch.clamp(ratio, -1.0, 1.0)
                theta.add_(ratio, alpha=-lr)

                if self.weight_decay_mode == "after":
                    theta.mul_(1 - lr * wd)
                p.copy_(theta)
        return loss


# -- deliberately wrong variants: one departure each -----------------------------------------------------

class RefreshWhenTModKIsZero(IndependentSophia):
    """Refreshes on t = k, 2k, ... (the latest estimate it was handed) instead of t = 1, k+1, ..."""
    refresh_phase = "t_mod_k"


class RefreshUsedFromNextStep(IndependentSophia):
    """Refreshes on the paper's steps, but the step divides by the h from before the refresh."""
    refresh_phase = "delayed"


class WrongEps(IndependentSophia):
    """eps = 1e-8 whatever eps it was given."""
    eps_override = 1e-8


class NoClip(IndependentSophia):
    """m / max(gamma h, eps), unclipped."""
    clip = False


class BiasCorrectedMomentum(IndependentSophia):
    """m / (1 - b1^t) in the step (state m itself is the paper's)."""
    bias_correction = True


class DoubleMomentum(IndependentSophia):
    """m absorbs the gradient twice per step."""
    momentum_updates = 2


class EpsAdded(IndependentSophia):
    """gamma h + eps instead of max(gamma h, eps)."""
    eps_placement = "add"


class DecayAfterStep(IndependentSophia):
    """Weight decay applied to the already-stepped theta."""
    weight_decay_mode = "after"


class DecayCoupled(IndependentSophia):
    """Weight decay folded into the gradient (L2), so it goes through m and the clip."""
    weight_decay_mode = "coupled"


class IgnoresEstimate(IndependentSophia):
    """Refresh steps silently keep h unchanged."""
    ignore_estimate = True


WRONG_VARIANTS = (RefreshWhenTModKIsZero, RefreshUsedFromNextStep, WrongEps, NoClip, BiasCorrectedMomentum,
                  DoubleMomentum, EpsAdded, DecayAfterStep, DecayCoupled, IgnoresEstimate)


# -- implementations that fail outright ------------------------------------------------------------------

class RaisesMidRun(IndependentSophia):
    """Raises on step 5."""

    def step(self, closure=None, hessian_estimate=None):
        for group in self.param_groups:
            for p in group["params"]:
                if self.state[p].get("step", 0) + 1 == 5:
                    raise RuntimeError("deliberate failure on step 5")
        return super().step(closure, hessian_estimate)


class ReturnsNaN(IndependentSophia):
    """Writes NaN into every parameter on step 3."""

    @torch.no_grad()
    def step(self, closure=None, hessian_estimate=None):
        loss = super().step(closure, hessian_estimate)
        for group in self.param_groups:
            for p in group["params"]:
                if self.state[p].get("step") == 3:
                    p.fill_(float("nan"))
        return loss


class NaNMomentumOnStep(IndependentSophia):
    """Correct parameters throughout, but after step ``nan_step`` its state m is all NaN."""

    nan_step = 12

    @torch.no_grad()
    def step(self, closure=None, hessian_estimate=None):
        loss = super().step(closure, hessian_estimate)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if state.get("step") == self.nan_step:
                    state["m"].fill_(float("nan"))
        return loss


class RejectsHyperparameters(IndependentSophia):
    """Its constructor accepts nothing the battery gives it."""

    def __init__(self, params, lr, betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0,
                 hessian_interval=10):
        raise ValueError(f"gamma={gamma} is not supported by this implementation")


# -- the knobs of issue 8, written from their statement (bias correction of h, estimate clamp, weight-decay
# form, a refresh that never fires) and state precision: one departure each ------------------------------

class KnobbedSophia(IndependentSophia):
    """The paper's rule with the later departures as class-level flags, in the order of one step::

        (coupled: g += wd theta) -> m update -> refresh? (clamp hhat, h = b2 h + (1 - b2) hhat, count it)
        -> h / (1 - b2^n) (h bias correction) -> clamp(m / max(gamma h, eps), -1, 1) -> weight decay

    With the defaults it is :class:`IndependentSophia`'s rule; m and h are kept in ``state_dtype``
    (the step divides by the values as stored).
    """

    h_bias = "none"           # "steps": n = t; "refreshes": n = refreshes folded so far; "steps_b1": 1 - b1^t
    clamp_estimate = "none"   # "zero": max(hhat, 0); "abs": |hhat|
    never_refresh = False     # True: h never changes, estimates are ignored
    decay = "before"          # "after": (theta - lr u)(1 - lr wd); "coupled": g += wd theta; "unscaled": theta -= wd theta
    state_dtype = F64         # torch.float32: m and h kept in float32

    @torch.no_grad()
    def step(self, closure=None, hessian_estimate=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            lr, (b1, b2), gamma = group["lr"], group["betas"], group["gamma"]
            wd, k, eps = group["weight_decay"], group["hessian_interval"], group["eps"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["m"] = torch.zeros(p.shape, dtype=self.state_dtype, device=p.device)
                    state["h"] = torch.zeros(p.shape, dtype=self.state_dtype, device=p.device)
                state["step"] += 1
                t = state["step"]
                theta = p.detach().to(F64).clone()
                grad = p.grad.detach().to(F64)
                if self.decay == "coupled":
                    grad = grad + wd * theta

                m = state["m"].to(F64)
                m = b1 * m + (1 - b1) * grad
                state["m"] = m.to(self.state_dtype)
                m = state["m"].to(F64)

                h = state["h"].to(F64)
                if not self.never_refresh and (t - 1) % k == 0:
                    if hessian_estimate is None:
                        raise ValueError(f"step {t} refreshes h but no hessian_estimate was given")
                    hhat = hessian_estimate[index].detach().to(F64)
                    if self.clamp_estimate == "zero":
                        hhat = hhat.clamp(min=0.0)
                    elif self.clamp_estimate == "abs":
                        hhat = hhat.abs()
                    h = b2 * h + (1 - b2) * hhat
                    state["h"] = h.to(self.state_dtype)
                    h = state["h"].to(F64)
                    state["refreshes"] = state.get("refreshes", 0) + 1

                h_used = h
                if self.h_bias == "steps":
                    h_used = h / (1 - b2 ** t)
                elif self.h_bias == "refreshes" and state.get("refreshes", 0) > 0:
                    h_used = h / (1 - b2 ** state["refreshes"])
                elif self.h_bias == "steps_b1":
                    h_used = h / (1 - b1 ** t)

                u = torch.clamp(m / torch.clamp(gamma * h_used, min=eps), -1.0, 1.0)
                if self.decay == "before":
                    theta = theta - lr * wd * theta - lr * u
                elif self.decay == "after":
                    theta = (theta - lr * u) * (1 - lr * wd)
                elif self.decay == "unscaled":
                    theta = theta - wd * theta - lr * u
                else:
                    theta = theta - lr * u
                p.copy_(theta)
        return loss


class HBiasBySteps(KnobbedSophia):
    """The step divides by h / (1 - b2^t)."""
    h_bias = "steps"


class HBiasByRefreshes(KnobbedSophia):
    """The step divides by h / (1 - b2^n), n the refreshes folded into h so far."""
    h_bias = "refreshes"


class EstimateClampedAtZero(KnobbedSophia):
    """A refresh folds max(hhat, 0) into h."""
    clamp_estimate = "zero"


class EstimateAbs(KnobbedSophia):
    """A refresh folds |hhat| into h."""
    clamp_estimate = "abs"


class RefreshNever(KnobbedSophia):
    """The refresh never fires (fastxtend's ``step % k == k``): h stays 0 and every step is a sign step."""
    never_refresh = True


class Float32State(KnobbedSophia):
    """m and h kept in float32 in a float64 run."""
    state_dtype = torch.float32


class DecayUnscaled(KnobbedSophia):
    """theta -= wd theta, weight decay not scaled by lr (outside the knobs)."""
    decay = "unscaled"


class HBiasByB1(KnobbedSophia):
    """h bias-corrected by steps, but with b1: h / (1 - b1^t) (outside the knobs)."""
    h_bias = "steps_b1"


KNOB_VARIANTS = (HBiasBySteps, HBiasByRefreshes, EstimateClampedAtZero, EstimateAbs, RefreshNever, Float32State,
                 DecayUnscaled, HBiasByB1)


class HBiasStepsDecayUnscaled(KnobbedSophia):
    """h bias-corrected by steps, and weight decay not scaled by lr (outside the knobs)."""
    h_bias = "steps"
    decay = "unscaled"
