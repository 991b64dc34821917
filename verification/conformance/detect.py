"""Dialect detection: which knobs of :mod:`sophia_ref.rule` an implementation follows, from its behaviour alone.

:func:`detect` drives an :class:`~verification.adapters.base.Adapter` through targeted
probes (build on a tiny float64 tensor, :meth:`~Adapter.load` a chosen state, one step
with a chosen gradient and estimate, read parameters and state back) and infers each
knob of :class:`~sophia_ref.rule.Knobs`, the eps value, the weight-decay form and
whether the implementation makes its own estimate. It never reads source code nor the
adapter's declared ``dialect``.

Probe hyperparameters are exact binary fractions chosen so that no two readings of a
knob give the same numbers: ``lr = 1/8``, ``b1 = b2 = 1/2``, ``gamma = 1/4`` (rho in the
rho form), weight decay ``1/2`` and batch size ``8`` where those are probed, 0 and 1
elsewhere. Only ``eps`` and ``hessian_interval`` come from the ``hyper`` passed in (the
values an adapter may insist on); with ``hyper=None`` detection tries eps ``1e-12`` and
interval 3 first, then the presets' default eps values and interval 1, until the
adapter accepts the build. Each probe, in order (each later one uses what the earlier
ones found; u is the step direction, ``theta_{t+1} = theta_t - lr u`` without decay):

1. refresh schedule: for each step t = 1 .. 2k+1 alone (loaded state at t - 1), with
   and without an estimate offered: does h change, does the step refuse?
2. refresh timing: b1 = b2 = 0 on a refresh step, two runs that differ only in the
   loaded h: the same step (the new h is used at once) or steps 16x apart (the old h).
3. momentum updates: m after one step from loaded m0 = 1, g = 0 is ``b1^n``.
4. bias correction: the same unclipped step at t = 2 and at t = 2 + 20k; their ratio
   is ``(1 - b1^(2+20k)) / (1 - b1^2) = 4/3`` with bias correction, 1 without.
5. form and batch factor: the clip bound (h = 0, huge m) is lr (gamma form) or lr rho
   (rho form); the unclipped ratio is m / (gamma h) or m / h; with batch size 8 instead
   of 1 the unclipped step is 8x smaller (B at step time) or unchanged.
6. eps: h = 0 and m from 1e-1 down to 1e-30: the largest unclipped step gives
   eps = m / u; a second build with 10x eps says whether eps follows the hyperparameter.
7. eps placement: scaled curvature equal to eps and to 3 eps: d = eps, 3 eps (max) or
   2 eps, 4 eps (added).
8. clip form: h < 0 with huge m: a descent sign step (eps inside max; clip and
   sign_min agree there), an ascent of size lr c (clip with added eps) or an ascent of
   size lr |m / d| (sign_min with added eps).
9. weight decay: coordinates with m = g = 0 move by -lr wd theta (decoupled, the paper),
   -wd theta (not scaled by lr), or not at all; m != 0 afterwards means L2 folded into
   the gradient; sign-step coordinates tell decay of the pre-step from the post-step theta.

Finally the detected knobs drive :class:`~sophia_ref.SophiaRef` in lock-step with the
implementation (teacher-forced, random data, refreshes on the detected schedule) as a
cross-check. The preset is the first of :data:`~sophia_ref.dialects.DIALECTS` whose knobs
give the same behaviour (``clip_form`` is moot when eps sits inside the max), whose
weight decay is the paper's, and whose eps agrees: the measured eps must equal the
hyperparameter when it follows the hyperparameter, else the preset's default.
``paper_v1`` and ``pytorch_optimizer`` have the same knobs, so behaviour cannot tell
them apart: ``matches`` lists both, ``preset`` names the first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from sophia_ref.dialects import DIALECTS, PAPER, Dialect
from sophia_ref.rule import Knobs

from ..adapters.base import Adapter, Hyperparameters, Refresh
from ..adapters.convention import ConventionAdapter

F64 = torch.float64
LR, B1, B2, GAMMA, WD, BATCH = 0.125, 0.5, 0.5, 0.25, 0.5, 8.0
DEFAULT_EPS, DEFAULT_INTERVAL = 1e-12, 3
REL = 1e-6  # two readings of a knob differ by a factor >= 4/3; float64 implementations agree to ~1e-15
CHECK_REL = 1e-10  # cross-check: worst deviation of a step, relative to max(|theta|, lr), to call it consistent

#: weight-decay forms :func:`detect` tells apart ("decoupled" is the paper's and every preset's)
WEIGHT_DECAY_FORMS = ("decoupled", "decoupled_after", "decoupled_unscaled", "decoupled_unscaled_after",
                      "coupled", "none")


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` found. A field is None where the probes could not decide (see ``evidence``)."""

    form: str | None
    eps_placement: str | None
    clip_form: str | None
    bias_correction: bool | None
    refresh: str | None
    batch_factor: str | None
    momentum_updates: int | None
    eps: float | None
    #: True: the implementation's eps does not follow the hyperparameter (refused or ignored); None: unknown
    eps_fixed: bool | None
    weight_decay: str | None
    internal_estimator: bool
    #: the first matching preset, or None
    preset: str | None
    #: every preset whose behaviour matches (paper_v1 and pytorch_optimizer always come together)
    matches: tuple[str, ...]
    #: per knob, what was measured and how it was read
    evidence: dict[str, str]
    #: knobs that do not change behaviour given the others, reported at their preset spelling
    moot: tuple[str, ...]
    #: findings beyond the knobs (e.g. estimates folded on steps the schedule does not name)
    notes: tuple[str, ...]
    #: the hyperparameters the probes started from (eps and hessian_interval are the ones used)
    hyper: Hyperparameters
    #: the lock-step cross-check of the detected knobs: worst step deviation relative to max(|theta|, lr)
    cross_check: float | None
    probes: int
    seconds: float

    @property
    def knobs(self) -> Knobs | None:
        """The detected :class:`Knobs`, or None while any knob is undetermined."""
        values = dict(form=self.form, eps_placement=self.eps_placement, clip_form=self.clip_form,
                      bias_correction=self.bias_correction, refresh=self.refresh, batch_factor=self.batch_factor,
                      momentum_updates=self.momentum_updates)
        if any(v is None for v in values.values()):
            return None
        return Knobs(**values)

    @property
    def consistent(self) -> bool:
        """Whether the reference with the detected knobs reproduced the implementation step for step."""
        return self.cross_check is not None and self.cross_check <= CHECK_REL

    def describe(self) -> str:
        eps = "?" if self.eps is None else f"{self.eps:g}"
        fixed = {True: " (fixed)", False: " (follows the hyperparameter)", None: ""}[self.eps_fixed]
        lines = [f"preset: {self.preset} (matches: {', '.join(self.matches) or 'none'})",
                 f"knobs: {self.knobs}", f"eps: {eps}{fixed}; weight decay: {self.weight_decay}; "
                 f"internal estimator: {self.internal_estimator}",
                 f"cross-check: {'n/a' if self.cross_check is None else f'{self.cross_check:.3g}'}"
                 f" ({'consistent' if self.consistent else 'NOT consistent'}); {self.probes} probes, "
                 f"{self.seconds:.2f} s"]
        lines += [f"- {k}: {v}" for k, v in self.evidence.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------------------------


def _t(values) -> Tensor:
    return torch.tensor(values, dtype=F64)


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b))


