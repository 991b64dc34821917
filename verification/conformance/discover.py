"""Stage 2, discovering: how to build and step an optimizer, and where its state lives, found by behaviour.

For a :class:`~verification.adapters.convention.ConventionAdapter` (an optimizer class or
factory named by ``module:object``), :func:`discover`:

1. maps the harness's hyperparameters to the constructor's own keywords, read from its
   signature (``betas`` or ``beta1``/``beta2``, ``gamma``/``rho``/``p``, ``k``/``update_period``, ...),
   and ``batch_size`` to a ``bs`` of ``step()`` where the constructor has none; what cannot be
   mapped is listed, and a required argument that cannot be mapped does not fit;
2. finds how an estimate goes in: a keyword of ``step()`` (``hessian_estimate``, ``hessian``,
   ``hhat``, ...), or a method (``update_hessian(estimate)``, or the official
   ``update_hessian()`` that folds the squares of ``p.grad``);
3. steps probe copies on two small tensors, betas (1/2, 1/2), k = 2, three steps with
   estimates on steps 1 and 3, and again with the gradients perturbed, with the estimates
   perturbed, and with float32 parameters. Which entry of ``optimizer.state[p]`` is m
   (moves with the gradient and not with the estimate), h (moves with the estimate and not
   with the gradient; or, where nothing does, the entry that never moves), a float64 master
   copy of the parameters, a step counter (1, 2, 3) or a refresh counter (1, 1, 2) -- per
   parameter, in the param groups or on the optimizer itself -- is read from how it moved.
   The forms are recorded (m absorbing g once or twice, h the average of the estimates or of
   their squares) but do not decide the slot: a wrong rule is the battery's finding, not
   discovery's.

Then the adapter reads and writes through those slots. An API that does not fit raises
:class:`DoesNotFit` with the adapter to write instead (:func:`adapter_template`).
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..adapters.base import Adapter, Hyperparameters, Refresh
from ..adapters.convention import CONVENTION, H_KEYS, M_KEYS, ConventionAdapter, _number

F64 = torch.float64

#: the harness's hyperparameters and the constructor keywords that carry them, in order of preference
NAMES = {
    "lr": ("lr", "learning_rate", "eta"),
    "gamma": ("gamma", "rho", "p"),
    "eps": ("eps", "epsilon"),
    "weight_decay": ("weight_decay", "wd"),
    "hessian_interval": ("hessian_interval", "k", "hessian_update_interval", "update_period", "update_freq",
                         "update_interval", "hessian_update_freq", "hessian_update_period"),
    "batch_size": ("batch_size", "bs"),
}
BETAS = ("betas",)
BETA1 = ("beta1", "b1", "beta_1")
BETA2 = ("beta2", "b2", "beta_2")
HARNESS = ("lr", "beta1", "beta2", "gamma", "eps", "weight_decay", "hessian_interval", "batch_size")
#: keywords of step() that take the estimate, and methods that take it before the step
ESTIMATE_KEYWORDS = ("hessian_estimate", "hessian", "hessians", "hhat", "h_hat", "estimate", "hessian_diag",
                     "hessian_diagonal", "diag_hessian", "hess", "curvature")
ESTIMATE_METHODS = ("update_hessian", "set_hessian", "set_estimate", "update_estimate", "hessian_update")

# -- the probe: two tensors, betas (1/2, 1/2), k = 2, estimates on steps 1 and 3 ------------------------------
PROBE_HYPER = Hyperparameters(lr=0.01, beta1=0.5, beta2=0.5, gamma=0.5, eps=1e-12, weight_decay=0.0,
                              hessian_interval=2, batch_size=1.0)
PROBE_INIT = ((0.1, -0.2, 0.3), (0.4, -0.5))
PROBE_GRADS = {1: ((0.3, -0.7, 1.1), (0.9, -0.4)), 2: ((-0.2, 0.5, 0.6), (0.35, 0.8)),
               3: ((0.45, -0.15, -0.9), (-0.6, 0.25))}
PROBE_ESTIMATES = {1: ((2.0, 0.5, 1.5), (0.75, 3.0)), 3: ((1.25, 2.5, 0.3), (1.75, 0.6))}
PROBE_STEPS = 3
STEP_PATTERN = (1, 2, 3)
REFRESH_PATTERN = (1, 1, 2)


class DoesNotFit(Exception):
    """The optimizer's API does not fit the harness; ``template`` is the adapter module to write instead."""

    def __init__(self, message: str, template: str | None = None):
        super().__init__(message)
        self.template = template if template is not None else adapter_template()


class _ProbeFailed(Exception):
    """A probe step raised something other than a TypeError: left to the battery to report."""


# -- what was found -----------------------------------------------------------------------------------------------

