"""How far from its best learning rate each optimizer still trains, and how much warm-up it needs.

The task is tinylm's (the same Markov language, held-out set, GPT, optimizers and their settings:
Sophia-G with gamma = 0.05 and B = the number of predictions); the model and the budget are smaller
so that the grid fits (:data:`DEFAULT`). For each optimizer (Sophia-G, AdamW, Lion):

1. *its best*: over the learning rates ``nominal * 2^j`` at the reference warm-up, the lr with the
   lowest mean final held-out excess over seeds. The row is run for the multipliers 1/4x..8x of the
   nominal lr first and shifted (more lrs of the same lattice) until it holds 1/4x..8x of its best,
   so the best is measured, not assumed;
2. *the grid*: the multipliers 1/4x, 1/2x, 1x, 2x, 4x, 8x of that best, by every warm-up length
   (linear warm-up over that many steps, then the cosine decay to lr/10; 0: none), with ``seeds``
   seeds per cell.

Per cell: the mean final excess over seeds and the fraction of diverged runs (a run diverges when a
loss, parameter or estimate becomes non-finite, or when it ends no better than it started).
Read off per optimizer:

- *usable range* at a warm-up: the widest contiguous run of multipliers around that row's best cell
  whose cells have no diverged seed and a mean final excess within ``within`` = 0.05 nats of the
  optimizer's best cell over the whole grid; reported as the ratio of its largest to smallest lr
  (1x: only one lr; 32x: the whole grid);
- *diverges at*: the smallest multiplier >= 1 at which at least half the seeds diverge (none up to 8x:
  "> 8x");
- *warm-up needed*: the shortest warm-up whose best cell is within 0.05 nats of the optimizer's best.

Verdict on Wen et al.'s findings (Sophia-G diverges at 2-4x its best lr, needs a longer warm-up than
AdamW; so its usable range is narrower): held when at the reference warm-up Sophia-G diverges at 2x
or 4x, its usable range there is narrower than AdamW's, and it needs a longer warm-up than AdamW;
did not hold when any of the three is contradicted.

Workers: the runs are independent and go to :mod:`theory.pool`'s worker processes. Times on this
machine (2 cores): quick about 30 s; the default about 8 minutes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import tinylm
from .base import Result
from .pool import run_jobs, workers
from .winrate import win_rate_monitor

NAME = "stability"
CLAIM = ("Sophia-G diverges at 2-4x its best learning rate and needs a longer warm-up than AdamW, so its usable "
         "learning-rate range is narrower (Wen et al. 2025, GPT-2-style models of 130M-520M parameters).")

KS = (-2, -1, 0, 1, 2, 3)  # multipliers 2^k of the best: 1/4x .. 8x


@dataclass
class Config:
    task: tinylm.Config = field(default_factory=lambda: replace(tinylm.DEFAULT, d=48, layers=2, steps=600,
                                                                 eval_every=50, targets=()))
    nominal: dict = field(default_factory=lambda: {"sophia": 2e-3, "adamw": 4e-3, "lion": 5e-4})
    warmups: tuple = (0, 30, 150)
    reference_warmup: int = 30
    within: float = 0.05
    max_shift: int = 3


DEFAULT = Config()
QUICK = Config(task=replace(tinylm.QUICK, d=32, layers=1, heads=2, context=16, steps=120, eval_every=20,
                            eval_sequences=64, targets=()),
               nominal={"sophia": 3e-3, "adamw": 6e-3, "lion": 1e-3}, warmups=(0, 30), reference_warmup=0,
               max_shift=1)


def _label(k: int) -> str:
    return f"{2 ** k:g}x" if k >= 0 else f"1/{2 ** -k}x"


def _mean_final(runs: list[dict]) -> float:
    return math.inf if any(r["diverged"] for r in runs) else float(np.mean([r["final_excess"] for r in runs]))


class _Grid:
    """Runs keyed by (optimizer, lattice index j, warm-up): lr = nominal * 2^j."""

    def __init__(self, cfg: Config, seeds: int, say):
        self.cfg, self.seeds, self.say, self.runs = cfg, seeds, say, {}

    def lr(self, kind: str, j: int) -> float:
        return self.cfg.nominal[kind] * 2.0 ** j

    def ensure(self, cells: list[tuple[str, int, int]]) -> None:
        todo = [c for c in dict.fromkeys(cells) if c not in self.runs]
        jobs = [(tinylm.train_one, dict(kind=k, lr=self.lr(k, j), seed=s, cfg=replace(self.cfg.task, warmup=w)))
                for k, j, w in todo for s in range(self.seeds)]
        start = sum(len(v) for v in self.runs.values())

        def done(i, out):
            self.say(f"run {start + i + 1}/{start + len(jobs)}: {out['optimizer']} lr={out['lr']:.3g} warm-up "
                     f"{out['warmup']} seed {out['seed']}: final excess {out['final_excess']:.4f}"
                     f"{' (diverged)' if out['diverged'] else ''}, {out['wall_s']:.1f}s")

        results = run_jobs(jobs, done)
        for n, cell in enumerate(todo):
            self.runs[cell] = results[n * self.seeds:(n + 1) * self.seeds]

    def score(self, kind: str, j: int, warmup: int) -> float:
        return _mean_final(self.runs[(kind, j, warmup)])


def usable_range(scores: dict[int, float], diverged: dict[int, float], limit: float) -> tuple[int, int] | None:
    """(k_lo, k_hi): the widest contiguous run of multipliers around the row's best whose cells have no diverged
    seed and a score <= limit; None when even the row's best is above the limit."""
    ok = {k: diverged[k] == 0 and scores[k] <= limit for k in scores}
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None
    best = min(finite, key=finite.get)
    if not ok[best]:
        return None
    lo = hi = best
    while lo - 1 in ok and ok[lo - 1]:
        lo -= 1
    while hi + 1 in ok and ok[hi + 1]:
        hi += 1
    return lo, hi