def _all_close(a: Tensor, b: Tensor, rel: float = REL) -> bool:
    return all(_close(float(x), float(y), rel) for x, y in zip(a.reshape(-1), b.reshape(-1)))


def _fmt(x: Tensor | float) -> str:
    if isinstance(x, Tensor):
        return "[" + ", ".join(f"{float(v):.6g}" for v in x.reshape(-1)) + "]"
    return f"{x:.6g}"


def _error(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:160]}"


@dataclass
class _Obs:
    """One step from a loaded state: what went in and what came out."""

    hyper: Hyperparameters
    t0: int
    theta0: Tensor
    m0: Tensor
    h0: Tensor
    g: Tensor
    theta1: Tensor
    m1: Tensor
    h1: Tensor

    @property
    def u(self) -> Tensor:
        """The step direction, ``(theta_t - theta_{t+1}) / lr`` (probes without weight decay)."""
        return (self.theta0 - self.theta1) / self.hyper.lr


class _Prober:
    def __init__(self, adapter: Adapter, base: Hyperparameters):
        self.adapter, self.base, self.k = adapter, base, base.hessian_interval
        self.count = 0
        self.schedule: str | None = None   # "scheduled" | "caller"
        self.self_estimating = False        # folds its own estimate on every step
        self.timing: str | None = None      # "same" | "next"
        self.bias: bool | None = None
        self.form: str | None = None
        self.batch: str | None = None
        self.c: float | None = None
        self.eps: float | None = None

    def hyper(self, **changes) -> Hyperparameters:
        values = dict(lr=LR, beta1=B1, beta2=B2, gamma=GAMMA, weight_decay=0.0, batch_size=1.0)
        values.update(changes)
        return replace(self.base, **values)

    def build(self, hyper: Hyperparameters, theta: Tensor) -> None:
        self.count += 1
        self.adapter.build([theta.clone()], hyper, F64, "cpu")

    def needs_estimate(self, t: int) -> bool:
        return self.schedule == "scheduled" and not self.self_estimating and (t - 1) % self.k == 0

    def keep(self, h0: Tensor) -> Refresh | None:
        """An estimate that leaves h as loaded (hhat = h), for a step that must be given one."""
        if bool((h0 >= 0).all()):
            return Refresh(hhat=[h0.clone()], ghat=[h0.sqrt()], batch=1.0)
        if self.adapter.accepts_any_estimate:
            return Refresh(hhat=[h0.clone()], ghat=None, batch=1.0)
        return None

    def step(self, hyper: Hyperparameters, t0: int, theta, m, h, g, refresh="auto") -> _Obs:
        theta, m, h, g = _t(theta), _t(m), _t(h), _t(g)
        self.build(hyper, theta)
        self.adapter.load([theta.clone()], t0, [m.clone()], [h.clone()])
        if refresh == "auto":
            refresh = self.keep(h) if self.needs_estimate(t0 + 1) else None
        self.adapter.step([g.clone()], refresh)
        theta1 = self.adapter.parameters()[0]
        _, ms, hs = self.adapter.state()
        return _Obs(hyper, t0, theta, m, h, g, theta1, ms[0], hs[0])

    # what the step used, given what earlier probes found
    def m_used(self, obs: _Obs) -> Tensor:
        if self.bias:
            return obs.m1 / (1 - obs.hyper.beta1 ** (obs.t0 + 1))
        return obs.m1

    def h_used(self, obs: _Obs) -> Tensor:
        return obs.h0 if self.timing == "next" else obs.h1

    def scale(self, hyper: Hyperparameters) -> float:
        s = hyper.gamma if self.form == "gamma" else 1.0
        return s * hyper.batch_size if self.batch == "step" else s