@dataclass
class Slot:
    """One entry of the optimizer's state and what it holds.

    ``role``: ``m``, ``h``, ``master`` (a full-precision copy of the parameter), ``step``, ``refreshes``,
    ``estimate`` (the last estimate handed in: left as it is), ``constant`` (never changed in the probe) or
    ``changing`` (changed in a way not mapped: not teacher-forceable). ``where``:
    ``state`` (``optimizer.state[p][key]``), ``group`` (``param_groups[i][key]``) or ``optimizer``
    (``optimizer.key``). ``kind``: ``tensor``, ``0-d tensor``, ``int``, ``float`` or ``other``. ``dtype``: under
    float64 parameters, ``low_dtype``: under float32 ones, ``half_dtype``: under bfloat16 ones (None where absent
    or not probed; a 16-bit parameter dtype takes the bfloat16 probe's answer). A counter holds
    ``count + offset``. ``seen``: the probes it appeared in (``float64``, ``float32``)."""

    role: str
    key: str
    where: str = "state"
    kind: str = "tensor"
    dtype: str | None = None
    low_dtype: str | None = None
    half_dtype: str | None = None
    offset: int = 0
    form: str = ""
    why: str = ""
    seen: tuple[str, ...] = ("float64",)
    value: object = field(default=None, repr=False, compare=False)

    def label(self) -> str:
        if self.where == "group":
            return f"param_groups[*][{self.key!r}]"
        if self.where == "optimizer":
            return f"optimizer.{self.key}"
        return f"state[{self.key!r}]"

    def dtype_for(self, param_dtype: torch.dtype) -> torch.dtype:
        """The dtype this entry has for parameters of ``param_dtype`` (following them, or fixed)."""
        if param_dtype in (torch.bfloat16, torch.float16) and self.half_dtype is not None:
            return param_dtype if self.half_dtype == "bfloat16" else getattr(torch, self.half_dtype)
        if param_dtype == F64:
            name = self.dtype or self.low_dtype
        elif self.low_dtype is not None:
            if self.low_dtype == "float32" and self.dtype == "float64":
                return param_dtype  # follows the parameter
            name = self.low_dtype
        elif self.dtype in (None, "float64"):
            return param_dtype
        else:
            name = self.dtype
        return getattr(torch, name) if name else param_dtype

    def as_dict(self) -> dict:
        out = dict(role=self.role, key=self.key, where=self.where, kind=self.kind, dtype=self.dtype,
                   low_dtype=self.low_dtype)
        if self.role in ("step", "refreshes"):
            out["offset"] = self.offset
        if self.form:
            out["form"] = self.form
        if self.why:
            out["why"] = self.why
        return out


@dataclass
class Discovery:
    """What :func:`discover` found: the API (constructor keywords, step keywords, the estimate's way in) and the
    state slots. ``declared``: the adapter declares its API itself (not a ConventionAdapter); ``configured``:
    the adapter can drive it (it declares its API, or the slots were found and the adapter reads and writes
    through them). ``state_dtype``: the dtype of m and h under float64 parameters (anything but float64 is a
    precision matter). ``findings``: one sentence each, for the certificate."""

    name: str
    declared: bool = False
    configured: bool = False
    constructor: dict[str, str] = field(default_factory=dict)
    step_keywords: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)
    estimate: str = ""
    estimate_via: str | None = None
    estimate_keyword: str | None = None
    estimate_method: str | None = None
    estimate_form: str = "hhat"
    accepts_any_estimate: bool = True
    m: Slot | None = None
    h: Slot | None = None
    step: list[Slot] = field(default_factory=list)
    refreshes: list[Slot] = field(default_factory=list)
    master: Slot | None = None
    extra: list[Slot] = field(default_factory=list)
    state_dtype: str | None = None
    low_probed: bool = False
    findings: list[str] = field(default_factory=list)
    probes: int = 0
    seconds: float = 0.0

    @property
    def not_teacher_forceable(self) -> list[str]:
        """The entries ``load`` cannot write (it raises NotTeacherForceable for them)."""
        return [s.label() for s in self.extra if s.role == "changing"]

    def layout(self, param_dtype: torch.dtype) -> list[Slot]:
        """The per-parameter entries the implementation keeps for parameters of ``param_dtype``."""
        want = "float64" if param_dtype == F64 else "float32"
        slots = [s for s in [self.m, self.h, self.master, *self.step, *self.refreshes, *self.extra]
                 if s is not None and s.where == "state"]
        return [s for s in slots if want in s.seen or (want == "float32" and not self.low_probed)]

    def as_dict(self) -> dict:
        one = (lambda s: None if s is None else s.as_dict())
        return dict(name=self.name, declared=self.declared, configured=self.configured,
                    constructor=dict(self.constructor), step_keywords=dict(self.step_keywords),
                    unmapped=list(self.unmapped), defaults={k: _jsonable(v) for k, v in self.defaults.items()},
                    estimate=self.estimate, estimate_form=self.estimate_form,
                    accepts_any_estimate=self.accepts_any_estimate, m=one(self.m), h=one(self.h),
                    step=[s.as_dict() for s in self.step], refreshes=[s.as_dict() for s in self.refreshes],
                    master=one(self.master), extra=[s.as_dict() for s in self.extra], state_dtype=self.state_dtype,
                    not_teacher_forceable=self.not_teacher_forceable, findings=list(self.findings),
                    probes=self.probes, seconds=round(self.seconds, 3))

    def describe(self) -> str:
        if self.declared:
            return f"{self.name}: its adapter declares its API and state itself"
        lines = [f"{self.name}: constructor " + ", ".join(f"{k} -> {v}" for k, v in self.constructor.items())]
        if self.step_keywords:
            lines.append("  step() keywords: " + ", ".join(f"{k} -> {v}" for k, v in self.step_keywords.items()))
        if self.unmapped:
            lines.append("  not mapped: " + ", ".join(self.unmapped))
        lines.append(f"  estimate: {self.estimate}")
        for what, slot in (("m", self.m), ("h", self.h), ("master", self.master)):
            if slot is not None:
                lines.append(f"  {what}: {slot.label()} {slot.dtype or slot.low_dtype} {slot.form}".rstrip())
        for slot in self.step + self.refreshes:
            offset = f", offset {slot.offset}" if slot.offset else ""
            lines.append(f"  {slot.role} counter: {slot.label()} ({slot.kind}{offset})")
        for slot in self.extra:
            lines.append(f"  {slot.role}: {slot.label()} ({slot.kind})")
        lines += [f"  finding: {f}" for f in self.findings]
        return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return str(value)


# -- 1. the constructor ---------------------------------------------------------------------------------------

@dataclass
class ConstructorMap:
    """Harness name -> constructor keyword (``name[i]``: entry i of a tuple), the declared defaults in harness
    names, the harness names with no keyword, required arguments with no harness value, and whether the
    signature takes ``**kwargs`` (the convention's names are then passed for what matched nothing)."""

    constructor: dict[str, str]
    defaults: dict
    unmapped: list[str]
    required: list[str]
    var_keyword: bool
    passed_through: list[str]