def diverges_at(diverged: dict[int, float]) -> int | None:
    """The smallest multiplier exponent k >= 0 at which at least half the seeds diverge (None: none)."""
    return next((k for k in sorted(diverged) if k >= 0 and diverged[k] >= 0.5), None)


def experiment(cfg: Config, seeds: int = 2, progress=None) -> Result:
    start = time.monotonic()
    say = progress or (lambda message: None)
    kinds = list(cfg.nominal)
    grid = _Grid(cfg, seeds, say)
    ref = cfg.reference_warmup
    say(f"{len(kinds)} optimizers x {len(KS)} lrs x {len(cfg.warmups)} warm-ups x {seeds} seeds, "
        f"{cfg.task.steps} steps each, {workers()} worker process(es)")
    # 1. each optimizer's best at the reference warm-up, the row shifted until it holds 1/4x..8x of it
    best_j = {k: 0 for k in kinds}
    for _ in range(cfg.max_shift + 1):
        grid.ensure([(k, best_j[k] + d, ref) for k in kinds for d in KS])
        moved = False
        for k in kinds:
            row = {j: grid.score(k, j, w) for (kk, j, w) in grid.runs if kk == k and w == ref}
            finite = {j: v for j, v in row.items() if math.isfinite(v)}
            new = min(finite, key=finite.get) if finite else best_j[k]
            moved |= new != best_j[k]
            best_j[k] = new
        if not moved:
            break
    # 2. the grid around each best, at every warm-up
    grid.ensure([(k, best_j[k] + d, w) for k in kinds for d in KS for w in cfg.warmups])

    rows, analysis = [], {}
    for k in kinds:
        cells = {(d, w): grid.runs[(k, best_j[k] + d, w)] for d in KS for w in cfg.warmups}
        scores = {c: _mean_final(v) for c, v in cells.items()}
        div = {c: float(np.mean([r["diverged"] for r in v])) for c, v in cells.items()}
        finite = [v for v in scores.values() if math.isfinite(v)]
        overall = min(finite) if finite else math.inf
        per_warmup = {}
        for w in cfg.warmups:
            row_scores = {d: scores[(d, w)] for d in KS}
            row_div = {d: div[(d, w)] for d in KS}
            rng = usable_range(row_scores, row_div, overall + cfg.within)
            dv = diverges_at(row_div)
            row_finite = [v for v in row_scores.values() if math.isfinite(v)]
            per_warmup[w] = dict(range=None if rng is None else [rng[0], rng[1]],
                                 range_factor=None if rng is None else 2.0 ** (rng[1] - rng[0]),
                                 diverges_at=None if dv is None else 2.0 ** dv,
                                 best=min(row_finite) if row_finite else None)
            rows.append([k, w] + [f"{scores[(d, w)]:.4f}" + (f" ({div[(d, w)]:.0%} div)" if div[(d, w)] else "")
                                  if math.isfinite(scores[(d, w)]) else f"diverged ({div[(d, w)]:.0%})" for d in KS]
                        + ["none" if rng is None else f"{2.0 ** (rng[1] - rng[0]):g}x ({_label(rng[0])}-{_label(rng[1])})",
                           "> 8x" if dv is None else _label(dv)])
        need = next((w for w in sorted(cfg.warmups) if per_warmup[w]["best"] is not None
                     and per_warmup[w]["best"] <= overall + cfg.within), None)
        analysis[k] = dict(best_lr=grid.lr(k, best_j[k]), best_excess=overall, per_warmup=per_warmup,
                           warmup_needed=need,
                           cells={f"{d},{w}": dict(lr=grid.lr(k, best_j[k] + d), multiplier=2.0 ** d, warmup=w,
                                                   mean_final=None if not math.isfinite(scores[(d, w)]) else
                                                   scores[(d, w)], diverged=div[(d, w)]) for d, w in cells})
    columns = ["optimizer", "warm-up"] + [_label(d) for d in KS] + ["usable range", "diverges at"]

    claim_held, parts = None, []
    if "sophia" in analysis and "adamw" in analysis:
        s, a = analysis["sophia"], analysis["adamw"]
        s_div, s_rng, a_rng = (s["per_warmup"][ref]["diverges_at"], s["per_warmup"][ref]["range_factor"],
                               a["per_warmup"][ref]["range_factor"])
        diverges_early = s_div in (2.0, 4.0)
        narrower = None if s_rng is None or a_rng is None else s_rng < a_rng
        longer = None if s["warmup_needed"] is None or a["warmup_needed"] is None else \
            s["warmup_needed"] > a["warmup_needed"]
        findings = [diverges_early, narrower, longer]
        if all(f is True for f in findings):
            claim_held = True
        elif any(f is False for f in findings):
            claim_held = False
        wider = "narrower than" if narrower else ("as wide as" if s_rng == a_rng else "wider than")
        parts.append(f"at warm-up {ref}, Sophia-G's usable lr range (within {cfg.within} nats of its best, no "
                     f"divergence) is {_fmt(s_rng)}, {wider} AdamW's {_fmt(a_rng)}; Sophia-G diverges at "
                     f"{_fmt(s_div, '> 8x')} its best lr (AdamW {_fmt(a['per_warmup'][ref]['diverges_at'], '> 8x')}); "
                     f"warm-up needed: Sophia-G {_fmt_w(s['warmup_needed'])}, AdamW {_fmt_w(a['warmup_needed'])}")
        if "lion" in analysis:
            lion = analysis["lion"]
            parts.append(f"Lion: range {_fmt(lion['per_warmup'][ref]['range_factor'])}, diverges at "
                         f"{_fmt(lion['per_warmup'][ref]['diverges_at'], '> 8x')}, warm-up needed "
                         f"{_fmt_w(lion['warmup_needed'])}")
    sophia_runs = [r for (k, _, _), v in grid.runs.items() if k == "sophia" for r in v]
    monitor = win_rate_monitor(sophia_runs)
    parts.append(monitor["summary"])
    summary = (f"tinylm task, GPT {cfg.task.d}-wide x {cfg.task.layers} layers, {cfg.task.steps} steps, {seeds} seeds "
               f"per cell, warm-ups {', '.join(map(str, cfg.warmups))} steps: " + "; ".join(parts) + ".")
    say(f"done in {time.monotonic() - start:.0f}s")
    lang, _ = tinylm.task(cfg.task)
    data = dict(config={**asdict(cfg), "task": {**asdict(cfg.task), "targets": []}}, seeds=seeds, multipliers=list(KS),
                analysis=analysis, win_rate_monitor=monitor, entropy_rate=lang.entropy_rate,
                wall_s=time.monotonic() - start, workers=workers(),
                runs=[tinylm._jsonable(r) for v in grid.runs.values() for r in v])

    def draw(path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm

        fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.8), squeeze=False)
        finite = [v for k in kinds for c in analysis[k]["cells"].values() if (v := c["mean_final"]) is not None]
        norm = LogNorm(vmin=max(min(finite), 1e-4), vmax=max(finite)) if finite else None
        for ax, k in zip(axes[0], kinds):
            image = np.full((len(cfg.warmups), len(KS)), np.nan)
            for i, w in enumerate(cfg.warmups):
                for j, d in enumerate(KS):
                    cell = analysis[k]["cells"][f"{d},{w}"]
                    if cell["mean_final"] is not None:
                        image[i, j] = cell["mean_final"]
                    text = "div" if cell["mean_final"] is None else f"{cell['mean_final']:.3f}"
                    if cell["diverged"] and cell["mean_final"] is None:
                        text = f"div {cell['diverged']:.0%}"
                    dark = cell["mean_final"] is not None and norm is not None and norm(cell["mean_final"]) > 0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            shown = ax.imshow(np.ma.masked_invalid(image), cmap="viridis_r", norm=norm, aspect="auto")
            ax.set_xticks(range(len(KS)), [_label(d) for d in KS])
            ax.set_yticks(range(len(cfg.warmups)), [str(w) for w in cfg.warmups])
            ax.set(xlabel=f"lr / best lr (best {analysis[k]['best_lr']:.3g})", ylabel="warm-up steps", title=k)
        fig.colorbar(shown, ax=axes[0].tolist(), label="mean final held-out excess (nats)")
        fig.suptitle(f"final held-out excess by lr and warm-up ({seeds} seeds per cell; blank: a seed diverged)")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)

    return Result(NAME, CLAIM, columns, rows, summary, claim_held, data, draw)


def _fmt(factor: float | None, none: str = "none") -> str:
    return none if factor is None else f"{factor:g}x"


def _fmt_w(warmup: int | None) -> str:
    return "none of the tried" if warmup is None else f"{warmup} steps"


def run(quick: bool = False, seeds: int | None = None, progress=None) -> Result:
    """Default: d=48, 2 layers, 600 steps, 3 optimizers x 6 lrs x 3 warm-ups x 2 seeds. Quick: d=32, 1 layer,
    120 steps, 2 warm-ups, 1 seed."""
    return experiment(QUICK if quick else DEFAULT, seeds=(1 if quick else 2) if seeds is None else seeds,
                      progress=progress)