def _negotiate(adapter: Adapter, hyper: Hyperparameters | None, evidence: dict) -> Hyperparameters:
    """The base hyperparameters: the caller's, or the first eps / interval the adapter accepts."""
    probe = dict(lr=LR, beta1=B1, beta2=B2, gamma=GAMMA, weight_decay=0.0, batch_size=1.0)
    if hyper is not None:
        return replace(hyper, **probe)
    eps_values = [DEFAULT_EPS] + sorted({float(d.defaults["eps"]) for d in DIALECTS.values()} - {DEFAULT_EPS})
    refused = []
    for k in (DEFAULT_INTERVAL, 1):
        for eps in eps_values:
            base = Hyperparameters(eps=eps, hessian_interval=k, **probe)
            try:
                adapter.build([_t([0.0])], base, F64, "cpu")
            except Exception as e:  # the adapter refuses these settings: try the next
                refused.append(f"eps={eps:g}, k={k}: {_error(e)}")
                continue
            if refused:
                evidence["hyperparameters"] = (f"the adapter refused {'; '.join(refused)}; "
                                               f"probing with eps={eps:g}, k={k}")
            return base
    raise ValueError("the adapter accepted none of the probe settings: " + "; ".join(refused))


# -- the probes ------------------------------------------------------------------------------------------------