def _signature(target):
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def map_constructor(factory, extra: dict | None = None) -> ConstructorMap:
    """Read the constructor's (or factory's) signature and map the harness's hyperparameters onto it."""
    extra = dict(extra or {})
    sig = _signature(factory)
    if sig is None:
        return ConstructorMap(dict(CONVENTION), {}, [], [], True, list(HARNESS))
    parameters = list(sig.parameters.values())
    if parameters and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                             inspect.Parameter.POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]  # the parameters being optimized
    by_name = {p.name: p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
    first = (lambda names: next((n for n in names if n in by_name), None))
    mapping: dict[str, str] = {}
    if first(BETAS):
        mapping["beta1"], mapping["beta2"] = f"{first(BETAS)}[0]", f"{first(BETAS)}[1]"
    else:
        for name, candidates in (("beta1", BETA1), ("beta2", BETA2)):
            if first(candidates):
                mapping[name] = first(candidates)
    for name, candidates in NAMES.items():
        if first(candidates):
            mapping[name] = first(candidates)
    passed, unmapped = [], []
    for name in HARNESS:
        if name in mapping:
            continue
        if var_keyword:
            mapping[name] = CONVENTION[name]
            passed.append(name)
        else:
            unmapped.append(name)
    mapping = {name: mapping[name] for name in HARNESS if name in mapping}
    defaults = _declared_defaults(mapping, by_name, passed)
    used = {target.partition("[")[0] for target in mapping.values()}
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
                and p.name not in used and p.name not in extra]
    return ConstructorMap(mapping, defaults, unmapped, required, var_keyword, passed)


