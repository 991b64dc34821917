"""What a wrong batch factor B does to Sophia-G: the same run with B = predictions, sequences, or 1.

Sophia-G's estimate is ``hhat = B ghat^2`` (paper Algorithm 2), ``ghat`` the gradient of the mean loss
over B predictions with sampled labels, so ``gamma B ghat^2`` is the threshold the clip compares
``|m|`` against. The official code takes B as its ``bs`` argument, which must count predictions
(tokens); third-party benchmarks passed the number of sequences, or a fixed figure. Passing B' instead
of B scales the estimate by B'/B, which is the same as running with

    gamma_eff = gamma B' / B

(the update ``clip(m / max(gamma hhat, eps), 1)`` sees gamma and B only through their product).

The task and model are tinylm's (:mod:`theory.tinylm`: the Markov language, Sophia-G with gamma = 0.05,
GNB on half the batch every 10 steps), smaller and shorter (:data:`DEFAULT`). Three variants, each on
the same lr grid and seeds: B = the GNB sub-batch's predictions (sequences x tokens per sequence: the
correct one), B = its sequences, and B = 1. Reported per variant: gamma_eff, the win rate after
warm-up, and the final held-out excess, both at the correct variant's best lr (what a user who keeps
the recipe but passes the wrong B gets) and at the variant's own best lr (what retuning the lr buys
back). No verdict: the experiment measures.

Times on this machine (2 cores): quick about 40 s; the default about 3 minutes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import tinylm
from .base import Result
from .pool import workers

NAME = "batch_factor"
CLAIM = ("Sophia-G's batch factor B must be the number of predictions per estimate; passing the number of "
         "sequences, or 1, silently divides the effective gamma (official code, `bs` argument).")

VARIANTS = ("predictions", "sequences", "one")


@dataclass
class Config:
    task: tinylm.Config = field(default_factory=lambda: replace(tinylm.DEFAULT, d=48, layers=2, steps=800,
                                                                 eval_every=50, targets=(),
                                                                 lrs={"sophia": [1e-3, 2e-3, 4e-3]}))


DEFAULT = Config()
QUICK = Config(task=replace(tinylm.QUICK, d=32, layers=1, heads=2, context=16, steps=120, eval_every=20,
                            eval_sequences=64, targets=(), lrs={"sophia": [3e-3, 6e-3, 1.2e-2]}, extend=1))


def b_counts(cfg: tinylm.Config) -> dict[str, int]:
    """B under each variant for the GNB sub-batch of ``cfg``: sequences x tokens, sequences, 1."""
    sequences = max(1, round(cfg.batch * cfg.gnb_fraction))
    return {"predictions": sequences * cfg.context, "sequences": sequences, "one": 1}


def experiment(cfg: Config, seeds: int = 3, progress=None) -> Result:
    start = time.monotonic()
    say = progress or (lambda message: None)
    task = cfg.task
    counts = b_counts(task)
    correct = counts["predictions"]
    say(f"B: {counts}; {len(VARIANTS)} variants x lr grid x {seeds} seeds, {task.steps} steps, "
        f"{workers()} worker process(es)")
    results = {}
    for variant in VARIANTS:
        scale = counts[variant] / correct
        runs, best, edge = tinylm.sweep(task, ["sophia"], seeds, lambda m, v=variant: say(f"B = {v}: {m}"),
                                        b_scale=scale)
        results[variant] = dict(runs=runs, best=best["sophia"], edge=edge["sophia"], b=counts[variant],
                                gamma_eff=task.gamma * scale)
    recipe_lr = results["predictions"]["best"]

    def at(variant, lr):
        runs = [r for r in results[variant]["runs"] if r["lr"] == lr]
        if not runs:
            return None
        finals = [math.inf if r["diverged"] else r["final_excess"] for r in runs]
        wins = [r["win_rate_mean"] for r in runs if r["win_rate_mean"] is not None]
        return dict(lr=lr, final=float(np.mean(finals)), final_sd=float(np.std(finals, ddof=1)) if len(finals) > 1
                    else float("nan"), win=float(np.mean(wins)) if wins else None,
                    diverged=sum(r["diverged"] for r in runs))

    rows, table = [], {}
    for variant in VARIANTS:
        r = results[variant]
        same, own = at(variant, recipe_lr), at(variant, r["best"])
        table[variant] = dict(b=r["b"], gamma_eff=r["gamma_eff"], at_recipe_lr=same, at_own_best=own,
                              own_best_at_edge=r["edge"])
        rows.append([variant, r["b"], r["gamma_eff"], recipe_lr, same["final"], same["win"],
                     r["best"], own["final"], own["win"], "yes" if r["edge"] else ""])
    columns = ["B counts", "B", "effective gamma", "recipe lr", "final excess", "win rate",
               "own best lr", "final excess (own lr)", "win rate (own lr)", "own best at grid edge"]

    ok, seq, one = (table[v]["at_recipe_lr"] for v in VARIANTS)
    summary = (f"tinylm task, GNB on {counts['sequences']} sequences of {task.context} tokens (B = {correct} "
               f"predictions), gamma = {task.gamma:g}, {task.steps} steps, {seeds} seeds: a user who passes the number "
               f"of sequences as B runs with gamma_eff = {table['sequences']['gamma_eff']:.3g} instead of "
               f"{task.gamma:g}: a win rate of {_w(seq['win'])} instead of {_w(ok['win'])} (B = 1: "
               f"{_w(one['win'])}, gamma_eff {table['one']['gamma_eff']:.2g}; a win rate near 0 is sign momentum); at the "
               f"recipe's lr {recipe_lr:g} the final excess is {seq['final']:.4f} nats (B = 1: {one['final']:.4f}) "
               f"against {ok['final']:.4f} with the correct B, and at its own best lr "
               f"{table['sequences']['at_own_best']['final']:.4f} (B = 1: {table['one']['at_own_best']['final']:.4f}).")
    say(f"done in {time.monotonic() - start:.0f}s")
    data = dict(config={**asdict(cfg), "task": {**asdict(task), "targets": []}}, seeds=seeds, b=counts,
                table=table, recipe_lr=recipe_lr, wall_s=time.monotonic() - start, workers=workers(),
                runs={v: [tinylm._jsonable(r) for r in results[v]["runs"]] for v in VARIANTS})

    def draw(path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colors = dict(predictions="tab:red", sequences="tab:purple", one="tab:gray")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
        for variant in VARIANTS:
            for r in results[variant]["runs"]:
                if r["lr"] != recipe_lr:
                    continue
                label = (f"B = {table[variant]['b']} ({variant}), gamma_eff {table[variant]['gamma_eff']:.2g}"
                         if r["seed"] == 0 else None)
                ax1.semilogy(r["steps"], np.maximum(r["excess"], 1e-6), color=colors[variant], alpha=0.8, label=label)
                ax2.plot(r["steps"], r["win_rate"], color=colors[variant], alpha=0.8, label=label)
        ax1.set(xlabel="step", ylabel="held-out excess loss (nats)", title=f"loss at the recipe's lr {recipe_lr:g}")
        ax1.legend(fontsize=8)
        ax2.axhspan(0.1, 0.5, color="tab:green", alpha=0.1, label="advised band 0.1-0.5")
        ax2.set(xlabel="step", ylabel="win rate (unclipped fraction)", ylim=(0, 1), title="win rate")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Result(NAME, CLAIM, columns, rows, summary, None, data, draw)


def _w(win: float | None) -> str:
    return "n/a" if win is None else f"{win:.3f}"


def run(quick: bool = False, seeds: int | None = None, progress=None) -> Result:
    """Default: d=48, 2 layers, 800 steps, 3 variants x 3+ lrs x 3 seeds. Quick: d=32, 1 layer, 120 steps, 2 seeds."""
    return experiment(QUICK if quick else DEFAULT, seeds=(2 if quick else 3) if seeds is None else seeds,
                      progress=progress)
