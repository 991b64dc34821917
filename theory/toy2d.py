"""The paper's 2-D illustration (SPEC section 3, the paper's Figure 2): GD, SignGD, Adam, Newton, Sophia.

``L(x, y) = 8 (x - 1)^2 (1.3 x^2 + 2 x + 1) + (y - 4)^2 / 2`` (:func:`sophia_ref.demo.toy_loss`):
minimizer (1, 4), saddle (0, 4), local minimum (-17/26, 4) ~ (-0.654, 4) (``L1'(x) = 8 (x - 1) x (5.2 x + 3.4)``),
negative curvature in x for -0.366 < x < 0.596.

Starts: ``PaperToy.NONCONVEX_STARTS`` (all in the negative-curvature strip): the paper-like (0.3, 1), and
(0.45, 0), (-0.3, 2), (0.1, 7), (0.55, 6). (-0.3, 2) has L1'(x0) > 0, so descent leads to the local
minimum; it is kept so the claims are tested on a start outside the minimizer's basin too.

Methods and hyperparameters (all float64, deterministic except the seeded Hutchinson probe):

- Sophia (exact): :func:`sophia_ref.demo.sophia`, betas (0, 0), exact Hessian diagonal every step,
  lr 0.5, gamma 0.5, eps 1e-12 (the demo's values); budget ``NEWTON_STEPS`` steps.
- Sophia (Hutchinson): the same with one Gaussian Hutchinson probe per step
  (:func:`sophia_ref.estimators.hutchinson`, ``torch.Generator`` seeded with ``seed``), betas (0, 0.9).
- Newton: :func:`sophia_ref.demo.newton` (full Hessian, unit step), budget ``NEWTON_STEPS``.
- GD, SignGD (:func:`sophia_ref.demo.signgd`), Adam (betas (0.9, 0.999), eps 1e-8, with the usual
  bias correction): one fixed lr each, the best of a small grid (``GRIDS``) by the
  total steps to reach the minimizer to 1e-6 summed over the starts where it is reached (most starts
  reached first; ties and never-reached broken by the coarse 1e-2 tolerance); the grid is searched
  from every start (full) or, in quick mode, from the paper start only over the full grid's two best
  values (``QUICK_GRIDS``); budget 3000 steps (full) or 700 (quick). Stored trajectories are thinned
  after step 100 (every 10th point).

"steps to 1e-6" is the first step with ``|theta - (1, 4)|_inf <= 1e-6``
(:meth:`sophia_ref.demo.Trajectory.steps_to`). SignGD moves on the lattice ``theta0 + lr Z^2``; it can hit
the tolerance only by landing on the minimizer's lattice point (the starts have round coordinates, so
lattice hits happen), otherwise it oscillates at amplitude lr. Any fixed-lr SignGD needs at least
``|y0 - 4| / lr`` steps.

Quick: about 12 s of CPU (full: about 100 s).
"""

from __future__ import annotations


import torch

from sophia_ref import demo
from sophia_ref.estimators import hutchinson
from sophia_ref.optim import SophiaRef

from .base import Progress, Result

NAME = "toy2d"
CLAIM = ("On the paper's 2-D problem, from starts with negative curvature, Newton runs to the saddle, GD and "
         "SignGD/Adam crawl, and Sophia reaches the minimizer (1, 4) in a few steps.")

STARTS = [(0.3, 1.0), (0.45, 0.0), (-0.3, 2.0), (0.1, 7.0), (0.55, 6.0)]
LOCAL_MIN = (-17.0 / 26.0, 4.0)
TOL = 1e-6
COARSE = 1e-2
SOPHIA_LR, SOPHIA_GAMMA = 0.5, 0.5
HUTCHINSON_BETA2 = 0.9
NEWTON_STEPS = 100
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
GRIDS = {"GD": [0.005, 0.01, 0.02, 0.025, 0.028],
         "SignGD": [0.003, 0.01, 0.03, 0.1],
         "Adam": [0.003, 0.01, 0.03, 0.1]}
