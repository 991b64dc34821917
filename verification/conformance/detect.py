"""Dialect detection: which knobs of :mod:`sophia_ref.rule` an implementation follows, from its behaviour alone.

:func:`detect` drives an :class:`~verification.adapters.base.Adapter` through targeted
probes (build on a tiny float64 tensor, :meth:`~Adapter.load` a chosen state, one step
with a chosen gradient and estimate, read parameters and state back) and infers every
field of :class:`~sophia_ref.rule.Knobs`, the eps value, the weight-decay form, the
precision its state is kept in and whether it makes its own estimate. It never reads
source code nor the adapter's declared ``dialect``.

Probe hyperparameters are exact binary fractions chosen so that no two readings of a
knob give the same numbers: ``lr = 1/8``, ``b1 = b2 = 1/2``, ``gamma = 1/4`` (rho in the
rho form), weight decay ``1/2`` and batch size ``8`` where those are probed, 0 and 1
elsewhere. ``eps`` and ``hessian_interval`` come from the ``hyper`` passed in; any value
in the adapter's ``fixed`` replaces the probe's own (the adapter insists on it). With
``hyper=None`` detection tries eps ``1e-12`` and interval 3 first, then the presets'
default eps values and interval 1, until the adapter accepts the build. Each probe, in
order (each later one uses what the earlier ones found; u is the step direction,
``theta_{t+1} = theta_t - lr u`` without decay):

1. refresh schedule: for each step t = 1 .. 2k+1 alone (loaded state at t - 1), with
   and without an estimate offered: does h change, does the step refuse? h that never
   changes, whatever is offered, is ``refresh = "never"``.
2. refresh timing: b1 = b2 = 0 on a refresh step, two runs that differ only in the
   loaded h: the same step (the new h is used at once) or steps 16x apart (the old h).
3. momentum updates: m after one step from loaded m0 = 1, g = 0 is ``b1^n``.
4. bias correction of h: b1 = 0 (m = g, no bias correction of m can show), a run of
   steps from a fresh build with h = 1, 2 loaded at t = 0 and every estimate equal to
   the current h (h stays put): ``w_t = u_t h / m`` is ``(1 - b2^n_t) / s`` with n_t = t
   (``steps``), the refresh count (``refreshes``), or constant (``none``); the refresh
   count differs from t wherever k > 1, the estimates are the caller's, or the refresh
   is ``next_step``. Later probes use b2 = 0 once h is bias-corrected (1 - 0^n = 1).
5. estimate clamp: a refresh with estimates -4, 4, -1/2 into h = 1 (b2 = 1/2): h
   becomes -1.5, 2.5, 0.25 (none), 0.5, 2.5, 0.5 (``zero``) or 2.5, 2.5, 0.75
   (``abs``). Moot where the adapter takes only GNB-shaped estimates (``ghat^2``,
   never negative), where the implementation makes its own, or where h never changes.
6. bias correction of m: the same unclipped step at t = 2 and at t = 2 + 20k; their
   ratio is ``(1 - b1^(2+20k)) / (1 - b1^2) = 4/3`` with bias correction, 1 without.
7. form and batch factor: the clip bound (h = 0, huge m) is lr (gamma form) or lr rho
   (rho form); the unclipped ratio is m / (gamma h) or m / h; with batch size 8 instead
   of 1 the unclipped step is 8x smaller (B at step time) or unchanged.
8. eps: h = 0 and m from 1e-1 down to 1e-30: the largest unclipped step gives
   eps = m / u; a second build with 10x eps says whether eps follows the hyperparameter
   (skipped where the adapter fixes eps: it is fixed).
9. eps placement: scaled curvature equal to eps and to 3 eps: d = eps, 3 eps (max) or
   2 eps, 4 eps (added).
10. clip form: h < 0 with huge m: a descent sign step (eps inside max; clip and
    sign_min agree there), an ascent of size lr c (clip with added eps) or an ascent of
    size lr |m / d| (sign_min with added eps).
11. weight decay: coordinates with m = g = 0 move by -lr wd theta (decoupled, the
    paper), -wd theta (not scaled by lr), or not at all; m = (1 - b1^n) wd theta
    afterwards means L2 folded into the gradient (``coupled``); sign-step coordinates
    tell decay of the pre-step (``before``) from the post-step theta (``after``). The
    forms not scaled by lr, and weight decay ignored, are outside the knobs.
12. state precision: after one step from a fresh build (so the state exists in the
    implementation's own dtype), m and h loaded with float64 values that float32 cannot
    hold, read back, and after one more step read again: values that round-trip only
    as float32 (bfloat16, float16) mean the state is kept in that precision.
13. constructor defaults: where the adapter has ``constructor_defaults()`` (a build
    without eps, gamma, betas, ...), the defaults it reports.

Finally the detected knobs drive :class:`~sophia_ref.SophiaRef` in lock-step with the
implementation (teacher-forced, random data, h loaded nonzero at the start, refreshes on
the detected schedule) as a cross-check; it is ``consistent`` when the worst deviation is
within the tolerance of the state's precision (1e-10 for float64 state). When it is not,
each knob is varied one at a time over its values, and every preset is tried, and the
set with the smallest deviation is the ``best_fit``. The preset is the first of
:data:`~sophia_ref.dialects.DIALECTS` whose knobs give the same behaviour (moot knobs
compared at their reported spelling) and whose eps agrees: the measured eps must equal
the hyperparameter when it follows the hyperparameter, else the preset's default.
``paper_v1`` and ``pytorch_optimizer`` have the same knobs, so behaviour cannot tell
them apart: ``matches`` lists both, ``preset`` names the first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
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

#: the fields of :class:`Knobs`, in order
KNOB_FIELDS = tuple(f.name for f in fields(Knobs))
#: every value each knob takes (the best fit varies the detected knobs over these, one knob at a time)
KNOB_VALUES = {
    "form": ("gamma", "rho"), "eps_placement": ("max", "add"), "clip_form": ("clip", "sign_min"),
    "bias_correction": (False, True), "refresh": ("immediate", "next_step", "caller", "never"),
    "batch_factor": ("estimate", "step"), "momentum_updates": (1, 2, 3),
    "h_bias_correction": ("none", "steps", "refreshes"), "estimate_clamp": ("none", "zero", "abs"),
    "weight_decay_form": ("before", "after", "coupled"),
}
#: weight-decay forms :func:`detect` tells apart ("decoupled" is the paper's and every preset's)
WEIGHT_DECAY_FORMS = ("decoupled", "decoupled_after", "decoupled_unscaled", "decoupled_unscaled_after",
                      "coupled", "coupled_and_decoupled", "none")
#: the readings of :data:`WEIGHT_DECAY_FORMS` that a ``weight_decay_form`` knob expresses; the others are outside
KNOB_WEIGHT_DECAY = {"decoupled": "before", "decoupled_after": "after", "coupled": "coupled"}
#: state precisions the state probe tells apart, narrowest first
STATE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_tolerance(state_dtype: str | None) -> float:
    """The cross-check's bound for ``consistent``: 1e-10 for float64 state; 8 ulps of the state's precision
    otherwise (the reference is float64, so rounding the state alone moves a step by about one ulp)."""
    dtype = STATE_DTYPES.get(state_dtype or "float64")
    return CHECK_REL if dtype is None else max(CHECK_REL, 8 * torch.finfo(dtype).eps)


def _jsonable(value):
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


@dataclass(frozen=True)
class BestFit:
    """The knob set whose lock-step cross-check deviates least from the implementation."""

    knobs: Knobs
    #: worst step deviation of the lock-step cross-check, relative to max(|theta|, lr)
    cross_check: float
    #: how the set was reached: "the detected knobs", "the detected knobs with refresh='never'", "preset official"
    label: str
    #: the knobs where it differs from the detected ones (the undetermined ones at the paper's value)
    changed: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.label}: cross-check {self.cross_check:.3g}"

    def as_dict(self) -> dict:
        return dict(knobs={k: _jsonable(getattr(self.knobs, k)) for k in KNOB_FIELDS},
                    cross_check=self.cross_check, label=self.label,
                    changed={k: _jsonable(v) for k, v in self.changed.items()})


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
    #: True: the implementation's eps does not follow the hyperparameter (refused, ignored or fixed by the
    #: adapter); None: unknown
    eps_fixed: bool | None
    #: the weight-decay reading, one of :data:`WEIGHT_DECAY_FORMS` (finer than the knob ``weight_decay_form``)
    weight_decay: str | None
    internal_estimator: bool
    #: the first matching preset, or None
    preset: str | None
    #: every preset whose behaviour matches (paper_v1 and pytorch_optimizer always come together)
    matches: tuple[str, ...]
    #: per knob (and per finding: eps, state_dtype, constructor_defaults, cross_check, best_fit), what was
    #: measured and how it was read
    evidence: dict[str, str]
    #: knobs that do not change behaviour given the others, reported at their preset spelling
    moot: tuple[str, ...]
    #: findings beyond the knobs (e.g. estimates folded on steps the schedule does not name)
    notes: tuple[str, ...]
    #: the hyperparameters the probes started from (eps and hessian_interval are the ones used)
    hyper: Hyperparameters
    #: the lock-step cross-check of the detected knobs (undetermined ones at the paper's value): worst step
    #: deviation relative to max(|theta|, lr); None where it could not run
    cross_check: float | None
    probes: int
    seconds: float
    h_bias_correction: str | None = None
    estimate_clamp: str | None = None
    #: the knob: "before" | "after" | "coupled"; None where the weight decay is outside the knobs or unknown
    weight_decay_form: str | None = None
    #: the precision m and h are kept in, in a float64 run: "float64", "float32", "bfloat16", "float16"; None: unknown
    state_dtype: str | None = None
    #: the defaults the implementation's constructor has, from the adapter's ``constructor_defaults()``;
    #: None where the adapter has no such hook or it failed
    constructor_defaults: dict | None = None
    #: when not consistent: the knob set that reproduces it best (None when consistent or not run)
    best_fit: BestFit | None = None

    @property
    def readings(self) -> dict:
        """Every :class:`Knobs` field as detected (None where undetermined)."""
        return {k: getattr(self, k) for k in KNOB_FIELDS}

    @property
    def knobs(self) -> Knobs | None:
        """The detected :class:`Knobs`, or None while any knob is undetermined."""
        values = self.readings
        if any(v is None for v in values.values()):
            return None
        return Knobs(**values)

    @property
    def tolerance(self) -> float:
        """The cross-check's bound for ``consistent``, given the state's precision."""
        return check_tolerance(self.state_dtype)

    @property
    def consistent(self) -> bool:
        """Whether the reference with the detected knobs reproduced the implementation step for step (within
        the rounding of its state's precision)."""
        return self.knobs is not None and self.cross_check is not None and self.cross_check <= self.tolerance

    def departures(self) -> list[dict]:
        """Each way the implementation departs from the paper, as ``{knob, value, paper, severity, evidence}``.

        ``knob`` is a :class:`Knobs` field for every knob that differs from ``Knobs()`` (severity
        "semantic"; ``value`` None where no value of the knob reads what the probe measured); ``eps`` where the measured eps is not the hyperparameter given (or, when it
        is fixed, not the paper's 1e-12), ``weight_decay`` where the weight decay is outside the knobs
        (both "semantic"); ``state_dtype`` where m and h are kept below float64 ("precision").
        """
        paper = Knobs()
        out = []
        for k in KNOB_FIELDS:
            v = getattr(self, k)
            if v is None and k == "weight_decay_form" and self.weight_decay is not None:
                continue  # outside the knobs: listed as weight_decay below
            if v != getattr(paper, k):
                out.append(dict(knob=k, value=_jsonable(v), paper=_jsonable(getattr(paper, k)), severity="semantic",
                                evidence=self.evidence.get(k, "")))
        if self.eps is not None:
            wanted = float(PAPER.defaults["eps"]) if self.eps_fixed else self.hyper.eps
            if not _close(self.eps, wanted, 1e-4):
                out.append(dict(knob="eps", value=self.eps, paper=wanted, severity="semantic",
                                evidence=self.evidence.get("eps", "")))
        if self.weight_decay is not None and self.weight_decay not in KNOB_WEIGHT_DECAY:
            out.append(dict(knob="weight_decay", value=self.weight_decay, paper="decoupled", severity="semantic",
                            evidence=self.evidence.get("weight_decay", "")))
        if self.state_dtype is not None and self.state_dtype != "float64":
            out.append(dict(knob="state_dtype", value=self.state_dtype, paper="float64", severity="precision",
                            evidence=self.evidence.get("state_dtype", "")))
        return out

    def describe(self) -> str:
        eps = "?" if self.eps is None else f"{self.eps:g}"
        fixed = {True: " (fixed)", False: " (follows the hyperparameter)", None: ""}[self.eps_fixed]
        figure = "n/a" if self.cross_check is None else f"{self.cross_check:.3g}"
        lines = [f"preset: {self.preset} (matches: {', '.join(self.matches) or 'none'})",
                 f"knobs: {self.knobs if self.knobs is not None else self.readings}",
                 f"eps: {eps}{fixed}; weight decay: {self.weight_decay}; internal estimator: {self.internal_estimator}",
                 f"state precision: {self.state_dtype or '?'}; constructor defaults: "
                 f"{'not available' if self.constructor_defaults is None else self.constructor_defaults}",
                 f"cross-check: {figure} ({'consistent' if self.consistent else 'NOT consistent'} at <= "
                 f"{self.tolerance:.3g}); {self.probes} probes, {self.seconds:.2f} s"]
        if self.best_fit is not None:
            lines.append(f"best fit: {self.best_fit}")
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


def _knobs(values: dict) -> Knobs | None:
    """Knobs from these values, or None where Knobs refuses them."""
    try:
        return Knobs(**{k: v for k, v in values.items() if k in KNOB_FIELDS})
    except (TypeError, ValueError):
        return None


def _canonical(knobs: Knobs) -> Knobs:
    """clip_form is moot where eps sits inside max (the denominator is never negative)."""
    return replace(knobs, clip_form="clip") if knobs.eps_placement == "max" else knobs


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


_HYPER_FIELDS = tuple(f.name for f in fields(Hyperparameters))


def _fixed(adapter: Adapter) -> dict:
    """The hyperparameters the adapter insists on (its ``fixed``), restricted to :class:`Hyperparameters` fields."""
    return {k: v for k, v in dict(getattr(adapter, "fixed", None) or {}).items() if k in _HYPER_FIELDS}


class _Prober:
    def __init__(self, adapter: Adapter, base: Hyperparameters):
        self.adapter, self.base, self.k = adapter, base, base.hessian_interval
        self.fixed = _fixed(adapter)
        self.count = 0
        self.schedule: str | None = None   # "scheduled" | "caller" | "never"
        self.self_estimating = False        # folds its own estimate on every step
        self.timing: str | None = None      # "same" | "next"
        self.hbias: str | None = None       # "none" | "steps" | "refreshes"
        self.neutral_b2 = False             # probes after the h-bias probe run with b2 = 0
        self.clamp: str | None = None
        self.bias: bool | None = None
        self.form: str | None = None
        self.batch: str | None = None
        self.c: float | None = None
        self.eps: float | None = None
        self.wd_moot: str | None = None     # why the weight-decay form cannot show, where it cannot

    def hyper(self, **changes) -> Hyperparameters:
        values = dict(lr=LR, beta1=B1, beta2=0.0 if self.neutral_b2 else B2, gamma=GAMMA, weight_decay=0.0,
                      batch_size=1.0)
        values.update(changes)
        values.update(self.fixed)  # the adapter insists on these
        return replace(self.base, **values)

    def build(self, hyper: Hyperparameters, theta: Tensor) -> None:
        self.count += 1
        self.adapter.build([theta.clone()], hyper, F64, "cpu")

    def refreshes_on(self, t: int) -> bool:
        """Whether step t refreshes on the implementation's own schedule (needs an estimate there)."""
        return self.schedule == "scheduled" and (t - 1) % self.k == 0

    def needs_estimate(self, t: int) -> bool:
        return self.refreshes_on(t) and not self.self_estimating

    def keep(self, h0: Tensor) -> Refresh | None:
        """An estimate that leaves h as loaded (hhat = h), for a step that must be given one."""
        if bool((h0 >= 0).all()):
            return Refresh(hhat=[h0.clone()], ghat=[h0.sqrt()], batch=1.0)
        if self.adapter.accepts_any_estimate:
            if self.clamp in ("zero", "abs"):  # a clamped negative estimate cannot keep h < 0: fold 0 there
                return Refresh(hhat=[h0.clamp(min=0.0)], ghat=None, batch=1.0)
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
        h = obs.h0 if self.timing == "next" else obs.h1
        b2 = obs.hyper.beta2
        if self.hbias in ("steps", "refreshes") and b2 > 0:
            # b2 = 0 makes the correction 1; where b2 > 0 (an implementation that folds its own estimate on
            # every step) the refresh count equals the step count
            h = h / (1 - b2 ** (obs.t0 + 1))
        return h

    def scale(self, hyper: Hyperparameters) -> float:
        s = hyper.gamma if self.form == "gamma" else 1.0
        return s * hyper.batch_size if self.batch == "step" else s


def _negotiate(adapter: Adapter, hyper: Hyperparameters | None, evidence: dict) -> Hyperparameters:
    """The base hyperparameters: the caller's, or the first eps / interval the adapter accepts; values in the
    adapter's ``fixed`` replace the probe's own."""
    probe = dict(lr=LR, beta1=B1, beta2=B2, gamma=GAMMA, weight_decay=0.0, batch_size=1.0)
    fixed = _fixed(adapter)
    if fixed:
        evidence["hyperparameters"] = ("the adapter fixes " + ", ".join(f"{k}={v:g}" for k, v in fixed.items())
                                       + ": every probe uses these values")
    if hyper is not None:
        return replace(hyper, **{**probe, **fixed})
    eps_values = [DEFAULT_EPS] + sorted({float(d.defaults["eps"]) for d in DIALECTS.values()} - {DEFAULT_EPS})
    if "eps" in fixed:
        eps_values = [float(fixed["eps"])]
    intervals = [int(fixed["hessian_interval"])] if "hessian_interval" in fixed else [DEFAULT_INTERVAL, 1]
    refused = []
    for k in intervals:
        for eps in eps_values:
            base = Hyperparameters(**{**dict(eps=eps, hessian_interval=k, **probe), **fixed})
            try:
                adapter.build([_t([0.0])], base, F64, "cpu")
            except Exception as e:  # the adapter refuses these settings: try the next
                refused.append(f"eps={eps:g}, k={k}: {_error(e)}")
                continue
            if refused:
                evidence["hyperparameters"] = (evidence.get("hyperparameters", "") + "; " if fixed else "") + (
                    f"the adapter refused {'; '.join(refused)}; probing with eps={eps:g}, k={k}")
            return base
    reasons = {r.split(": ", 1)[1] for r in refused}
    if len(reasons) == 1:  # one cause whatever the setting (e.g. it refuses float64 parameters): say it once
        raise ValueError(f"the adapter accepted none of the {len(refused)} probe settings (float64 parameters, "
                         f"eps in {sorted(set(eps_values))}, k in {sorted(set(intervals))}): {reasons.pop()}")
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
    elif not (folds_offered | folds_alone | needs | refuses_offer):
        p.schedule = "never"
        text += (": the refresh never fires: h stays as loaded whatever estimate is offered, so from h = 0 "
                 "every step is a sign step")
    else:
        text += ": no schedule the rule knows"
    ev["refresh"] = text


def _probe_timing(p: _Prober, ev: dict) -> None:
    """b1 = b2 = 0 on a refresh step: h_t = hhat whatever was loaded; the step shows which h it used."""
    if p.schedule in (None, "never"):
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
    b1 = obs.hyper.beta1
    text = f"b1={b1:g}, (m0, g) = (1, 0), (0, 1), (1, 1): m after one step {_fmt(obs.m1)}"
    a = float(obs.m1[0])
    n = round(math.log(a) / math.log(b1)) if 0 < a < 1 and 0 < b1 < 1 else 0
    if n >= 1 and _close(a, b1 ** n) and _close(float(obs.m1[1]), 1 - b1 ** n) and _close(float(obs.m1[2]), 1.0):
        ev["momentum_updates"] = f"{text} = b1^{n} m0 + (1 - b1^{n}) g: {n} update(s) per step"
        return n
    ev["momentum_updates"] = f"{text}: not b1^n m0 + (1 - b1^n) g for any n"
    return None


def _probe_h_bias(p: _Prober, ev: dict) -> bool:
    """b1 = 0 and every estimate equal to the current h: the steps of a run from h = 1, 2 show which n the
    step divides ``h / (1 - b2^n)`` by. Returns whether the reading is moot (two readings coincide here)."""
    key = "h_bias_correction"
    if p.schedule is None:
        ev[key] = "not probed: the refresh schedule is unknown"
        return False
    hyper = p.hyper(beta1=0.0, beta2=B2)
    b2, lr, k = hyper.beta2, hyper.lr, p.k
    if not 0 < b2 < 1:
        p.hbias = "none"
        ev[key] = f"b2 is fixed at {b2:g}: 1 - b2^n does not depend on n, so a bias correction of h cannot show"
        return True
    if p.self_estimating:
        last, refreshed, how = min(2 * k + 2, 6), (lambda t: True), "it folds its own estimate on every step"
    elif p.schedule == "scheduled":
        last, refreshed, how = (2 * k + 2 if k > 1 else 4), (lambda t: (t - 1) % k == 0), f"refreshes on (t - 1) mod {k} == 0"
    elif p.schedule == "caller":
        last, refreshed, how = 5, (lambda t: t in (2, 4)), "estimates handed in on steps 2 and 4"
    else:
        last, refreshed, how = 4, (lambda t: False), "the refresh never fires"
    offer = not p.self_estimating and p.schedule != "never"
    theta, h = _t([0.0, 0.0]), _t([1.0, 2.0])
    g = _t([1e-4, -2e-4])
    p.build(hyper, theta)
    p.adapter.load([theta.clone()], 0, [torch.zeros(2, dtype=F64)], [h.clone()])
    w = []
    for t in range(1, last + 1):
        p.adapter.step([g.clone()], p.keep(h) if offer and refreshed(t) else None)
        theta1 = p.adapter.parameters()[0]
        _, ms, hs = p.adapter.state()
        u = (theta - theta1) / lr
        used = h if p.timing == "next" else hs[0]
        w.append(u * used / ms[0])
        theta, h = theta1, hs[0]
    w = torch.stack(w)
    counts, n = [], 0
    for t in range(1, last + 1):
        before = n
        n += refreshed(t)
        counts.append(before if p.timing == "next" else n)
    readings = {"none": [0] * last, "steps": list(range(1, last + 1)), "refreshes": counts}
    fits = []
    for name, ns in readings.items():
        factor = _t([1 - b2 ** n if n > 0 else 1.0 for n in ns]).unsqueeze(1)
        ratio = w / factor
        if _all_close(ratio, torch.full_like(ratio, float(ratio[0, 0]))):
            fits.append(name)
    text = (f"b1=0 (m = g, so a bias correction of m cannot show), b2={b2:g}, h = 1, 2 loaded at t=0, steps "
            f"1..{last} in a row ({how}), every estimate equal to the current h: u h / m = {_fmt(w[:, 0])}; "
            f"the refresh count n = {counts}")
    meaning = {"none": "constant: h is not bias-corrected",
               "steps": "proportional to 1 - b2^t: the step divides by h / (1 - b2^t) (bias-corrected by steps)",
               "refreshes": "proportional to 1 - b2^n with n the refresh count: the step divides by h / (1 - b2^n) "
                            "(bias-corrected by refreshes)"}
    if not fits:
        ev[key] = f"{text}: neither constant, nor proportional to 1 - b2^t, nor to 1 - b2^n"
        p.neutral_b2 = not p.self_estimating
        return False
    p.hbias = fits[0]
    p.neutral_b2 = p.hbias != "none" and not p.self_estimating
    text += f": {meaning[p.hbias]}"
    if len(fits) > 1:
        text += (f"; here {' and '.join(map(repr, fits))} read the same (the refresh count "
                 + ("stays 0" if p.schedule == "never" else "equals t") + "): moot, reported as " + repr(p.hbias))
    ev[key] = text
    return len(fits) > 1


def _probe_clamp(p: _Prober, ev: dict, notes: list) -> bool:
    """A refresh with estimates -4, 4, -1/2 into h = 1 (b2 = 1/2): what h becomes. Returns whether it is moot."""
    key = "estimate_clamp"
    if p.schedule is None:
        ev[key] = "not probed: the refresh schedule is unknown"
        return False
    moot = None
    if p.schedule == "never":
        moot = "the refresh never fires: no estimate reaches h"
    elif p.self_estimating:
        moot = "it folds an estimate of its own (from the gradient): no estimate handed in reaches h"
    elif not p.adapter.accepts_any_estimate:
        moot = ("the adapter takes only GNB-shaped estimates (B ghat^2, never negative): a clamp of negative "
                "estimates cannot show")
    if moot is not None:
        p.clamp = "none"
        ev[key] = f"moot: {moot}; reported as 'none'"
        return True
    hyper = p.hyper(beta2=B2)
    b2 = hyper.beta2
    t0 = p.k if p.schedule == "scheduled" else 1  # step k + 1 refreshes on the schedule; the caller's: any step
    hhat = _t([-4.0, 4.0, -0.5])
    try:
        obs = p.step(hyper, t0, [0.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3,
                     refresh=Refresh(hhat=[hhat.clone()], ghat=None, batch=1.0))
    except Exception as e:
        p.clamp = "none"
        ev[key] = f"moot: step {t0 + 1} refused the negative estimates {_fmt(hhat)} ({_error(e)}); reported as 'none'"
        notes.append(f"estimate_clamp: it refuses negative estimates ({_error(e)})")
        return True
    preds = {"none": hhat, "zero": hhat.clamp(min=0.0), "abs": hhat.abs()}
    preds = {name: b2 * 1.0 + (1 - b2) * v for name, v in preds.items()}
    text = (f"step {t0 + 1} (a refresh), h = 1 loaded, b2={b2:g}, estimates {_fmt(hhat)}: h after {_fmt(obs.h1)}; "
            f"folded as given {_fmt(preds['none'])}, max(hhat, 0) {_fmt(preds['zero'])}, |hhat| {_fmt(preds['abs'])}")
    meaning = {"none": "the estimate is folded as given (negative values included)",
               "zero": "negative estimates are clamped at zero before the average",
               "abs": "the absolute value of the estimate is folded"}
    for name, pred in preds.items():
        if _all_close(obs.h1, pred):
            p.clamp = name
            ev[key] = f"{text}: {meaning[name]}"
            return False
    ev[key] = f"{text}: matches none"
    return False


def _probe_bias(p: _Prober, ev: dict) -> None:
    hyper = p.hyper()
    b1 = hyper.beta1
    ta, tb = 1, 1 + 20 * p.k
    args = ([0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [1e-3, -2e-3])
    a, b = (p.step(hyper, t0, *args) for t0 in (ta, tb))
    wa = a.u * p.h_used(a) / a.m1
    wb = b.u * p.h_used(b) / b.m1
    ratios = wa / wb
    expect = (1 - b1 ** (tb + 1)) / (1 - b1 ** (ta + 1))
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
    gamma, batch = one.hyper.gamma, eight.hyper.batch_size / one.hyper.batch_size
    c_pos, c_neg = float(one.u[0]), -float(one.u[1])
    q1 = (one.u * p.h_used(one) / p.m_used(one))[2:]
    q8 = (eight.u * p.h_used(eight) / p.m_used(eight))[2:]
    text = (f"rho/gamma parameter {gamma:g}, B=1: sign steps (h=0, m=+-100) u = {c_pos:.6g}, {-c_neg:.6g}; "
            f"unclipped (h={_fmt(one.h0[2:])}) u * h / m = {_fmt(q1)}")
    c = c_pos if _close(c_pos, c_neg) and c_pos > 0 else None
    form = None
    if c is not None and _close(c, 1.0) and _all_close(q1, torch.full_like(q1, 1 / gamma)):
        form, p.c = "gamma", 1.0
        text += ": clip bound 1 and ratio m / (gamma h): gamma form"
    elif c is not None and _close(c, gamma) and _all_close(q1, torch.full_like(q1, 1.0)):
        form, p.c = "rho", gamma
        text += ": clip bound rho and ratio m / h: rho form"
    else:
        text += ": neither the gamma form (bound 1, m / (gamma h)) nor the rho form (bound rho, m / h)"
        p.c = c
    p.form = form
    ev["form"] = text
    ratio = q1 / q8
    text = (f"the same unclipped steps with batch_size {eight.hyper.batch_size:g} instead of "
            f"{one.hyper.batch_size:g}: u(B=1) / u(B=8) = {_fmt(ratio)}")
    if batch == 1.0:
        ev["batch_factor"] = f"{text}: the adapter fixes batch_size, so the batch factor cannot show"
    elif _all_close(ratio, torch.full_like(ratio, 1.0)):
        p.batch = "estimate"
        ev["batch_factor"] = f"{text}: batch_size does not enter the step (B belongs in the estimate)"
    elif _all_close(ratio, torch.full_like(ratio, batch)):
        p.batch = "step"
        ev["batch_factor"] = f"{text}: h is multiplied by batch_size at step time"
    else:
        ev["batch_factor"] = f"{text}: neither 1 nor {batch:g}"


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
        return True if "eps" in p.fixed else None
    if "eps" in p.fixed:
        ev["eps"] = (f"{text}; the adapter fixes eps at {float(p.fixed['eps']):g} (its `fixed`), so no other eps "
                     "was tried: eps is fixed")
        return True
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


def _probe_weight_decay(p: _Prober, ev: dict, momentum: int | None) -> str | None:
    hyper = p.hyper(weight_decay=WD)
    lr, wd, b1 = hyper.lr, hyper.weight_decay, hyper.beta1
    theta0 = [2.0, -3.0, 1.0, 1.0]
    if wd == 0.0:
        p.wd_moot = "the adapter fixes weight_decay at 0: the form cannot show"
        ev["weight_decay"] = p.wd_moot
        return None
    try:
        p.build(hyper, _t(theta0))
    except Exception as e:
        p.wd_moot = f"the adapter refused weight_decay={wd:g} ({_error(e)}): the form cannot show"
        ev["weight_decay"] = p.wd_moot
        return None
    obs = p.step(hyper, 1, theta0, [0.0, 0.0, 100.0, -100.0], [1.0, 1.0, 0.0, 0.0], [0.0] * 4)
    delta = obs.theta1 - obs.theta0
    text = (f"lr={lr:g}, wd={wd:g}, theta {_fmt(obs.theta0)}, m0 (0, 0, 100, -100), g=0: theta moves by {_fmt(delta)}")
    theta, sign = obs.theta0[2:], torch.sign(obs.m1[2:])
    if bool((obs.m1[:2] != 0).any()):
        n = momentum or 1
        expect = (1 - b1 ** n) * wd * obs.theta0[:2]
        text += f"; m after the step {_fmt(obs.m1)} though m0 = g = 0"
        if not _all_close(obs.m1[:2], expect):
            ev["weight_decay"] = f"{text}: something enters m, but not (1 - b1^{n}) wd theta = {_fmt(expect)}"
            return None
        text += f" = (1 - b1^{n}) wd theta: wd theta is added to the gradient (coupled L2)"
        if p.c is None:
            ev["weight_decay"] = text + "; a decoupled term besides not probed (no clip bound)"
            return "coupled"
        step = p.c * sign * lr
        pure, both = -step, -lr * wd * theta - step
        text += (f"; on sign-step coordinates {_fmt(delta[2:])} (coupled alone: {_fmt(pure)}, "
                 f"with a decoupled -lr wd theta as well: {_fmt(both)})")
        if _all_close(delta[2:], pure):
            ev["weight_decay"] = text + ": no decoupled term"
            return "coupled"
        if _all_close(delta[2:], both):
            ev["weight_decay"] = text + ": coupled and decoupled both (outside the knobs)"
            return "coupled_and_decoupled"
        ev["weight_decay"] = text + ": neither"
        return None
    ratio = delta[:2] / obs.theta0[:2]
    text += f"; where m = 0 it is {_fmt(ratio)} theta"
    if _all_close(ratio, torch.zeros(2), 0):
        ev["weight_decay"] = text + ": weight decay is ignored (outside the knobs)"
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
    step = p.c * sign * lr
    before = -factor * theta - step
    after = (theta - step) * (1 - factor) - theta
    text += f"; on sign-step coordinates {_fmt(delta[2:])} (before the step: {_fmt(before)}, after: {_fmt(after)})"
    scaled = "lr wd" if name == "decoupled" else "wd (not scaled by lr: outside the knobs)"
    if _all_close(delta[2:], before):
        ev["weight_decay"] = text + f": theta -= {scaled} theta on the pre-step theta"
        return name
    if _all_close(delta[2:], after):
        ev["weight_decay"] = text + f": theta *= 1 - {scaled} after the step"
        return name + "_after"
    ev["weight_decay"] = text + ": neither before nor after the step"
    return None


def _precision(x: Tensor) -> str:
    """The narrowest dtype that holds every value of x exactly."""
    for name, dtype in STATE_DTYPES.items():
        if bool(torch.isfinite(x).all()) and torch.equal(x.to(dtype).to(F64), x):
            return name
    return "float64"


_WIDTH = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}


def _probe_state(p: _Prober, ev: dict) -> str | None:
    """m and h with values float32 cannot hold, loaded after a first step and read back, then one more step."""
    hyper = p.hyper()
    theta = _t([0.0, 0.0, 0.0])
    p.build(hyper, theta)
    first = Refresh(hhat=[_t([0.25] * 3)], ghat=[_t([0.5] * 3)], batch=1.0) if p.needs_estimate(1) else None
    p.adapter.step([_t([0.5, -0.25, 0.125])], first)  # the state now exists in the implementation's own dtype
    m0, h0 = _t([1 / 3, -2 / 7, 1 / 5]), _t([2 / 3, 3 / 7, 1 / 9])
    p.adapter.load([_t([1 / 3, 1 / 7, -1 / 9])], 1, [m0.clone()], [h0.clone()])
    _, ms, hs = p.adapter.state()
    m_back, h_back = ms[0], hs[0]
    p.adapter.step([_t([1 / 7, -1 / 11, 1 / 13])], p.keep(h0) if p.needs_estimate(2) else None)
    _, ms, hs = p.adapter.state()
    theta1 = p.adapter.parameters()[0]
    kinds = {"m": min(_precision(m_back), _precision(ms[0]), key=_WIDTH.get),
             "h": min(_precision(h_back), _precision(hs[0]), key=_WIDTH.get)}
    narrowest = min(kinds.values(), key=_WIDTH.get)
    text = (f"after one step from a fresh float64 build, m = (1/3, -2/7, 1/5) and h = (2/3, 3/7, 1/9) loaded "
            f"(not float32 values) read back as m {_fmt(m_back)}, h {_fmt(h_back)}, and after one more step "
            f"m {_fmt(ms[0])}, h {_fmt(hs[0])}: m is kept in {kinds['m']}, h in {kinds['h']}")
    text += f" (parameters: {_precision(theta1)})"
    ev["state_dtype"] = text + (": state precision: " + narrowest if narrowest != "float64" else "")
    return narrowest


def _preset_keys(defaults: dict) -> dict:
    """Constructor defaults in the vocabulary of :attr:`Dialect.defaults` (betas, gamma, eps, ...)."""
    out = dict(defaults)
    if "beta1" in out and "beta2" in out:
        out["betas"] = (out.pop("beta1"), out.pop("beta2"))
    if "rho" in out and "gamma" not in out:
        out["gamma"] = out.pop("rho")
    if "bs" in out and "batch_size" not in out:
        out["batch_size"] = out.pop("bs")
    return out


def _same_value(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return _close(float(a), float(b), 1e-9) or a == b
    return a == b


def _probe_defaults(adapter: Adapter, ev: dict) -> dict | None:
    """The adapter's ``constructor_defaults()`` (a build without eps, gamma, betas, ...), where it has one."""
    hook = getattr(adapter, "constructor_defaults", None)
    if not callable(hook):
        ev["constructor_defaults"] = "not available: the adapter has no constructor_defaults()"
        return None
    try:
        found = hook()
    except Exception as e:
        ev["constructor_defaults"] = f"not available: constructor_defaults() failed ({_error(e)})"
        return None
    if found is None:
        ev["constructor_defaults"] = "not available: the adapter cannot build it without eps, gamma and betas"
        return None
    found = dict(found)
    keys = _preset_keys(found)
    same = [name for name, d in DIALECTS.items()
            if any(k in d.defaults for k in keys)
            and all(_same_value(v, d.defaults[k]) for k, v in keys.items() if k in d.defaults)]
    text = ("built without the hyperparameters it has defaults for, its constructor's defaults are "
            + ", ".join(f"{k}={v!r}" for k, v in found.items()))
    text += (f": those of preset {', '.join(same)}" if same else ": no preset has these defaults")
    ev["constructor_defaults"] = text
    return found


def _lockstep(adapter: Adapter, hyper: Hyperparameters, knobs: Knobs, eps: float, steps: int,
              offers: Callable[[int], bool]) -> float:
    """The reference with these knobs in lock-step with the implementation (teacher-forced), random data, from
    a nonzero h; the worst step deviation relative to max(|theta|, lr)."""
    dialect = Dialect("detected", knobs, PAPER.defaults, "?", "the detected knobs")
    reference = ConventionAdapter(_sophia_ref(), "reference", extra={"dialect": dialect})
    gen = torch.Generator().manual_seed(0)
    shape = (12,)
    theta = torch.randn(shape, dtype=F64, generator=gen)
    b = hyper.batch_size if knobs.batch_factor == "estimate" else 1.0
    h0 = b * (0.3 * torch.randn(shape, dtype=F64, generator=gen)) ** 2
    reference.build([theta.clone()], replace(hyper, eps=eps), F64, "cpu")
    reference.load([theta.clone()], 0, [torch.zeros(shape, dtype=F64)], [h0])
    adapter.build([theta.clone()], hyper, F64, "cpu")
    worst = 0.0
    for t in range(1, steps + 1):
        g = torch.randn(shape, dtype=F64, generator=gen)
        ghat = 0.3 * torch.randn(shape, dtype=F64, generator=gen)
        refresh = Refresh(hhat=[b * ghat * ghat], ghat=[ghat], batch=hyper.batch_size) if offers(t) else None
        before = reference.parameters()
        n, m, h = reference.state()
        adapter.load(before, n, m, h)
        internal = adapter.internal_estimate([g.clone()], refresh)
        adapter.step([g.clone()], refresh)
        reference.step([g.clone()], Refresh(hhat=internal) if internal is not None else refresh)
        got, want = adapter.parameters()[0], reference.parameters()[0]
        scale = torch.maximum(before[0].abs(), torch.tensor(hyper.lr, dtype=F64))
        worst = max(worst, float(((got - want).abs() / scale).max()))
    return worst


def _sophia_ref():
    from sophia_ref import SophiaRef

    return SophiaRef


def _best_fit(run: Callable[[Knobs], float], readings: dict, figure: float | None) -> BestFit | None:
    """Among the detected knobs (undetermined ones at the paper's value), those with one knob changed to each
    of its other values, and every preset: the set whose lock-step deviation is smallest."""
    paper = Knobs()
    filled = {k: getattr(paper, k) if readings[k] is None else readings[k] for k in KNOB_FIELDS}
    unknown = {k: filled[k] for k in KNOB_FIELDS if readings[k] is None}
    label = "the detected knobs" + (f" (undetermined at the paper's value: {unknown})" if unknown else "")
    candidates = [(label, _knobs(filled), dict(unknown))]
    for k in KNOB_FIELDS:
        for v in KNOB_VALUES.get(k, ()):
            if v != filled[k]:
                candidates.append((f"the detected knobs with {k}={v!r}", _knobs({**filled, k: v}), {**unknown, k: v}))
    for name, d in DIALECTS.items():
        candidates.append((f"preset {name}", d.knobs,
                           {k: getattr(d.knobs, k) for k in KNOB_FIELDS if getattr(d.knobs, k) != filled[k]}))
    best, seen = None, set()
    for i, (label, knobs, changed) in enumerate(candidates):
        if knobs is None or _canonical(knobs) in seen:
            continue
        seen.add(_canonical(knobs))
        if i == 0 and figure is not None:
            value = figure
        else:
            try:
                value = run(knobs)
            except Exception:  # the reference or the implementation refuses this setting: not a fit
                continue
        if math.isfinite(value) and (best is None or value < best.cross_check):
            best = BestFit(knobs, value, label, changed)
    return best


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
    betas, gamma, weight decay and batch size themselves, except where the adapter's
    ``fixed`` insists on a value. None: negotiate eps and the interval with the adapter.
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
    if p.schedule == "never":
        refresh = "never"
    elif p.schedule == "scheduled" and p.timing is not None:
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
    hbias_moot = _guard(ev, "h_bias_correction", _probe_h_bias, p, ev)
    if p.hbias is None:
        p.neutral_b2 = not p.self_estimating
    clamp_moot = _guard(ev, "estimate_clamp", _probe_clamp, p, ev, notes)
    _guard(ev, "bias_correction", _probe_bias, p, ev)
    _guard(ev, "form", _probe_form_batch, p, ev)
    eps_fixed = _guard(ev, "eps", _probe_eps, p, ev)
    placement = _guard(ev, "eps_placement", _probe_placement, p, ev)
    clip_form = _guard(ev, "clip_form", _probe_negative, p, ev, placement)
    weight_decay = _guard(ev, "weight_decay", _probe_weight_decay, p, ev, momentum)
    wd_form = KNOB_WEIGHT_DECAY.get(weight_decay)
    if p.wd_moot is not None:
        wd_form = "before"
    ev["weight_decay_form"] = (
        f"moot: {p.wd_moot}; reported as 'before'" if p.wd_moot is not None else
        f"the weight-decay reading {weight_decay!r} is weight_decay_form={wd_form!r}" if wd_form is not None else
        f"the weight-decay reading {weight_decay!r} is outside the knobs" if weight_decay is not None else
        "undetermined: see weight_decay")
    state_dtype = _guard(ev, "state_dtype", _probe_state, p, ev)
    defaults = _probe_defaults(adapter, ev)
    if placement == "max" and clip_form is not None:
        clip_form = "clip"
    moot = tuple(k for k, is_moot in (("clip_form", placement == "max"), ("h_bias_correction", hbias_moot),
                                      ("estimate_clamp", clamp_moot),
                                      ("weight_decay_form", p.wd_moot is not None)) if is_moot)
    if eps_fixed is None and "eps" in p.fixed:
        eps_fixed = True

    found = Detection(form=p.form, eps_placement=placement, clip_form=clip_form, bias_correction=p.bias,
                      refresh=refresh, batch_factor=p.batch, momentum_updates=momentum, eps=p.eps, eps_fixed=eps_fixed,
                      weight_decay=weight_decay, internal_estimator=internal or p.self_estimating, preset=None,
                      matches=(), evidence=ev, moot=moot, notes=tuple(notes), hyper=base, cross_check=None,
                      probes=p.count, seconds=0.0, h_bias_correction=p.hbias, estimate_clamp=p.clamp,
                      weight_decay_form=wd_form, state_dtype=state_dtype, constructor_defaults=defaults)
    matches: list[str] = []
    knobs = found.knobs
    if knobs is not None and p.eps is not None:
        for name, d in DIALECTS.items():
            if eps_fixed is None:
                eps_ok = _close(p.eps, base.eps, 1e-4) or _close(p.eps, float(d.defaults["eps"]), 1e-4)
            else:
                eps_ok = _close(p.eps, float(d.defaults["eps"]) if eps_fixed else base.eps, 1e-4)
            if _canonical(d.knobs) == _canonical(knobs) and eps_ok:
                matches.append(name)

    readings = found.readings
    filled = {k: getattr(Knobs(), k) if v is None else v for k, v in readings.items()}
    detected_refresh = filled["refresh"]
    k = base.hessian_interval
    steps = max(2 * k + 2, 6)
    wd = 0.0 if p.wd_moot is not None else 0.1
    check_hyper = replace(base, lr=LR, beta1=0.9, beta2=0.95, gamma=GAMMA, weight_decay=wd, batch_size=BATCH)
    check_hyper = replace(check_hyper, **p.fixed)
    eps = check_hyper.eps if p.eps is None or _close(p.eps, check_hyper.eps, 1e-4) else p.eps

    def offers(t: int) -> bool:
        return (t - 1) % k == 0 and not p.self_estimating and (detected_refresh != "caller" or t > 1)

    def run(kn: Knobs) -> float:
        return _lockstep(adapter, check_hyper, kn, eps, steps, offers)

    cross, best = None, None
    unknown = [k for k, v in readings.items() if v is None]
    try:
        cross = run(Knobs(**filled))
        ev["cross_check"] = (f"SophiaRef with the detected knobs{f' ({unknown} at the paper value)' if unknown else ''}"
                             f" and eps={eps:g}, lock-step with the implementation (teacher-forced, {steps} steps, "
                             f"b1=0.9, b2=0.95, wd={wd:g}, B={BATCH:g}, random data, h nonzero at the start): worst "
                             f"step deviation {cross:.3g} of max(|theta|, lr)")
    except Exception as e:
        ev["cross_check"] = f"failed: {_error(e)}"
    if knobs is None or cross is None or cross > check_tolerance(state_dtype):
        best = _best_fit(run, readings, cross)
        ev["best_fit"] = ("no knob set ran in lock-step with it" if best is None else
                          f"{best.label}: worst step deviation {best.cross_check:.3g} of max(|theta|, lr) (each knob "
                          "varied one at a time over its values from the detected ones, and every preset)")
    return replace(found, preset=matches[0] if matches else None, matches=tuple(matches), cross_check=cross,
                   best_fit=best, probes=p.count, seconds=time.perf_counter() - start)
