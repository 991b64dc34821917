"""Named dialects of Sophia: each a set of :class:`~sophia_ref.rule.Knobs` values and defaults.

A dialect models what one implementation computes, as read from its installed
source (SPEC section 5); the conformance tool checks each claim by running the
implementation. The rule itself lives once, in :mod:`sophia_ref.rule`.

The v1 ("rho form") and v4 ("gamma form") statements of the paper are the same
update under a change of hyperparameters (SPEC section 1)::

    eta clip(m / max(h, eps), rho) = (eta rho) clip(m / max(rho h, rho eps), 1)

so v1 ``(eta, rho, eps, lam)`` is v4 ``(eta rho, gamma = rho, rho eps, lam / rho)``:
:func:`v1_to_v4` and :func:`v4_to_v1` convert.
"""

from __future__ import annotations

import textwrap
import unicodedata
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from .rule import Knobs


@dataclass(frozen=True)
class Dialect:
    """A named preset: the knobs of the rule, default hyperparameters and the estimator it pairs with.

    ``defaults`` holds the implementation's own defaults for the keywords of
    :class:`~sophia_ref.SophiaRef` (``betas``, ``gamma``, ``eps``,
    ``weight_decay``, ``hessian_interval``, ``batch_size``); in the rho form,
    ``gamma`` is rho.
    """

    name: str
    knobs: Knobs
    defaults: Mapping[str, object]
    estimator: str
    summary: str
    departures: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """What the preset models and each place it departs from ``paper``, as text."""
        lines = [f"{self.name}: {self.summary}", f"Estimator: {self.estimator}."]
        lines += [f"- {d}" for d in self.departures] or ["- none: this is the paper"]
        return "\n".join(lines)


def _preset(name, knobs, defaults, estimator, summary, departures=()) -> Dialect:
    preset = Dialect(name, knobs, MappingProxyType(dict(defaults)), estimator, summary, tuple(departures))
    object.__setattr__(preset, "__doc__", preset.describe())  # help(OFFICIAL) shows the preset's own docstring
    return preset


PAPER = _preset(
    "paper", Knobs(),
    dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10, batch_size=1.0),
    "exact diagonal, Hutchinson (Sophia-H, gamma = 0.01) or GNB (Sophia-G, gamma = 0.05)",
    "Algorithm 3 of arXiv 2305.14342 v4 (ICLR 2024), as fixed by SPEC section 1.",
)

PAPER_V1 = _preset(
    "paper_v1", Knobs(form="rho"),
    dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10, batch_size=1.0),
    "exact diagonal, Hutchinson or GNB",
    "The first arXiv version's rho form: eta clip(m / max(h, eps), rho); gamma holds rho.",
    ["rho form: the same update as `paper` under v1_to_v4 (eta' = eta rho, eps' = rho eps, lambda' = lambda / rho)"],
)

OFFICIAL = _preset(
    "official",
    Knobs(eps_placement="add", clip_form="sign_min", refresh="caller", batch_factor="step"),
    dict(betas=(0.965, 0.99), gamma=0.04, eps=1e-15, weight_decay=0.1, hessian_interval=10, batch_size=5120.0),
    "GNB computed by the caller: update_hessian() folds p.grad**2 of a sampled-label loss into h",
    "The official SophiaG (Liuhong99/Sophia, packaged as sophia-opt 0.2.2): "
    "sign(m) min(|m| / (rho bs h + 1e-15), 1); `rho` is gamma.",
    [
        "eps = 1e-15 added to the denominator instead of a floor inside max",
        "sign(m) min(|m|/d, 1) instead of clip: where rho bs h + 1e-15 < 0 it is an ascent step of unbounded size",
        "the batch factor B is the `bs` argument of step() (default 5120), multiplying h at step time; "
        "the estimate folded into h is ghat**2 without B (gnb() / B)",
        "the Hessian refresh is the caller's: update_hessian() after step t is the refresh of step t + 1 "
        "in this rule, so the recipe (every k steps, from iteration k - 1) refreshes on t = k + 1, 2k + 1, ... "
        "and never on t = 1",
    ],
)

OPTAX = _preset(
    "optax", Knobs(bias_correction=True, refresh="next_step"),
    dict(betas=(0.965, 0.99), gamma=0.01, eps=1e-8, weight_decay=1e-4, hessian_interval=10, batch_size=1.0),
    "Hutchinson with Rademacher probes",
    "optax.contrib.sophia 0.2.8 (JAX): clip(m_hat / max(gamma h, eps), 1) with bias-corrected m.",
    [
        "eps = 1e-8",
        "bias correction of m: m / (1 - b1^t)",
        "refreshes when count mod k == 0 (t = 1, k + 1, ...), but the step uses h from before the refresh",
    ],
)

PYTORCH_OPTIMIZER = _preset(
    "pytorch_optimizer", Knobs(form="rho"),
    dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.0, hessian_interval=10, batch_size=1.0),
    "Hutchinson with Gaussian probes (its own, or supplied through step(hessian=...))",
    "pytorch-optimizer 4.1.0 SophiaH: clip(m / max(h, eps), p), the v1 rho form; `p` is gamma.",
    ["rho form (v1): clip threshold p, eps a floor on h itself"],
)