QUICK_GRIDS = {"GD": [0.025, 0.028], "SignGD": [0.003, 0.01], "Adam": [0.03, 0.1]}  # the full run's best two
METHODS = ["GD", "SignGD", "Adam", "Newton", "Sophia (exact)", "Sophia (Hutchinson)"]


# -- the methods the demo lacks (GD, Adam, Sophia with Hutchinson), on the demo's loss and loop -------------

def gd(start, steps: int, lr: float) -> demo.Trajectory:
    """Gradient descent, ``theta -= lr grad``."""
    theta = torch.tensor(start, dtype=torch.float64)

    def move(th):
        th -= lr * demo._grad(th)

    return demo._trajectory("GD", theta, steps, move)


def adam(start, steps: int, lr: float, betas=ADAM_BETAS, eps: float = ADAM_EPS) -> demo.Trajectory:
    """Adam (Kingma & Ba, bias-corrected), float64."""
    theta = torch.tensor(start, dtype=torch.float64)
    state = {"t": 0, "m": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64)}

    def move(th):
        g = demo._grad(th)
        state["t"] += 1
        t = state["t"]
        state["m"] = betas[0] * state["m"] + (1 - betas[0]) * g
        state["v"] = betas[1] * state["v"] + (1 - betas[1]) * g * g
        mhat = state["m"] / (1 - betas[0] ** t)
        vhat = state["v"] / (1 - betas[1] ** t)
        th -= lr * mhat / (vhat.sqrt() + eps)

    return demo._trajectory("Adam", theta, steps, move)


def sophia_hutchinson(start, steps: int, lr: float = SOPHIA_LR, gamma: float = SOPHIA_GAMMA,
                      beta2: float = HUTCHINSON_BETA2, seed: int = 0) -> demo.Trajectory:
    """Sophia with one Gaussian Hutchinson probe per step from a seeded generator (b1 = 0)."""
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(seed)
    opt = SophiaRef([theta], lr=lr, betas=(0.0, beta2), gamma=gamma, eps=1e-12, hessian_interval=1,
                    hessian_estimator=lambda: hutchinson(lambda: demo.toy_loss(theta), [theta], generator=generator))

    def move(_):
        opt.zero_grad()
        demo.toy_loss(theta).backward()
        opt.step()

    return demo._trajectory("Sophia (Hutchinson)", theta, steps, move)


# -- verdicts -----------------------------------------------------------------------------------------------

def where(point) -> str:
    """Where an end point lies: 'minimizer', 'saddle' or 'local min' (to 1e-6), 'near minimizer' (1e-2), else 'elsewhere'."""
    for label, target in (("minimizer", demo.MINIMIZER), ("saddle", demo.SADDLE), ("local min", LOCAL_MIN)):
        if max(abs(point[0] - target[0]), abs(point[1] - target[1])) <= TOL:
            return label
    if max(abs(point[0] - 1.0), abs(point[1] - 4.0)) <= COARSE:
        return "near minimizer"
    return "elsewhere"


def _score(trajectories) -> tuple:
    fine = [tr.steps_to(demo.MINIMIZER, TOL) for tr in trajectories]
    coarse = [tr.steps_to(demo.MINIMIZER, COARSE) for tr in trajectories]
    big = 10 ** 9
    return (-sum(s is not None for s in fine), sum(s for s in fine if s is not None),
            -sum(s is not None for s in coarse), sum(big if s is None else s for s in coarse))


def _method(name: str, start, steps: int, lr: float | None, seed: int) -> demo.Trajectory:
    if name == "GD":
        return gd(start, steps, lr)
    if name == "SignGD":
        return demo.signgd(start, steps, lr)
    if name == "Adam":
        return adam(start, steps, lr)
    if name == "Newton":
        return demo.newton(start, NEWTON_STEPS)
    if name == "Sophia (exact)":
        return demo.sophia(start, NEWTON_STEPS, SOPHIA_LR, SOPHIA_GAMMA)
    return sophia_hutchinson(start, NEWTON_STEPS, seed=seed)