def _probe_schedule(p: _Prober, ev: dict, notes: list) -> None:
    """Steps 1 .. 2k+1, each alone from a loaded state, with and without an estimate offered."""
    k = p.k
    last = 2 * k + 1 if k > 1 else 3
    steps = range(1, last + 1)
    hyper = p.hyper()
    outcome = {}
    for offered in (True, False):
        for t in steps:
            refresh = Refresh(hhat=[_t([4.0])], ghat=[_t([2.0])], batch=1.0) if offered else None
            try:
                obs = p.step(hyper, t - 1, [0.0], [0.0], [1.0], [3.0], refresh=refresh)
            except Exception as e:
                outcome[offered, t] = ("refuses", _error(e))
                continue
            outcome[offered, t] = ("folds" if not _close(float(obs.h1), 1.0, 1e-12) else "keeps", "")
    folds_offered = {t for t in steps if outcome[True, t][0] == "folds"}
    folds_alone = {t for t in steps if outcome[False, t][0] == "folds"}
    needs = {t for t in steps if outcome[False, t][0] == "refuses"}
    refuses_offer = {t for t in steps if outcome[True, t][0] == "refuses"}
    every, sched = set(steps), {t for t in steps if (t - 1) % k == 0}

    def show(s):
        return "{" + ", ".join(map(str, sorted(s))) + "}"

    text = (f"k={k}, steps 1..{last} one at a time (h=1 loaded, b2=1/2): with an estimate offered h changed on "
            f"{show(folds_offered)}")
    if refuses_offer:
        text += f" and the step refused it on {show(refuses_offer)} ({outcome[True, min(refuses_offer)][1]})"
    text += f"; with none offered h changed on {show(folds_alone)}"
    if needs:
        text += f" and the step refused to run on {show(needs)} ({outcome[False, min(needs)][1]})"
    if folds_alone == every:
        p.schedule, p.self_estimating = "scheduled", True
        text += ": it folds an estimate of its own on every step"
        if k > 1:
            notes.append(f"refresh: folds its own estimate on every step, ignoring hessian_interval={k}")
    elif (needs | folds_alone) == sched and sched <= folds_offered:
        p.schedule = "scheduled"
        text += ": a schedule of its own, (t - 1) mod k == 0"
        extra = folds_offered - sched
        if extra:
            notes.append(f"refresh: besides its schedule (t - 1) mod {k} == 0, it folds an estimate handed in on "
                         f"any other step (here {show(extra)}); the rule's knob cannot express this, and the "
                         "harness never offers one off the schedule")
            text += f", and it also folds estimates handed in off the schedule ({show(extra)})"
    elif folds_offered == every and not folds_alone and not needs:
        p.schedule = "caller"
        text += ": exactly the steps handed an estimate (the caller's schedule)"
    else:
        text += ": no schedule the rule knows"
    ev["refresh"] = text


def _probe_timing(p: _Prober, ev: dict) -> None:
    """b1 = b2 = 0 on a refresh step: h_t = hhat whatever was loaded; the step shows which h it used."""
    if p.schedule is None:
        return
    hyper = p.hyper(beta1=0.0, beta2=0.0)
    offer = None if p.self_estimating else Refresh(hhat=[_t([1e4])], ghat=[_t([100.0])], batch=1.0)
    t0 = p.k  # step k + 1: on every schedule
    runs = [p.step(hyper, t0, [0.0], [0.0], [h0], [100.0], refresh=offer) for h0 in (2500.0, 40000.0)]
    folded = all(_close(float(r.h1), 1e4) for r in runs)
    ua, ub = float(runs[0].u), float(runs[1].u)
    text = (f"step {t0 + 1}, b1=b2=0, g=100, estimate 1e4 (= g^2), loaded h 2500 vs 40000: h after "
            f"{_fmt(runs[0].h1)} / {_fmt(runs[1].h1)}, steps u = {ua:.6g} / {ub:.6g}")
    if not folded:
        ev["refresh"] += f"; timing: {text}: the estimate was not folded, so the timing is unknown"
        return
    if _close(ua, ub):
        p.timing = "same"
        text += ": equal, so the new h is used in the same step"
    elif _close(ua / ub, 16.0):
        p.timing = "next"
        text += ": 16x apart, so the step used the h from before the refresh (the new one from the next step)"
    else:
        text += ": neither equal nor 16x apart"
    ev["refresh"] += f"; timing: {text}"


def _probe_momentum(p: _Prober, ev: dict) -> int | None:
    obs = p.step(p.hyper(), 1, [0.0] * 3, [1.0, 0.0, 1.0], [1.0] * 3, [0.0, 1.0, 1.0])
    text = f"b1=1/2, (m0, g) = (1, 0), (0, 1), (1, 1): m after one step {_fmt(obs.m1)}"
    a = float(obs.m1[0])
    n = round(math.log(a) / math.log(B1)) if a > 0 else 0
    if n >= 1 and _close(a, B1 ** n) and _close(float(obs.m1[1]), 1 - B1 ** n) and _close(float(obs.m1[2]), 1.0):
        ev["momentum_updates"] = f"{text} = b1^{n} m0 + (1 - b1^{n}) g: {n} update(s) per step"
        return n
    ev["momentum_updates"] = f"{text}: not b1^n m0 + (1 - b1^n) g for any n"
    return None