SOPHIA_OPTIMIZER = _preset(
    "sophia_optimizer",
    Knobs(eps_placement="add", clip_form="sign_min", refresh="immediate", batch_factor="step", momentum_updates=2),
    dict(betas=(0.965, 0.99), gamma=0.04, eps=1e-15, weight_decay=0.1, hessian_interval=1, batch_size=5120.0),
    "none: the squared true-label gradient p.grad**2, folded into h at the start of every step",
    "sophia-optimizer 0.2.5 (third party): the official rule with its own bookkeeping.",
    [
        "everything `official` departs in (added eps = 1e-15, sign(m) min(|m|/d, 1), bs at step time)",
        "h absorbs p.grad**2 on every step (k = 1), before the update uses it",
        "m absorbs the gradient twice per step",
    ],
)

LEVANTER = _preset(
    "levanter", Knobs(bias_correction=True, refresh="caller"),
    dict(betas=(0.96, 0.99), gamma=0.01, eps=1e-12, weight_decay=0.1, hessian_interval=10, batch_size=1.0),
    "Hutchinson with Gaussian probes (one probe, jax.random.normal), at the pre-step parameters of step t = k, 2k, ...",
    "levanter Sophia-H (JAX; stanford-crfm/levanter src/levanter/optim/sophia.py at HEAD 9263f81e, "
    "2025-09-26, the file as of 9fde0781): clip(m_hat / max(gamma h, eps), c) with m bias-corrected and h not.",
    [
        "bias correction of m: m / (1 - b1^t); h is not corrected",
        "weight decay is added after the clip, u + lambda theta, then the sum times -lr: the paper's decay of "
        "the pre-step theta (never clipped), up to rounding (-lr (u + lambda theta) is one product, not two)",
        "h refreshes after step t when t mod k == 0 (t = k, 2k, ...), from an estimate at step t's pre-step "
        "parameters, and is first used by step t + 1: in this rule the caller refresh of steps k + 1, 2k + 1, ... "
        "and never of t = 1 (the first k steps divide by max(0, eps) = eps: sign steps). A hessian_estimator "
        "given to SophiaRef runs at theta_{t+1}, one step after levanter's point; pass hessian_estimate= computed "
        "at the previous step's parameters to reproduce levanter exactly",
        "defaults are those of its registered optimizer `sophia-h` (SophiaHConfig: beta1 0.96, eps 1e-12, "
        "weight_decay 0.1, update_interval 10); the functional sophia_h() has b1 0.965, eps 1e-8, "
        "weight_decay 0, lr 0.85e-3",
        "clip_threshold c is a setting (default 1.0, the paper's clip at 1); its Sophia-G estimator raises "
        "NotImplementedError",
    ],
)

FASTXTEND = _preset(
    "fastxtend",
    Knobs(eps_placement="add", clip_form="sign_min", refresh="never", batch_factor="step"),
    dict(betas=(0.965, 0.99), gamma=0.4, eps=1e-15, weight_decay=0.01, hessian_interval=10, batch_size=1.0),
    "GNB by sampled labels in its SophiaCallback, which never runs: h stays 0",
    "fastxtend Sophia (warner-benjamin/fastxtend fastxtend/optimizer/sophia.py at HEAD b8c4e87c, v0.1.7; "
    "the file as of 8507037b): the official ratio sign(m) min(|m| / (rho bs h + eps), 1); `rho` is gamma.",
    [
        "everything `official` departs in: eps = 1e-15 added to the denominator, sign(m) min(|m|/d, 1), "
        "bs multiplying h at step time (it passes find_bs(yb), the number of sequences; moot while h is 0)",
        "h never refreshes: SophiaCallback refreshes when step % k == k, which is never true, so h stays 0, "
        "d = eps and every step with |m| >= eps is a sign step eta sign(m)",
        "weight decay p *= 1 - lr wd before the step: the paper's decay of the pre-step theta, up to rounding",
        "defaults rho = 0.4, wd = 0.01, betas (0.965, 0.99); hessian_update = 10 in the callback",
    ],
)

DIALECTS: Mapping[str, Dialect] = MappingProxyType(
    {d.name: d for d in (PAPER, PAPER_V1, OFFICIAL, OPTAX, PYTORCH_OPTIMIZER, SOPHIA_OPTIMIZER, LEVANTER, FASTXTEND)}
)


def get_dialect(dialect: str | Dialect) -> Dialect:
    """The preset named ``dialect`` (a :class:`Dialect` is returned as is)."""
    if isinstance(dialect, Dialect):
        return dialect
    if dialect not in DIALECTS:
        raise ValueError(f"dialect={dialect!r} is not valid; accepted values: {', '.join(map(repr, DIALECTS))}")
    return DIALECTS[dialect]