def _declared_defaults(mapping: dict[str, str], by_name: dict, passed: list[str]) -> dict:
    """The signature's defaults of the mapped keywords, in harness names (None defaults are not declarations)."""
    out = {}
    for name, target in mapping.items():
        if name in passed:
            continue
        key, _, index = target.partition("[")
        default = by_name[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        if index:
            try:
                out[name] = default[int(index.rstrip("]"))]
            except (TypeError, IndexError, KeyError):
                continue
        else:
            out[name] = default
    return out


# -- 2. the estimate's way in ----------------------------------------------------------------------------------

def _estimate_route(opt, d: Discovery, class_name: str) -> None:
    """Fill in how the estimate (and a step-time batch factor) reach ``opt``; DoesNotFit where nothing can."""
    sig = _signature(opt.step)
    params = {} if sig is None else {p.name: p for p in sig.parameters.values()}
    step_var_keyword = sig is None or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "batch_size" in d.unmapped:
        keyword = next((n for n in NAMES["batch_size"] if n in params), None)
        if keyword is not None:
            d.unmapped.remove("batch_size")
            d.step_keywords["batch_size"] = keyword
            default = params[keyword].default
            if default is not inspect.Parameter.empty and default is not None:
                d.defaults["batch_size"] = default
    keyword = next((n for n in ESTIMATE_KEYWORDS if n in params), None)
    if keyword is not None:
        d.estimate_via, d.estimate_keyword, d.estimate = "keyword", keyword, f"step({keyword}=[...])"
        return
    for name in ESTIMATE_METHODS:
        method = getattr(opt, name, None)
        if not callable(method):
            continue
        msig = _signature(method)
        takes = [] if msig is None else [p for p in msig.parameters.values()
                                         if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        d.estimate_method = name
        if takes:
            d.estimate_via, d.estimate = "method", f"{name}([...]) before step()"
        else:
            d.estimate_via, d.estimate_form, d.accepts_any_estimate = "grad-method", "ghat", False
            d.estimate = f"{name}() with p.grad = ghat (it folds the squares), before step()"
            d.findings.append(f"it takes the estimate as {name}() folding p.grad**2: the harness sets p.grad to the "
                              "sampled-label gradient first; only GNB-shaped estimates can be handed in")
        return
    if step_var_keyword:
        d.estimate_via, d.estimate_keyword = "keyword", ESTIMATE_KEYWORDS[0]
        d.estimate = f"step({ESTIMATE_KEYWORDS[0]}=[...]) through its **kwargs"
        d.findings.append(f"its step() takes **kwargs: the estimate is passed as {ESTIMATE_KEYWORDS[0]}=")
        return
    shown = "(?)" if sig is None else str(sig)
    raise DoesNotFit(
        f"{class_name}.step{shown} takes no Hessian-diagonal estimate: it has none of the keywords "
        f"{', '.join(ESTIMATE_KEYWORDS[:6])}, ... and the optimizer has no method "
        f"{', '.join(ESTIMATE_METHODS[:2])}, ...; write an adapter for it (below) and certify that "
        f"instead, as module:MyAdapter")


# -- 3. the probes --------------------------------------------------------------------------------------------

def _tensors(values, dtype=F64) -> list[Tensor]:
    return [torch.tensor(v, dtype=dtype) for v in values]


def _probe_inputs(g_shift: bool, e_shift: bool):
    """Gradients per step and estimates per refresh step; a shift perturbs them (``1.5 x + 0.25``)."""
    move = (lambda x: [1.5 * t + 0.25 for t in x])
    grads = {t: (move(_tensors(v)) if g_shift else _tensors(v)) for t, v in PROBE_GRADS.items()}
    estimates = {t: (move(_tensors(v)) if e_shift else _tensors(v)) for t, v in PROBE_ESTIMATES.items()}
    return grads, estimates


def _freeze(value):
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        return repr(value)


def _snapshot(opt, tensors) -> dict:
    """Every entry of the state, the param groups and the optimizer's own scalars, copied."""
    skip = {"state", "param_groups", "defaults"}
    return dict(
        state=[{k: _freeze(v) for k, v in opt.state.get(p, {}).items()} for p in tensors],
        groups=[{k: _freeze(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
        optimizer={k: _freeze(v) for k, v in vars(opt).items() if k not in skip and _scalar(v)},
        params=[p.detach().clone() for p in tensors])


def _scalar(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or \
        (isinstance(value, Tensor) and value.dim() == 0)


def _run_probe(adapter: ConventionAdapter, api: Discovery, dtype=F64, g_shift=False, e_shift=False) -> list[dict]:
    """Build a probe copy, step it three times; the snapshots before and after each step."""
    probe = ConventionAdapter(adapter.factory, adapter.name, extra=adapter.extra)
    probe.configure(api)
    grads, estimates = _probe_inputs(g_shift, e_shift)
    try:
        probe.build(_tensors(PROBE_INIT), PROBE_HYPER, dtype, "cpu")
        snaps = [_snapshot(probe.opt, probe.tensors)]
        for t in range(1, PROBE_STEPS + 1):
            e = estimates.get(t)
            refresh = None if e is None else Refresh(hhat=e, ghat=[x.sqrt() for x in e], batch=1.0)
            probe.step(grads[t], refresh)
            snaps.append(_snapshot(probe.opt, probe.tensors))
    except TypeError as error:
        raise DoesNotFit(f"stepping it as the harness does raised TypeError: {error} (built as "
                         f"{type(probe.opt).__name__ if probe.opt is not None else 'factory'}"
                         f"(params, {', '.join(f'{k}=...' for k in getattr(probe, 'kwargs', {}))}); estimate via "
                         f"{api.estimate}); write an adapter for it (below)") from None
    except Exception as error:
        raise _ProbeFailed(f"{type(error).__name__}: {error}") from None
    return snaps


# -- 4. reading the probes -----------------------------------------------------------------------------------

def _same(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return repr(a) == repr(b)


def _close(got: Tensor, want: Tensor) -> bool:
    rtol = 8 * torch.finfo(got.dtype).eps if got.is_floating_point() else 0.0
    return bool(torch.allclose(got.to(F64), want, rtol=rtol, atol=1e-300))


def _m_forms(grads) -> dict[str, list[list[Tensor]]]:
    """m after each step for each reading: the gradient absorbed once, twice or three times per step."""
    b1 = PROBE_HYPER.beta1
    out = {}
    for n, name in ((1, "ema of g"), (2, "ema of g, twice per step"), (3, "ema of g, three times per step")):
        m, seq = [torch.zeros_like(g) for g in grads[1]], []
        for t in range(1, PROBE_STEPS + 1):
            for _ in range(n):
                m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads[t])]
            seq.append(m)
        out[name] = seq
    return out


def _h_forms(estimates) -> dict[str, list[list[Tensor]]]:
    """h after each step for each reading: the average of the estimates (or of their squares), folded on every
    step it was handed one, or on the first only (an interval of its own)."""
    b2 = PROBE_HYPER.beta2
    out = {}
    for fold, when in ((lambda e: e, None), (lambda e: e * e, None), (lambda e: e, 1), (lambda e: e * e, 1)):
        name = ("ema of the estimates" if fold(torch.tensor(2.0)) == 2 else "ema of the squared estimates") \
            + ("" if when is None else ", refreshed on step 1 only")
        h, seq = [torch.zeros_like(e) for e in estimates[1]], []
        for t in range(1, PROBE_STEPS + 1):
            if t in estimates and (when is None or t == when):
                h = [b2 * hi + (1 - b2) * fold(e) for hi, e in zip(h, estimates[t])]
            seq.append(h)
        out[name] = seq
    return out


def _form(values: list[list], forms: dict) -> str:
    """The name of the first reading that every step matches, else ''."""
    for name, seq in forms.items():
        if all(isinstance(v, Tensor) and _close(v, w) for step_v, step_w in zip(values, seq)
               for v, w in zip(step_v, step_w)):
            return name
    return ""


def _per_param(snaps, key) -> list[list]:
    """``values[t-1][i]``: parameter i's entry ``key`` after step t (a marker where it is missing)."""
    return [[s.get(key, _MISSING) for s in snap["state"]] for snap in snaps[1:]]


_MISSING = object()


def _counter_role(numbers: list[float], before: float | None) -> tuple[str, int] | None:
    """``("step", offset)`` for 1, 2, 3 (+ offset), ``("refreshes", offset)`` for 1, 1, 2 (+ offset)."""
    for role, pattern in (("step", STEP_PATTERN), ("refreshes", REFRESH_PATTERN)):
        offsets = {n - p for n, p in zip(numbers, pattern)}
        if len(offsets) == 1:
            offset = offsets.pop()
            if offset == int(offset) and (before is None or before == offset):
                return role, int(offset)
    return None


def _kind(value) -> str:
    if isinstance(value, Tensor):
        return "0-d tensor" if value.dim() == 0 else "tensor"
    if isinstance(value, bool):
        return "other"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "other"


def _dtype_name(value) -> str | None:
    return str(value.dtype).replace("torch.", "") if isinstance(value, Tensor) else None


def _classify_counter(key: str, where: str, seq: list, before) -> Slot:
    """A scalar entry (per parameter, per group or on the optimizer): a counter, a constant or changing."""
    last = seq[-1]
    numbers = [None if v is _MISSING else _from_scalar(v) for v in seq]
    kind, dtype = _kind(last), _dtype_name(last)
    if all(n is not None for n in numbers):
        found = _counter_role(numbers, None if before is _MISSING else _from_scalar(before))
        if found is not None:
            return Slot(found[0], key, where, kind, dtype, offset=found[1], value=_freeze(seq[0]))
    if all(_same(v, seq[0]) for v in seq) and (before is _MISSING or _same(before, seq[0])):
        return Slot("constant", key, where, kind, dtype, value=_freeze(seq[0]))
    return Slot("changing", key, where, kind, dtype, value=_freeze(seq[0]),
                why=f"it went {_fmt([before] + list(seq))} over the probe's steps 0..3 (refreshes on 1 and 3): "
                    "neither a step counter nor a refresh counter")


def _from_scalar(value) -> float | None:
    """A counter's value as a float (an int, a float or a 0-d tensor), else None."""
    return _number(value)


def _fmt(values) -> str:
    return ", ".join("-" if v is _MISSING else repr(_from_scalar(v) if _from_scalar(v) is not None else v)
                     for v in values)


def _classify(base, by_g, by_e, params_seq) -> tuple[dict, list[Slot]]:
    """Per-parameter entries of the float64 probe: tensor entries with how they move, and scalar/other slots."""
    keys = []
    for snap in base[1:]:
        for s in snap["state"]:
            keys += [k for k in s if k not in keys]
    tensors, others = {}, []
    shapes = [tuple(p.shape) for p in params_seq[0]]
    for key in keys:
        seq = _per_param(base, key)
        flat = [v for step in seq for v in step]
        if all(isinstance(v, Tensor) and v.is_floating_point() and tuple(v.shape) == shape
               for step in seq for v, shape in zip(step, shapes)) and all(v is not _MISSING for v in flat):
            g_seq, e_seq = _per_param(by_g, key), _per_param(by_e, key)
            tensors[key] = dict(
                seq=seq, dtype=_dtype_name(flat[0]),
                dep_g=any(not _same(a, b) for sa, sb in zip(seq, g_seq) for a, b in zip(sa, sb)),
                dep_e=any(not _same(a, b) for sa, sb in zip(seq, e_seq) for a, b in zip(sa, sb)),
                changes=any(not _same(a, b) for sa, sb in zip(seq, seq[1:]) for a, b in zip(sa, sb)),
                master=_tracks_params(seq, params_seq))
            continue
        per_step = [step[0] for step in seq]
        consistent = all(_same(v, step[0]) for step in seq for v in step)
        if consistent and all(v is not _MISSING and _scalar(v) for v in per_step):
            others.append(_classify_counter(key, "state", per_step, _MISSING))
        elif all(_same(v, flat[0]) for v in flat) or _same_per_param(seq):
            others.append(Slot("constant", key, "state", _kind(flat[0]), _dtype_name(flat[0]), value=_freeze(flat[0])))
        else:
            others.append(Slot("changing", key, "state", _kind(flat[-1]), _dtype_name(flat[-1]),
                               why="it changes with the steps and is neither m, h, a parameter copy nor a counter"))
    return tensors, others


def _same_per_param(seq) -> bool:
    """Each parameter's entry unchanged over the steps (a per-parameter constant)."""
    return all(_same(a, b) for step in seq[1:] for a, b in zip(step, seq[0]))


def _tracks_params(seq, params_seq) -> bool:
    """Whether an entry equals the parameters (rounded to their dtype) after every step: a master copy."""
    for step_values, params in zip(seq, params_seq[1:]):
        for v, p in zip(step_values, params):
            if not torch.equal(v.to(p.dtype), p):
                return False
    return True


def _holds_last_estimate(seq, estimates) -> bool:
    """Whether an entry holds, after every step, the latest estimate handed in so far (a scratch buffer)."""
    latest = None
    for t, values in enumerate(seq, start=1):
        latest = estimates.get(t, latest)
        if latest is None or not all(_close(v, e) for v, e in zip(values, latest)):
            return False
    return True


def _pick(candidates: dict, names: tuple[str, ...], forms: dict) -> tuple[str, str] | None:
    """The best of ``candidates`` (key -> info): a recognised form first, then a conventional name."""
    if not candidates:
        return None
    scored = []
    for order, (key, info) in enumerate(candidates.items()):
        form = _form(info["seq"], forms)
        scored.append(((0 if form else 1, 0 if key in names else 1, order), key, form))
    _, key, form = min(scored)
    return key, form


def _shared(base, where: str) -> list[Slot]:
    """Scalars and other entries of the param groups (``group``) or the optimizer's scalars (``optimizer``)."""
    pick = (lambda snap: snap["groups"][0] if snap["groups"] else {}) if where == "group" else \
        (lambda snap: snap["optimizer"])
    keys = []
    for snap in base:
        keys += [k for k in pick(snap) if k not in keys]
    slots = []
    for key in keys:
        before = pick(base[0]).get(key, _MISSING)
        seq = [pick(snap).get(key, _MISSING) for snap in base[1:]]
        if any(v is _MISSING for v in seq):
            slots.append(Slot("changing", key, where, why="it appears or disappears between steps"))
            continue
        if all(_scalar(v) for v in seq):
            slots.append(_classify_counter(key, where, seq, before))
        elif all(_same(v, seq[0]) for v in seq) and (before is _MISSING or _same(before, seq[0])):
            slots.append(Slot("constant", key, where, _kind(seq[0]), value=_freeze(seq[0])))
        else:
            slots.append(Slot("changing", key, where, _kind(seq[-1]),
                              why="it changes with the steps and is not a counter"))
    return slots


def _low_precision(adapter, d: Discovery, m_key: str, h_key: str) -> None:
    """The float32 probe: each entry's dtype under float32 parameters, and a float64 master copy if one appears;
    then the bfloat16 probe: the dtype of m and h under 16-bit parameters (float32 state, or the parameters')."""
    try:
        snaps = _run_probe(adapter, d, torch.float32)
    except (DoesNotFit, _ProbeFailed) as error:
        d.findings.append(f"it could not be stepped on float32 parameters ({error}): the state layout for low "
                          "precision is taken from float64")
        return
    d.low_probed = True
    d.probes += 1
    _half_precision(adapter, d, m_key, h_key)
    params_seq = [snap["params"] for snap in snaps]
    slots = {(s.where, s.key): s for s in [d.m, d.h, *d.step, *d.refreshes, *d.extra] if s is not None}
    keys = []
    for snap in snaps[1:]:
        for s in snap["state"]:
            keys += [k for k in s if k not in keys]
    for key in keys:
        seq = _per_param(snaps, key)
        first = seq[0][0]
        slot = slots.get(("state", key))
        if slot is not None:
            slot.low_dtype, slot.seen = _dtype_name(first), slot.seen + ("float32",)
            continue
        floating = all(isinstance(v, Tensor) and v.is_floating_point() for st in seq for v in st)
        if key not in (m_key, h_key) and floating and _tracks_params(seq, params_seq):
            d.master = Slot("master", key, "state", "tensor", None, _dtype_name(first), seen=("float32",),
                            form="a full-precision copy of the parameters")
        else:
            kind = _kind(first)
            d.extra.append(Slot("constant" if _same_per_param(seq) else "changing", key, "state", kind, None,
                                _dtype_name(first), seen=("float32",), value=_freeze(first),
                                why="" if _same_per_param(seq) else "it changes with the steps (float32 parameters)"))


def _half_precision(adapter, d: Discovery, m_key: str, h_key: str) -> None:
    try:
        snaps = _run_probe(adapter, d, torch.bfloat16)
    except (DoesNotFit, _ProbeFailed, RuntimeError, TypeError, ValueError):
        return  # no bfloat16 answer: 16-bit parameters take the float32 layout
    d.probes += 1
    for slot, key in ((d.m, m_key), (d.h, h_key)):
        values = [v for snap in snaps[1:] for st in snap["state"] for k, v in st.items() if k == key]
        if slot is not None and values and isinstance(values[0], Tensor):
            slot.half_dtype, slot.seen = _dtype_name(values[0]), slot.seen + ("bfloat16",)


def _find_slots(adapter: ConventionAdapter, api: Discovery) -> None:
    """Probe, and fill ``api`` with the state slots; DoesNotFit where m or h cannot be found."""
    base = _run_probe(adapter, api)
    by_g = _run_probe(adapter, api, g_shift=True)
    by_e = _run_probe(adapter, api, e_shift=True)
    api.probes += 3
    grads, estimates = _probe_inputs(False, False)
    params_seq = [snap["params"] for snap in base]
    tensors, others = _classify(base, by_g, by_e, params_seq)
    master = [k for k, info in tensors.items() if info["master"] and info["changes"]]
    rest = {k: v for k, v in tensors.items() if k not in master}
    m_pick = _pick({k: v for k, v in rest.items() if v["dep_g"] and not v["dep_e"]}, M_KEYS, _m_forms(grads)) or \
        _pick({k: v for k, v in rest.items() if v["dep_g"]}, M_KEYS, _m_forms(grads))
    entries = ", ".join(f"{k!r}" for k in tensors) or "none"
    if m_pick is None:
        raise DoesNotFit(f"no entry of optimizer.state[p] moves with the gradient, so m cannot be found (its "
                         f"per-parameter tensor entries: {entries}); if it keeps its state elsewhere (keyed by "
                         "name or index, or outside optimizer.state), write an adapter for it (below)")
    m_key, m_form = m_pick
    rest.pop(m_key)
    h_forms = _h_forms(estimates)
    h_pick = _pick({k: v for k, v in rest.items() if v["dep_e"] and not v["dep_g"]}, H_KEYS, h_forms) or \
        _pick({k: v for k, v in rest.items() if v["dep_e"]}, H_KEYS, h_forms)
    if h_pick is None:
        still = {k: v for k, v in rest.items() if not v["changes"]}
        h_pick = _pick(still, H_KEYS, {})
        if h_pick is not None:
            h_pick = (h_pick[0], "never moved")
            api.findings.append(f"no state entry moved with the estimates; h is taken to be {h_pick[0]!r}, which "
                                "never moved in the probe (it ignored every estimate)")
    if h_pick is None:
        raise DoesNotFit(f"no entry of optimizer.state[p] moves with the Hessian estimate (handed in as "
                         f"{api.estimate}), so h cannot be found (its per-parameter tensor entries: {entries}); "
                         "write an adapter for it (below)")
    h_key, h_form = h_pick
    rest.pop(h_key)
    if h_form.startswith("ema of the squared") and api.estimate_via in ("keyword", "method"):
        api.estimate_form, api.accepts_any_estimate = "ghat", False
        api.findings.append("it squares the estimate it is handed (h averages its squares): the harness hands it "
                            "the sampled-label gradient ghat, so only GNB-shaped estimates can be tested")
    api.m = Slot("m", m_key, "state", "tensor", tensors[m_key]["dtype"], form=m_form or "unrecognised")
    api.h = Slot("h", h_key, "state", "tensor", tensors[h_key]["dtype"], form=h_form or "unrecognised")
    for key in master:
        api.master = Slot("master", key, "state", "tensor", tensors[key]["dtype"],
                          form="a full-precision copy of the parameters")
    for key, info in rest.items():
        role = "constant"
        if info["changes"]:
            role = "estimate" if _holds_last_estimate(info["seq"], estimates) else "changing"
        api.extra.append(Slot(role, key, "state", "tensor", info["dtype"], value=_freeze(info["seq"][0][0]),
                              form="the last estimate handed in (left as the implementation has it)"
                              if role == "estimate" else "",
                              why="it changes with the steps and is neither m, h, a copy of the parameters nor the "
                                  "last estimate" if role == "changing" else ""))
    for slot in others + _shared(base, "group") + _shared(base, "optimizer"):
        if slot.role in ("step", "refreshes"):
            getattr(api, slot.role).append(slot)
        else:
            api.extra.append(slot)
    _low_precision(adapter, api, m_key, h_key)
    _slot_findings(api)


def _slot_findings(d: Discovery) -> None:
    """The findings about the slots: forms not recognised, no counter, precision, state it cannot write."""
    if d.m.form == "unrecognised":
        d.findings.append(f"m is {d.m.label()} (it moves with the gradient), but not as b1 m + (1 - b1) g")
    if d.h.form == "unrecognised":
        d.findings.append(f"h is {d.h.label()} (it moves with the estimates), but not as b2 h + (1 - b2) hhat on the "
                          "steps it was handed one")
    if not d.step:
        d.findings.append("no step counter was found (no entry went 1, 2, 3): the adapter counts the steps itself")
    narrow = sorted({s.dtype for s in (d.m, d.h) if s.dtype not in (None, "float64")})
    if narrow:
        d.state_dtype = narrow[0]
        d.findings.append(f"state precision: m ({d.m.key!r}) is {d.m.dtype} and h ({d.h.key!r}) is {d.h.dtype} "
                          "under float64 parameters")
    else:
        d.state_dtype = d.m.dtype
    for slot in d.extra:
        if slot.role == "changing":
            d.findings.append(f"not teacher-forceable: {slot.label()} ({slot.why}); the teacher-forced tier is "
                              "reported as such and the free-running tier decides")


# -- the stage ------------------------------------------------------------------------------------------------

def _api(adapter: ConventionAdapter) -> Discovery:
    """The constructor mapping and the estimate's way in (DoesNotFit where they cannot be had)."""
    d = Discovery(adapter.name)
    cmap = map_constructor(adapter.factory, adapter.extra)
    d.constructor, d.defaults, d.unmapped = dict(cmap.constructor), dict(cmap.defaults), list(cmap.unmapped)
    who = getattr(adapter.factory, "__qualname__", None) or getattr(adapter.factory, "__name__", adapter.name)
    if cmap.required:
        raise DoesNotFit(f"{who}() requires {', '.join(map(repr, cmap.required))}, which the harness has no value "
                         f"for (it sets {', '.join(HARNESS)}); write an adapter for it (below), or pass "
                         "ConventionAdapter(..., extra={...}) with those arguments")
    if cmap.passed_through:
        d.findings.append(f"its constructor takes **kwargs: {', '.join(cmap.passed_through)} passed as "
                          + ", ".join(CONVENTION[n] for n in cmap.passed_through))
    probe = ConventionAdapter(adapter.factory, adapter.name, extra=adapter.extra)
    probe.configure(d)
    try:
        probe.build(_tensors(PROBE_INIT), PROBE_HYPER, F64, "cpu")
    except TypeError as error:
        raise DoesNotFit(f"building {who}(params, {', '.join(f'{k}=...' for k in probe.kwargs)}) raised TypeError: "
                         f"{error}; write an adapter for it (below)") from None
    except Exception as error:
        raise _ProbeFailed(f"building it failed: {type(error).__name__}: {error}") from None
    _estimate_route(probe.opt, d, type(probe.opt).__name__)
    for name in d.unmapped:
        if name == "batch_size":
            d.findings.append("hyperparameter batch_size is not mapped: neither the constructor nor step() takes "
                              "batch_size or bs (right where the batch factor is in the estimate, as in the paper)")
        else:
            d.findings.append(f"hyperparameter {name} is not mapped: the constructor has none of "
                              f"{', '.join(_candidates(name))}; the implementation's own value is used")
    return d


def _candidates(name: str) -> tuple[str, ...]:
    return {"beta1": BETAS + BETA1, "beta2": BETAS + BETA2}.get(name) or NAMES[name]


def _discover_convention(adapter: ConventionAdapter) -> Discovery:
    """Both parts for a ConventionAdapter, without configuring it. A probe that fails for another reason than
    the API gives an unconfigured Discovery saying so (the battery then reports the failure)."""
    start = time.perf_counter()
    d = None
    try:
        d = _api(adapter)
        _find_slots(adapter, d)
        d.configured = True
    except _ProbeFailed as error:
        d = d or Discovery(adapter.name)
        d.findings.append(f"the probe failed ({error}): state names were not discovered; the original "
                          "convention's names are used")
    d.seconds = time.perf_counter() - start
    return d


_CACHE: dict = {}


def _cache_key(adapter: ConventionAdapter):
    try:
        key = (adapter.factory, repr(sorted(adapter.extra.items(), key=lambda kv: kv[0])))
        hash(key)
        return key
    except Exception:
        return None


def cached_discovery(adapter: ConventionAdapter) -> Discovery:
    """:func:`discover`'s result for this factory and extra keywords, probed once per process; a DoesNotFit is
    remembered as an unconfigured Discovery."""
    key = _cache_key(adapter)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    try:
        found = _discover_convention(adapter)
    except DoesNotFit as error:
        found = Discovery(adapter.name, findings=[str(error)])
    if key is not None:
        _CACHE[key] = found
    return found


def discover(adapter: Adapter) -> Discovery:
    """Stage 2. For a ConventionAdapter: probe, configure the adapter to read and write through the slots found,
    and return what was found; raises :class:`DoesNotFit` (with :attr:`DoesNotFit.template`) where its API does not
    fit. For any other adapter: a Discovery saying the adapter declares its API itself."""
    if not isinstance(adapter, ConventionAdapter):
        hook = getattr(adapter, "constructor_defaults", None)
        try:
            defaults = dict(hook() or {}) if callable(hook) else {}
        except Exception:
            defaults = {}
        return Discovery(getattr(adapter, "name", "?"), declared=True, configured=True, defaults=defaults,
                         accepts_any_estimate=getattr(adapter, "accepts_any_estimate", True),
                         estimate="as its adapter declares")
    try:
        found = _discover_convention(adapter)
    except DoesNotFit:
        raise
    except Exception as error:  # discovery must never crash the pipeline
        found = Discovery(adapter.name, findings=[f"discovery failed ({type(error).__name__}: {error}); the "
                                                  "original convention's names are used"])
    key = _cache_key(adapter)
    if key is not None:
        _CACHE[key] = found
    if found.configured:
        adapter.configure(found)
    return found


# -- the adapter to write -------------------------------------------------------------------------------------

def adapter_template(name: str = "MyAdapter", spec: str | None = None) -> str:
    """A ready-to-edit Python module with an :class:`~verification.adapters.base.Adapter` subclass ``name``
    driving the implementation ``spec`` (``module:object``; a placeholder when None)."""
    module, _, obj = (spec or "my_package.my_module:MyOptimizer").partition(":")
    return _TEMPLATE.replace("MyAdapter", name).replace("{MODULE}", module).replace("{OBJECT}", obj or "MyOptimizer")


_TEMPLATE = '''"""Adapter for {MODULE}:{OBJECT}, so `sophia-ref certify THIS_MODULE:MyAdapter` can drive it.

Fill in the TODOs: how to build the optimizer from the harness's hyperparameters, how to hand it a
Hessian-diagonal estimate, and where its state keeps t, m and h. The harness calls build() once per
scenario, then step() per step; between steps it reads parameters() and state(), and in the
teacher-forced tier it writes the reference's values with load() before each step.
"""

from __future__ import annotations

import torch

from verification.adapters.base import Adapter, Hyperparameters, NotTeacherForceable, Refresh, as_float64, materialize


class MyAdapter(Adapter):
    """{OBJECT} of {MODULE}, driven through its own API."""

    name = "{OBJECT}"
    version = "?"
    #: the preset it claims (see sophia_ref.dialects.DIALECTS), or None to be held to the paper
    dialect = None
    #: False if it can only fold squares of a gradient (then step() gets GNB-shaped estimates, with ``ghat``)
    accepts_any_estimate = True
    #: hyperparameters it has built in, e.g. {"eps": 1e-15}: the reference then uses these values too
    fixed = {}
    #: True if build() honours self.groups (one parameter group per tensor with lr / weight_decay overrides)
    supports_groups = False

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        """Create the optimizer on copies of ``params`` (float64 values) in ``dtype`` on ``device``.
        ``hyper`` has lr, beta1, beta2, gamma (rho in the v1 form), eps, weight_decay, hessian_interval and
        batch_size. Raise ValueError for a value the implementation cannot take."""
        from {MODULE} import {OBJECT}  # imported here, so this module imports without it

        self.tensors = [materialize(p, dtype, device).requires_grad_(True) for p in params]
        self.hyper = hyper
        self.opt = {OBJECT}(self.tensors, lr=hyper.lr, betas=(hyper.beta1, hyper.beta2),  # TODO: its own names
                            weight_decay=hyper.weight_decay)

    def step(self, grads, refresh: Refresh | None) -> None:
        """One step with these gradients. On the harness's refresh steps ``refresh`` holds the estimate:
        ``refresh.hhat`` (one tensor per parameter), and for GNB-shaped ones ``refresh.ghat`` with
        ``hhat = refresh.batch * ghat**2``. Hand it over the way the implementation takes it."""
        for p, g in zip(self.tensors, grads):
            p.grad = materialize(g, p.dtype, p.device)
        if refresh is not None:
            estimate = [h.to(device=p.device, dtype=p.dtype) for h, p in zip(refresh.hhat, self.tensors)]
            raise NotImplementedError("TODO: hand `estimate` to the optimizer")  # e.g. self.opt.set_hessian(estimate)
        self.opt.step()

    def parameters(self):
        """The current parameters, as float64 copies."""
        return as_float64(self.tensors)

    def state(self):
        """``(t, m, h)``: completed steps and the paper's m and h per parameter, as float64 tensors (h B-free where
        the implementation multiplies the batch factor in at step time). Before its first step: 0 and zeros."""
        steps, ms, hs = 0, [], []
        for p in self.tensors:
            s = self.opt.state.get(p, {})
            if not s:
                ms.append(torch.zeros(p.shape, dtype=torch.float64))
                hs.append(torch.zeros(p.shape, dtype=torch.float64))
                continue
            steps = int(s["step"])                      # TODO: its step counter
            ms.append(as_float64([s["exp_avg"]])[0])    # TODO: its m
            hs.append(as_float64([s["hessian"]])[0])    # TODO: its h
        return steps, ms, hs

    def load(self, params, step, m, h, *, refreshes=None) -> None:
        """Teacher forcing: overwrite parameters and state so the next step continues from these values,
        each written in the state's own dtype and device. ``refreshes`` (given where this signature takes it)
        is the number of refresh steps among 1..step, for an implementation that counts them. Raise
        NotTeacherForceable(key, why) for state that cannot be written consistently: the teacher-forced tier
        is then reported as such, and the free-running tier still decides."""
        with torch.no_grad():
            for p, value, mi, hi in zip(self.tensors, params, m, h):
                p.copy_(value.to(dtype=p.dtype, device=p.device))
                s = self.opt.state[p]
                like = s.get("exp_avg", p)              # TODO: its m
                s["exp_avg"] = mi.to(device=p.device, dtype=like.dtype).clone()
                s["hessian"] = hi.to(device=p.device, dtype=like.dtype).clone()
                s["step"] = step

    # -- optional ----------------------------------------------------------------------------------------------

    def round_trip(self) -> None:
        """Save the state as the implementation saves it and go on from a reload (state_dict through torch.save);
        raise NotImplementedError where it cannot (the scenario is then skipped)."""
        from verification.adapters.base import reloaded

        self.opt.load_state_dict(reloaded(self.opt.state_dict()))

    def internal_estimate(self, grads, refresh):
        """For an implementation that makes its own estimate (e.g. p.grad**2 on every step): the estimate it folds
        into h at this step, as float64 tensors, so the reference folds the same; None when it takes the
        harness's estimate."""
        return None

    def constructor_defaults(self):
        """The defaults its constructor declares, in the harness's names (lr, beta1, beta2, gamma, eps,
        weight_decay, hessian_interval, batch_size), or None."""
        return None
'''