def _probe_bias(p: _Prober, ev: dict) -> None:
    hyper = p.hyper()
    ta, tb = 1, 1 + 20 * p.k
    args = ([0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [1e-3, -2e-3])
    a, b = (p.step(hyper, t0, *args) for t0 in (ta, tb))
    wa = a.u * p.h_used(a) / a.m1
    wb = b.u * p.h_used(b) / b.m1
    ratios = wa / wb
    expect = (1 - B1 ** (tb + 1)) / (1 - B1 ** (ta + 1))
    text = (f"unclipped steps (m0=0, g={_fmt(a.g)}, h={_fmt(a.h0)}) at t={ta + 1} and t={tb + 1}: "
            f"u {_fmt(a.u)} vs {_fmt(b.u)}; normalized by m and h their ratio is {_fmt(ratios)}")
    if _all_close(ratios, torch.full_like(ratios, 1.0)):
        p.bias = False
        ev["bias_correction"] = f"{text}: 1, no bias correction"
    elif _all_close(ratios, torch.full_like(ratios, expect)):
        p.bias = True
        ev["bias_correction"] = f"{text} = (1 - b1^{tb + 1}) / (1 - b1^{ta + 1}): m is divided by 1 - b1^t"
    else:
        ev["bias_correction"] = f"{text}: neither 1 nor {expect:.6g}"


def _probe_form_batch(p: _Prober, ev: dict) -> None:
    args = ([0.0] * 4, [100.0, -100.0, 1e-3, -2e-3], [0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1e-3, -2e-3])
    one = p.step(p.hyper(), 1, *args)
    eight = p.step(p.hyper(batch_size=BATCH), 1, *args)
    c_pos, c_neg = float(one.u[0]), -float(one.u[1])
    q1 = (one.u * p.h_used(one) / p.m_used(one))[2:]
    q8 = (eight.u * p.h_used(eight) / p.m_used(eight))[2:]
    text = (f"rho/gamma parameter 1/4, B=1: sign steps (h=0, m=+-100) u = {c_pos:.6g}, {-c_neg:.6g}; "
            f"unclipped (h={_fmt(one.h0[2:])}) u * h / m = {_fmt(q1)}")
    c = c_pos if _close(c_pos, c_neg) and c_pos > 0 else None
    form = None
    if c is not None and _close(c, 1.0) and _all_close(q1, torch.full_like(q1, 1 / GAMMA)):
        form, p.c = "gamma", 1.0
        text += ": clip bound 1 and ratio m / (gamma h): gamma form"
    elif c is not None and _close(c, GAMMA) and _all_close(q1, torch.full_like(q1, 1.0)):
        form, p.c = "rho", GAMMA
        text += ": clip bound rho and ratio m / h: rho form"
    else:
        text += ": neither the gamma form (bound 1, m / (gamma h)) nor the rho form (bound rho, m / h)"
        p.c = c
    p.form = form
    ev["form"] = text
    ratio = q1 / q8
    text = f"the same unclipped steps with batch_size 8 instead of 1: u(B=1) / u(B=8) = {_fmt(ratio)}"
    if _all_close(ratio, torch.full_like(ratio, 1.0)):
        p.batch = "estimate"
        ev["batch_factor"] = f"{text}: batch_size does not enter the step (B belongs in the estimate)"
    elif _all_close(ratio, torch.full_like(ratio, BATCH)):
        p.batch = "step"
        ev["batch_factor"] = f"{text}: h is multiplied by batch_size at step time"
    else:
        ev["batch_factor"] = f"{text}: neither 1 nor 8"


def _measure_eps(p: _Prober, hyper: Hyperparameters) -> tuple[float | None, str]:
    v = [10.0 ** -i for i in range(1, 31)]
    obs = p.step(hyper, 1, [0.0] * len(v), v, [0.0] * len(v), v)
    u, m = obs.u, p.m_used(obs)
    c = p.c if p.c is not None else float(u.abs().max())
    linear = [i for i in range(len(v)) if 1e-3 * c < abs(float(u[i])) < (1 - 1e-6) * c]
    if not linear:
        clipped = [i for i in range(len(v)) if _close(abs(float(u[i])), c)]
        if len(clipped) == len(v):
            return None, f"h=0, m from 1e-1 to 1e-30: every step was a sign step, so eps < {v[-1] / c:.3g}"
        return None, f"h=0, m from 1e-1 to 1e-30: no step between 1e-3 and 1 of the bound (u = {_fmt(u)})"
    estimates = [float(m[i] / u[i]) for i in linear]
    best = max(linear, key=lambda i: abs(float(u[i])))
    eps = float(m[best] / u[best])
    agree = all(_close(e, eps, 1e-4) for e in estimates)
    text = (f"h=0, m from 1e-1 to 1e-30: the largest step below the bound, u = {float(u[best]):.6g} at "
            f"m = {float(m[best]):.3g}, gives eps = m / u = {eps:.10g}"
            + ("" if agree else f" (other linear coordinates disagree: {', '.join(f'{e:.4g}' for e in estimates)})"))
    return float(f"{eps:.10g}"), text


def _probe_eps(p: _Prober, ev: dict) -> bool | None:
    eps, text = _measure_eps(p, p.hyper())
    p.eps = eps
    if eps is None:
        ev["eps"] = text
        return None
    other = float(f"{p.base.eps * 10:.12g}") if p.base.eps > 0 else 1e-10
    try:
        eps2, _ = _measure_eps(p, p.hyper(eps=other))
    except Exception as e:
        ev["eps"] = (f"{text}; built with eps={other:g} instead, the adapter refused ({_error(e)}): "
                     "eps is fixed")
        return True
    if eps2 is not None and _close(eps2, other, 1e-4) and _close(eps, p.base.eps, 1e-4):
        ev["eps"] = f"{text}; with eps={other:g} it measures {eps2:.10g}: eps follows the hyperparameter"
        return False
    if eps2 is not None and _close(eps2, eps, 1e-4):
        ev["eps"] = f"{text}; with eps={other:g} it still measures {eps2:.10g}: eps is fixed (ignores the hyperparameter)"
        return True
    ev["eps"] = f"{text}; with eps={other:g} it measures {eps2}: eps tracks neither"
    return None


def _probe_placement(p: _Prober, ev: dict) -> str | None:
    if p.eps is None or p.form is None or p.c is None or p.batch is None:
        ev["eps_placement"] = "not probed: needs eps, form and batch factor"
        return None
    hyper = p.hyper()
    s, eps, c = p.scale(hyper), p.eps, p.c
    h0 = [eps / s, 3 * eps / s, 0.0]
    m0 = [0.1 * eps * c, 0.1 * eps * c, 0.05 * eps * c]
    obs = p.step(hyper, 1, [0.0] * 3, m0, h0, m0)
    m, curvature = p.m_used(obs), p.h_used(obs) * s
    preds = {"max": (m / curvature.clamp(min=eps)).clamp(-c, c), "add": (m / (curvature + eps)).clamp(-c, c)}
    text = (f"scaled curvature {_fmt(curvature)} (eps = {eps:.6g}), m = {_fmt(m)}: u = {_fmt(obs.u)}; "
            f"m / max(s h, eps) = {_fmt(preds['max'])}, m / (s h + eps) = {_fmt(preds['add'])}")
    for name, pred in preds.items():
        if _all_close(obs.u, pred):
            ev["eps_placement"] = text + (": eps is a floor inside max" if name == "max" else ": eps is added")
            return name
    ev["eps_placement"] = text + ": matches neither"
    return None


def _probe_negative(p: _Prober, ev: dict, placement: str | None) -> str | None:
    if p.eps is None or p.form is None or p.c is None or p.batch is None:
        ev["clip_form"] = "not probed: needs eps, form and batch factor"
        return None
    hyper = p.hyper()
    s, eps, c = p.scale(hyper), p.eps, p.c
    h0 = [-1.0 / s] * 3
    obs = p.step(hyper, 1, [0.0] * 3, [100 * c, -100 * c, 0.01 * c], h0, [0.0] * 3)
    m, curvature = p.m_used(obs), p.h_used(obs) * s
    sign = (m / curvature.clamp(min=eps)).clamp(-c, c)
    d = curvature + eps
    preds = {("max", "clip"): sign, ("add", "clip"): (m / d).clamp(-c, c),
             ("add", "sign_min"): torch.sign(m) * (m.abs() / d).clamp(max=c)}
    text = (f"h < 0 (scaled curvature {_fmt(curvature)}), m = {_fmt(m)}: u = {_fmt(obs.u)} (bound {c:g})")
    found = [key for key, pred in preds.items() if _all_close(obs.u, pred)]
    if not found:
        ev["clip_form"] = text + ": matches no reading"
        return None
    where, form = found[0]
    if where == "max":
        text += ": a descent sign step, bounded by the clip (eps inside max keeps the denominator positive)"
    elif form == "clip":
        text += ": an ascent step, but bounded by the clip: clip(m / (s h + eps), c)"
    else:
        text += f": an ascent step of size up to {float(obs.u.abs().max()):.6g} (unbounded): sign(m) min(|m| / d, c)"
    if placement is not None and placement != where:
        text += f" (this reads eps as {where!r}, the placement probe as {placement!r})"
    if where == "max":
        text += "; with eps inside max, clip and sign_min agree everywhere: clip_form is moot, reported as 'clip'"
    ev["clip_form"] = text
    return form


def _probe_weight_decay(p: _Prober, ev: dict) -> str | None:
    lr, wd = LR, WD
    hyper = p.hyper(weight_decay=wd)
    theta0 = [2.0, -3.0, 1.0, 1.0]
    obs = p.step(hyper, 1, theta0, [0.0, 0.0, 100.0, -100.0], [1.0, 1.0, 0.0, 0.0], [0.0] * 4)
    delta = obs.theta1 - obs.theta0
    text = (f"lr=1/8, wd=1/2, theta {_fmt(obs.theta0)}, m0 (0, 0, 100, -100), g=0: theta moves by {_fmt(delta)}")
    if bool((obs.m1[:2] != 0).any()):
        ev["weight_decay"] = (f"{text}; m after the step {_fmt(obs.m1)} though m0 = g = 0: wd theta is added to the "
                              "gradient (coupled L2)")
        return "coupled"
    ratio = delta[:2] / obs.theta0[:2]
    text += f"; where m = 0 it is {_fmt(ratio)} theta"
    if _all_close(ratio, torch.zeros(2), 0):
        ev["weight_decay"] = text + ": weight decay is ignored"
        return "none"
    if _all_close(ratio, torch.full((2,), -lr * wd)):
        factor, name = lr * wd, "decoupled"
    elif _all_close(ratio, torch.full((2,), -wd)):
        factor, name = wd, "decoupled_unscaled"
    else:
        ev["weight_decay"] = text + ": neither -lr wd nor -wd"
        return None
    if p.c is None:
        ev["weight_decay"] = text + f": decoupled ({name}); before or after the step not probed (no clip bound)"
        return name
    theta, step = obs.theta0[2:], p.c * torch.sign(obs.m1[2:]) * lr
    before = -factor * theta - step
    after = (theta - step) * (1 - factor) - theta
    text += f"; on sign-step coordinates {_fmt(delta[2:])} (before the step: {_fmt(before)}, after: {_fmt(after)})"
    scaled = "lr wd" if name == "decoupled" else "wd (not scaled by lr)"
    if _all_close(delta[2:], before):
        ev["weight_decay"] = text + f": theta -= {scaled} theta on the pre-step theta"
        return name
    if _all_close(delta[2:], after):
        ev["weight_decay"] = text + f": theta *= 1 - {scaled} after the step"
        return name + "_after"
    ev["weight_decay"] = text + ": neither before nor after the step"
    return None


def _cross_check(adapter: Adapter, base: Hyperparameters, knobs: Knobs, eps: float, steps: int,
                 self_estimating: bool, weight_decay: float) -> tuple[float, str]:
    """The reference with these knobs in lock-step with the implementation (teacher-forced), random data."""
    dialect = Dialect("detected", knobs, PAPER.defaults, "?", "the detected knobs")
    hyper = replace(base, lr=LR, beta1=0.9, beta2=0.95, gamma=GAMMA, weight_decay=weight_decay, batch_size=BATCH,
                    eps=base.eps if _close(eps, base.eps, 1e-4) else eps)
    reference = ConventionAdapter(_sophia_ref(), "reference", extra={"dialect": dialect})
    gen = torch.Generator().manual_seed(0)
    shape = (12,)
    theta = torch.randn(shape, dtype=F64, generator=gen)
    reference.build([theta.clone()], hyper, F64, "cpu")
    adapter.build([theta.clone()], hyper, F64, "cpu")
    k, worst = hyper.hessian_interval, 0.0
    b = hyper.batch_size if knobs.batch_factor == "estimate" else 1.0
    for t in range(1, steps + 1):
        g = torch.randn(shape, dtype=F64, generator=gen)
        ghat = 0.3 * torch.randn(shape, dtype=F64, generator=gen)
        on = (t - 1) % k == 0 and not self_estimating and (knobs.refresh != "caller" or t > 1)
        refresh = Refresh(hhat=[b * ghat * ghat], ghat=[ghat], batch=hyper.batch_size) if on else None
        before = reference.parameters()
        n, m, h = reference.state()
        adapter.load(before, n, m, h)
        internal = adapter.internal_estimate([g.clone()], refresh)
        adapter.step([g.clone()], refresh)
        reference.step([g.clone()], Refresh(hhat=internal) if internal is not None else refresh)
        got, want = adapter.parameters()[0], reference.parameters()[0]
        scale = torch.maximum(before[0].abs(), torch.tensor(hyper.lr, dtype=F64))
        worst = max(worst, float(((got - want).abs() / scale).max()))
    return worst, (f"SophiaRef with the detected knobs and eps={hyper.eps:g}, lock-step with the implementation "
                   f"(teacher-forced, {steps} steps, b1=0.9, b2=0.95, wd={weight_decay:g}, B={BATCH:g}, random data): worst step "
                   f"deviation {worst:.3g} of max(|theta|, lr)")


def _sophia_ref():
    from sophia_ref import SophiaRef

    return SophiaRef


def _canonical(knobs: Knobs) -> Knobs:
    """clip_form is moot where eps sits inside max (the denominator is never negative)."""
    return replace(knobs, clip_form="clip") if knobs.eps_placement == "max" else knobs


def _guard(ev: dict, key: str, probe: Callable, *args):
    try:
        return probe(*args)
    except Exception as e:  # the implementation failed a probe: the knob stays undetermined
        ev[key] = (ev.get(key, "") + "; " if key in ev else "") + f"probe failed: {_error(e)}"
        return None


def detect(adapter: Adapter, hyper: Hyperparameters | None = None) -> Detection:
    """Infer ``adapter``'s dialect from its behaviour (see the module docstring for the probes).

    ``hyper``: base hyperparameters the adapter accepts; only its ``eps`` and
    ``hessian_interval`` are used (choose ``hessian_interval >= 2`` where the
    implementation allows it: with k = 1 a schedule and the caller's refreshes look
    alike unless a step without an estimate tells them apart). The probes set lr,
    betas, gamma, weight decay and batch size themselves. None: negotiate eps and the
    interval with the adapter.
    """
    start = time.perf_counter()
    ev: dict[str, str] = {}
    notes: list[str] = []
    base = _negotiate(adapter, hyper, ev)
    p = _Prober(adapter, base)

    internal = False
    try:
        p.build(p.hyper(), _t([0.0]))
        internal = adapter.internal_estimate([_t([1.0])], None) is not None
    except Exception as e:
        ev["internal_estimator"] = f"could not ask: {_error(e)}"
    _guard(ev, "refresh", _probe_schedule, p, ev, notes)
    _guard(ev, "refresh", _probe_timing, p, ev)
    refresh = None
    if p.schedule == "scheduled" and p.timing is not None:
        refresh = "immediate" if p.timing == "same" else "next_step"
    elif p.schedule == "caller" and p.timing == "same":
        refresh = "caller"
    elif p.schedule == "caller" and p.timing == "next":
        notes.append("refresh: the caller's schedule, but the new h is used from the next step: not a rule knob")
    if internal or p.self_estimating:
        ev["internal_estimator"] = ("internal_estimate() returns an estimate" if internal else
                                    "internal_estimate() returns None") + (
            "; h changes on every step with no estimate offered" if p.self_estimating else "")
    else:
        ev.setdefault("internal_estimator", "internal_estimate() returns None; h never changes without an estimate")

    momentum = _guard(ev, "momentum_updates", _probe_momentum, p, ev)
    _guard(ev, "bias_correction", _probe_bias, p, ev)
    _guard(ev, "form", _probe_form_batch, p, ev)
    eps_fixed = _guard(ev, "eps", _probe_eps, p, ev)
    placement = _guard(ev, "eps_placement", _probe_placement, p, ev)
    clip_form = _guard(ev, "clip_form", _probe_negative, p, ev, placement)
    weight_decay = _guard(ev, "weight_decay", _probe_weight_decay, p, ev)
    moot = ("clip_form",) if placement == "max" else ()
    if placement == "max" and clip_form is not None:
        clip_form = "clip"

    found = Detection(p.form, placement, clip_form, p.bias, refresh, p.batch, momentum, p.eps, eps_fixed,
                      weight_decay, internal or p.self_estimating, None, (), ev, moot, tuple(notes), base, None,
                      p.count, 0.0)
    matches: list[str] = []
    knobs = found.knobs
    if knobs is not None and weight_decay == "decoupled" and p.eps is not None:
        for name, d in DIALECTS.items():
            if eps_fixed is None:
                eps_ok = _close(p.eps, base.eps, 1e-4) or _close(p.eps, float(d.defaults["eps"]), 1e-4)
            else:
                eps_ok = _close(p.eps, float(d.defaults["eps"]) if eps_fixed else base.eps, 1e-4)
            if _canonical(d.knobs) == _canonical(knobs) and eps_ok:
                matches.append(name)
    cross = None
    if knobs is not None and weight_decay in ("decoupled", "none") and p.eps is not None:
        try:
            steps = max(2 * base.hessian_interval + 2, 6)
            cross, text = _cross_check(adapter, base, knobs, p.eps, steps, p.self_estimating,
                                       0.1 if weight_decay == "decoupled" else 0.0)
            ev["cross_check"] = text
        except Exception as e:
            ev["cross_check"] = f"failed: {_error(e)}"
    return replace(found, preset=matches[0] if matches else None, matches=tuple(matches), cross_check=cross,
                   probes=p.count, seconds=time.perf_counter() - start)
