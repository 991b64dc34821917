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

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

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

DIALECTS: Mapping[str, Dialect] = MappingProxyType(
    {d.name: d for d in (PAPER, PAPER_V1, OFFICIAL, OPTAX, PYTORCH_OPTIMIZER, SOPHIA_OPTIMIZER)}
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


def table() -> str:
    """The presets as a Markdown table, one row per dialect (``sophia-ref dialects`` prints it)."""
    rows = [
        "| dialect | update | eps | bias correction | refresh | batch factor B | m updates / step | estimator |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in DIALECTS.values():
        k, eps = d.knobs, d.defaults["eps"]
        ratio = "h" if k.form == "rho" else "γh"
        if k.batch_factor == "step":
            ratio = ratio.replace("h", "Bh")
        denominator = f"max({ratio}, ε)" if k.eps_placement == "max" else f"{ratio} + ε"
        m = "m̂" if k.bias_correction else "m"
        c = "ρ" if k.form == "rho" else "1"
        update = (f"clip({m}/{denominator}, {c})" if k.clip_form == "clip"
                  else f"sign({m})·min(\\|{m}\\|/({denominator}), {c})")
        refresh = {"immediate": "(t-1) mod k = 0, used at once", "next_step": "(t-1) mod k = 0, used from t+1",
                   "caller": "when the caller gives one, used at once"}[k.refresh]
        batch = "in the estimate" if k.batch_factor == "estimate" else f"at step time (default {d.defaults['batch_size']:g})"
        rows.append(f"| `{d.name}` | `{update}` | {eps:g} | {'yes' if k.bias_correction else 'no'} | {refresh} "
                    f"| {batch} | {k.momentum_updates} | {d.estimator} |")
    return "\n".join(rows)