def _span(steps: list) -> str:
    reached = [s for s in steps if s is not None]
    text = f"{min(reached)}-{max(reached)}" if reached else "never"
    return text + (f" ({len(steps) - len(reached)} never)" if len(reached) < len(steps) else "")


def _thin(values: list) -> list:
    """Every point up to step 100, then every 10th, and the last (keeps ``data`` small)."""
    keep = [v for t, v in enumerate(values) if t <= 100 or t % 10 == 0 or t == len(values) - 1]
    return [list(v) if isinstance(v, tuple) else v for v in keep]


def run(quick: bool = False, seeds: int | None = None, progress: Progress | None = None) -> Result:
    """``seeds``: the Hutchinson runs use seeds 0 .. seeds-1 (default 1); the first goes in the table."""
    say = progress or (lambda message: None)
    steps = 700 if quick else 3000
    n_seeds = max(1, seeds or 1)
    grid_starts = STARTS[:1] if quick else STARTS

    lrs, grid_data = {}, {}
    for name, grid in (QUICK_GRIDS if quick else GRIDS).items():
        scores = {}
        for lr in grid:
            scores[lr] = _score([_method(name, s, steps, lr, 0) for s in grid_starts])
        lrs[name] = min(grid, key=lambda lr: scores[lr])
        grid_data[name] = {str(lr): list(score) for lr, score in scores.items()}
        say(f"{name}: lr {lrs[name]} chosen from {grid}")

    rows, runs = [], []
    for start in STARTS:
        for name in METHODS:
            tr = _method(name, start, steps, lrs.get(name), 0)
            fine, coarse = tr.steps_to(demo.MINIMIZER, TOL), tr.steps_to(demo.MINIMIZER, COARSE)
            end = tr.points[-1]
            runs.append({"method": name, "start": list(start), "lr": lrs.get(name), "steps_to_1e-6": fine,
                         "steps_to_1e-2": coarse, "end": list(end), "end_loss": tr.losses[-1], "where": where(end),
                         "points": _thin(tr.points), "losses": _thin(tr.losses)})
            rows.append([f"({start[0]:g}, {start[1]:g})", name, f"({end[0]:.6g}, {end[1]:.6g})", tr.losses[-1],
                         "never" if fine is None else fine, "never" if coarse is None else coarse, where(end)])
        say(f"start {start} done")

    extra_seeds = []
    for seed in range(1, n_seeds):
        for start in STARTS:
            tr = sophia_hutchinson(start, NEWTON_STEPS, seed=seed)
            extra_seeds.append({"seed": seed, "start": list(start), "steps_to_1e-6": tr.steps_to(demo.MINIMIZER, TOL),
                                "where": where(tr.points[-1])})

    def get(name, start):
        return next(r for r in runs if r["method"] == name and tuple(r["start"]) == tuple(start))

    basin = [s for s in STARTS if 0.0 < s[0] < 1.0]  # L1'(x0) < 0: descent leads towards x = 1
    newton_saddle = [s for s in STARTS if get("Newton", s)["where"] == "saddle"]
    sophia_ok = all(get(m, s)["where"] == "minimizer" and get(m, s)["steps_to_1e-6"] is not None
                    for m in ("Sophia (exact)", "Sophia (Hutchinson)") for s in basin)
    sophia_saddle = [s for s in STARTS for m in ("Sophia (exact)", "Sophia (Hutchinson)")
                     if get(m, s)["where"] == "saddle"]
    ratios = {}
    for name in ("GD", "SignGD", "Adam"):
        per = []
        for s in basin:
            base = get("Sophia (exact)", s)["steps_to_1e-6"]
            other = get(name, s)["steps_to_1e-6"]
            # never within the budget: the ratio is at least budget / Sophia's steps
            per.append({"start": list(s), "ratio": (steps if other is None else other) / max(base, 1),
                        "lower_bound": other is None})
        ratios[name] = {"min": min(p["ratio"] for p in per), "per_start": per}
    slow_factor = 5.0
    claim_held = (len(newton_saddle) >= 1 and sophia_ok and not sophia_saddle
                  and ratios["GD"]["min"] >= slow_factor and ratios["SignGD"]["min"] >= slow_factor)

    sophia_steps = [get("Sophia (exact)", s)["steps_to_1e-6"] for s in basin]
    hut_steps = [get("Sophia (Hutchinson)", s)["steps_to_1e-6"] for s in basin]

    def ratio_text(name):
        r = ratios[name]
        bound = any(p["lower_bound"] for p in r["per_start"])
        return f"{name} {'>=' if bound else ''}{r['min']:.0f}x"

    summary = (f"Newton ends at the saddle (0, 4) from {len(newton_saddle)} of {len(STARTS)} starts "
               f"({', '.join(f'({s[0]:g}, {s[1]:g})' for s in newton_saddle)}); Sophia "
               f"{'reaches' if sophia_ok else 'does NOT always reach'} (1, 4) to 1e-6 from the {len(basin)} starts "
               f"with 0 < x0 < 1 (steps: exact diagonal {_span(sophia_steps)}, Hutchinson {_span(hut_steps)}), "
               f"{'and never ends at the saddle' if not sophia_saddle else 'but ends at the saddle from some'}; "
               f"from (-0.3, 2) (L1'(x0) > 0) Sophia ends at the "
               f"{get('Sophia (exact)', (-0.3, 2.0))['where']}. Slowest-case speed-up over the "
               f"best-of-grid fixed lr (min over starts): {ratio_text('GD')}, {ratio_text('SignGD')}, "
               f"{ratio_text('Adam')}. Claim {'held' if claim_held else 'did not hold'}.")

    data = {"starts": [list(s) for s in STARTS], "budget": steps, "newton_sophia_budget": NEWTON_STEPS,
            "lrs": lrs, "grid_scores": grid_data, "grid_starts": [list(s) for s in grid_starts],
            "sophia": {"lr": SOPHIA_LR, "gamma": SOPHIA_GAMMA, "hutchinson_beta2": HUTCHINSON_BETA2},
            "adam": {"betas": list(ADAM_BETAS), "eps": ADAM_EPS}, "runs": runs, "ratios": ratios,
            "newton_saddle_starts": [list(s) for s in newton_saddle], "basin_starts": [list(s) for s in basin],
            "hutchinson_extra_seeds": extra_seeds, "slow_factor": slow_factor}

    def draw(path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        xs, ys = np.linspace(-1.0, 1.5, 300), np.linspace(-0.5, 8.0, 300)
        X, Y = np.meshgrid(xs, ys)
        Z = 8 * (X - 1) ** 2 * (1.3 * X ** 2 + 2 * X + 1) + 0.5 * (Y - 4) ** 2
        fig, axes = plt.subplots(2, 3, figsize=(15, 9), sharex=True, sharey=True)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, name in zip(axes.flat, METHODS):
            ax.contour(X, Y, np.log10(Z + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
            ax.axvspan(-0.3655, 0.5963, color="orange", alpha=0.08)
            for i, start in enumerate(STARTS):
                pts = np.array(get(name, start)["points"])
                ax.plot(pts[:, 0], pts[:, 1], ".-", ms=2, lw=0.8, color=colors[i % len(colors)],
                        label=f"({start[0]:g}, {start[1]:g})")
            for label, p, marker in (("min", demo.MINIMIZER, "*"), ("saddle", demo.SADDLE, "x"),
                                     ("local min", LOCAL_MIN, "^")):
                ax.plot(*p, marker, color="k", ms=9)
            lr = lrs.get(name)
            ax.set_title(name + (f" (lr {lr:g})" if lr else ""))
            ax.set_xlim(-1.0, 1.5)
            ax.set_ylim(-0.5, 8.0)
        axes.flat[0].legend(fontsize=7, title="start")
        fig.suptitle("L = 8(x-1)^2(1.3x^2+2x+1) + (y-4)^2/2; shaded: L1'' < 0")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    columns = ["start", "method", "end point", "end loss", "steps to 1e-6", "steps to 1e-2", "ended at"]
    return Result(NAME, CLAIM, columns, rows, summary, claim_held, data, draw)