def v1_to_v4(lr: float, rho: float, eps: float, weight_decay: float = 0.0) -> dict[str, float]:
    """v1 ``(eta, rho, eps, lam)`` -> v4 ``(eta rho, gamma = rho, rho eps, lam / rho)``."""
    if not rho > 0:
        raise ValueError(f"rho={rho!r} is not valid; accepted range: (0, inf)")
    return dict(lr=lr * rho, gamma=rho, eps=rho * eps, weight_decay=weight_decay / rho)


def v4_to_v1(lr: float, gamma: float, eps: float, weight_decay: float = 0.0) -> dict[str, float]:
    """v4 ``(eta', gamma, eps', lam')`` -> v1 ``(eta' / gamma, rho = gamma, eps' / gamma, lam' gamma)``."""
    if not gamma > 0:
        raise ValueError(f"gamma={gamma!r} is not valid; accepted range: (0, inf)")
    return dict(lr=lr / gamma, rho=gamma, eps=eps / gamma, weight_decay=weight_decay * gamma)


COLUMNS = ("dialect", "update", "eps", "bias correction", "refresh", "batch factor B", "m updates / step",
           "weight decay", "estimator")

_REFRESH = {"immediate": "(t-1) mod k = 0, used at once", "next_step": "(t-1) mod k = 0, used from t+1",
            "caller": "when the caller gives one, used at once", "never": "never (h stays 0)"}
_CLAMP = {"none": "", "zero": "; folds max(estimate, 0)", "abs": "; folds |estimate|"}
_H_BIAS = {"none": "", "steps": "h: 1 - β2^t", "refreshes": "h: 1 - β2^n (n refreshes)"}
_DECAY = {"before": "on θ_t", "after": "on θ_t - ηu (after the step)", "coupled": "coupled: g + λθ"}


def _update_formula(k: Knobs) -> str:
    """The step direction u as a formula: m̂ / ĥ where m / h are bias-corrected, B where it multiplies at step time."""
    m = "m̂" if k.bias_correction else "m"
    h = "ĥ" if k.h_bias_correction != "none" else "h"
    ratio = ("" if k.form == "rho" else "γ") + ("B" if k.batch_factor == "step" else "") + h
    denominator = f"max({ratio}, ε)" if k.eps_placement == "max" else f"{ratio} + ε"
    c = "ρ" if k.form == "rho" else "1"
    if k.clip_form == "clip":
        return f"clip({m}/{denominator}, {c})"
    return f"sign({m})·min(|{m}|/({denominator}), {c})"


def _cells(d: Dialect) -> list[str]:
    """One preset's row, plain text: every knob, the non-paper ones spelled out."""
    k = d.knobs
    corrections = [part for part in ("m: 1 - β1^t" if k.bias_correction else "", _H_BIAS[k.h_bias_correction])
                   if part]
    batch = ("in the estimate" if k.batch_factor == "estimate"
             else f"at step time (default {d.defaults['batch_size']:g})")
    decay = f"{_DECAY[k.weight_decay_form]}, λ = {d.defaults['weight_decay']:g}"
    return [d.name, _update_formula(k), f"{d.defaults['eps']:g}", "; ".join(corrections) or "no",
            _REFRESH[k.refresh] + _CLAMP[k.estimate_clamp], batch, str(k.momentum_updates), decay, d.estimator]


def table(presets: Iterable[Dialect] | None = None) -> str:
    """The presets (all of :data:`DIALECTS` by default) as a Markdown table, one row per dialect
    (``sophia-ref dialects --markdown`` prints it)."""
    escape = lambda cell: cell.replace("|", "\\|")
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for d in DIALECTS.values() if presets is None else presets:
        cells = [escape(c) for c in _cells(d)]
        cells[0], cells[1] = f"`{cells[0]}`", f"`{cells[1]}`"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def terminal_table(presets: Iterable[Dialect] | None = None, width: int = 26) -> str:
    """The presets (all of :data:`DIALECTS` by default) as an aligned plain-text table (``sophia-ref dialects`` prints it): columns two spaces
    apart; a cell of prose longer than ``width`` characters wraps onto continuation lines (names,
    formulas and numbers never wrap)."""
    prose = {COLUMNS.index(c) for c in ("bias correction", "refresh", "batch factor B", "weight decay", "estimator")}
    rows = [list(COLUMNS)] + [_cells(d) for d in (DIALECTS.values() if presets is None else presets)]
    wrapped = [[(textwrap.wrap(cell, width) or [""]) if i in prose else [cell] for i, cell in enumerate(row)]
               for row in rows]
    widths = [max(_display_width(line) for row in wrapped for line in row[i]) for i in range(len(COLUMNS))]
    out = []
    for r, row in enumerate(wrapped):
        for n in range(max(len(cell) for cell in row)):
            parts = [_pad(cell[n] if n < len(cell) else "", w) for cell, w in zip(row, widths)]
            out.append("  ".join(parts).rstrip())
        if r == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _display_width(text: str) -> int:
    """Terminal columns of text: combining marks (the hat of m̂) take none."""
    return sum(0 if unicodedata.combining(ch) else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _display_width(text))
