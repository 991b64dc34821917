"""Steps to reach ``L - L* <= 1e-8`` on quadratics as the condition number grows (SPEC section 3).

Problems: ``L = 1/2 (x - c)^T A (x - c)`` in d = 6 dimensions with eigenvalues
``a_i = kappa^(i/(d-1))`` (mu = 1, L = kappa), from :mod:`verification.oracles.zoo`:
separable (``A = diag(a)``) and rotated (``A = Q^T diag(a) Q``, Q the zoo's seeded Gram-Schmidt
rotation). Seed s fixes the rotation, the centre c and the start ``x0 = c + R0 u``, u a seeded unit
vector, ``R0 = 1``: every kappa and both problem types start at the same distance from the minimizer
(so ``L(x0) - L*`` grows with kappa, up to ``kappa R0^2 / 2``).

Methods (float64 numpy, all seeds/kappas/grid points of a method run as one batch):

* ``gd``: gradient descent with ``lr = 2/(mu + L)``, the best fixed step on a quadratic.
* ``signgd``: ``x -= lr sign(g)`` with a *fixed* lr (the paper's setting); a fixed step oscillates at
  a level set by lr, so the count is the first step at which ``L - L* <= 1e-8``, minimised over a
  geometric lr grid (best fixed lr per kappa and seed, chosen after the fact).
* ``adam``: b1 = 0.9, b2 = 0.999, eps = 1e-8, bias correction; best fixed lr over a geometric grid.
* ``sophia``: the rule of :mod:`sophia_ref.rule` in its deterministic form, b1 = 0, b2 = 0, the exact
  Hessian diagonal every step, eps = 1e-12: ``x -= eta clip(g / max(gamma diag(A), eps), 1)``, with
  ``eta = 0.05`` (the most a coordinate moves per step) and ``gamma = eta / omega``, best over
  ``omega in {1, 1/2, 1/4, 1/8}`` (omega = eta/gamma is the damping of the unclipped, Jacobi, step).
  The numpy transcription is checked bit for bit against ``rule.update`` on a short run.
* ``newton``: the analysed method, ``x -= eta V^T clip(V H^-1 g, rho)``, full Hessian, eta = 1/2,
  rho = 0.1 (so eta rho = 0.05, the same per-step bound as Sophia's); no tuning.

Budget: 1e5 steps per run (quick: 2e4); a run that has not reached the target is "not reached".
Slopes: least squares of log(steps) on log(kappa) over the kappas >= 10 where every seed reached the
target (kappa = 1 is degenerate: GD with 2/(mu+L) and Newton-like steps are exact at once). With
``seeds`` > 1 the count is the geometric mean over seeds and the table gives the min-max spread.

SignGD runs also stop when they cannot travel to the target in the steps left, or when their running
minimum of ``L - L*`` has not improved for STALL = 5000 steps (the fixed step has settled into its
oscillation); both count as not reached.

Quick (``quick=True``): kappa in {1, 10, 1e2, 1e3, 1e4, 1e6}, coarser grids, budget 2e4 (SignGD 1e5), one seed,
under ~30 s on one core. Full: kappa in {1, 10, ..., 1e6}, budget 1e5, 3 seeds by default.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .base import Progress, Result

NAME = "condition"
CLAIM = ("The full-Hessian clipped Newton step reaches L - L* <= eps in a number of steps that does not "
         "depend on the condition number, while SignGD needs about sqrt(kappa) times more.")

DIM = 6
R0 = 1.0
TARGET = 1e-8
METHODS = ("gd", "signgd", "adam", "sophia", "newton")
PROBLEMS = ("separable", "rotated")
SOPHIA_ETA = 0.05
SOPHIA_EPS = 1e-12
NEWTON_ETA = 0.5
NEWTON_RHO = 0.1
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
STALL = 5000


# -- problems ---------------------------------------------------------------------------------------------------

def problem(kind: str, kappa: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(A, V, a, c, x0)`` for one problem: Hessian, eigenvector rows, eigenvalues, minimizer, start."""
    from verification.oracles.zoo import RotatedQuadratic, SeparableQuadratic

    if kind == "separable":
        zq = SeparableQuadratic(kappa, DIM, seed)
        v = np.eye(DIM)
    elif kind == "rotated":
        zq = RotatedQuadratic(kappa, DIM, seed)
        v = np.array(zq.q, dtype=np.float64)  # rows are eigenvectors
    else:
        raise ValueError(f"kind={kind!r} is not valid; accepted values: 'separable', 'rotated'")
    a = np.array(zq.a, dtype=np.float64)
    c = np.array(zq.c, dtype=np.float64)
    A = v.T @ (a[:, None] * v)
    A = 0.5 * (A + A.T)
    u = np.random.default_rng([seed, 7]).standard_normal(DIM)  # same direction for every kappa and kind
    x0 = c + R0 * u / np.linalg.norm(u)
    return A, v, a, c, x0


# -- batched runs -----------------------------------------------------------------------------------------------

def _excess(A: np.ndarray, e: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("bi,bij,bj->b", e, A, e)


def simulate(method: str, A, V, a, c, x0, param: np.ndarray, group: np.ndarray, budget: int) -> np.ndarray:
    """Steps for each batch member to reach ``L - L* <= TARGET`` (-1: not within ``budget``).

    Members sharing a ``group`` (one problem and seed, several grid values) are alternatives: once one
    reaches the target at step T, the others of its group stop at T (they can no longer be the best).
    """
    B = x0.shape[0]
    x = x0.copy()
    steps = np.full(B, -1, dtype=np.int64)
    best = np.full(int(group.max()) + 1, budget + 1, dtype=np.int64)
    active = np.arange(B)
    m = np.zeros_like(x)
    v2 = np.zeros_like(x)
    diag = np.einsum("bii->bi", A)
    done = _excess(A, x - c) <= TARGET
    steps[done] = 0
    np.minimum.at(best, group[done], 0)
    active = active[~done]
    low = np.full(B, np.inf)  # SignGD: running minimum of L - L* and the step it was set
    since = np.zeros(B, dtype=np.int64)
    t = 0
    while active.size and t < budget:
        t += 1
        idx = active
        Ai, ci, xi, p = A[idx], c[idx], x[idx], param[idx]
        e = xi - ci
        g = np.einsum("bij,bj->bi", Ai, e)
        if method == "gd":
            xi = xi - p[:, None] * g
        elif method == "signgd":
            xi = xi - p[:, None] * np.sign(g)
        elif method == "adam":
            mi = ADAM_B1 * m[idx] + (1 - ADAM_B1) * g
            vi = ADAM_B2 * v2[idx] + (1 - ADAM_B2) * g * g
            m[idx], v2[idx] = mi, vi
            mh = mi / (1 - ADAM_B1 ** t)
            vh = vi / (1 - ADAM_B2 ** t)
            xi = xi - p[:, None] * mh / (np.sqrt(vh) + ADAM_EPS)
        elif method == "sophia":
            xi = xi + sophia_delta(g, diag[idx], p[:, None])
        elif method == "newton":
            Vi = V[idx]
            w = np.einsum("bij,bj->bi", Vi, g) / a[idx]  # V H^-1 g = diag(1/a) V g
            xi = xi - NEWTON_ETA * np.einsum("bji,bj->bi", Vi, np.clip(w, -NEWTON_RHO, NEWTON_RHO))
        else:
            raise ValueError(f"method={method!r} is not valid; accepted values: {', '.join(METHODS)}")
        x[idx] = xi
        hit = _excess(Ai, xi - ci) <= TARGET
        if hit.any():
            steps[idx[hit]] = t
            np.minimum.at(best, group[idx[hit]], t)
        keep = ~hit & (best[group[idx]] > t) & np.isfinite(xi).all(axis=1)
        if method == "signgd":
            # A sign step moves each coordinate by exactly lr; L - L* <= TARGET needs ||x - c||_inf <= sqrt(2 TARGET / mu)
            # (mu = 1), so a member that cannot travel that far in the steps left is dropped; so is one whose running
            # minimum of L - L* has not improved for STALL steps (a fixed step has settled into its oscillation).
            far = np.abs(xi - ci).max(axis=1) - math.sqrt(2 * TARGET) > p * (budget - t)
            lv = _excess(Ai, xi - ci)
            better = lv < low[idx]
            low[idx[better]] = lv[better]
            since[idx[better]] = t
            keep &= ~far & (t - since[idx] < STALL)
        active = idx[keep]
    return steps


def sophia_delta(g: np.ndarray, h: np.ndarray, gamma) -> np.ndarray:
    """``rule.update`` with b1 = b2 = 0, k = 1, eps = SOPHIA_EPS, lr = SOPHIA_ETA, form "gamma", in numpy, same roundings."""
    d = np.maximum(gamma * h, SOPHIA_EPS)      # max(gamma h, eps); m = 0*m + 1*g = g, h = 0*h + 1*hhat = hhat
    u = np.clip(g / d, -1.0, 1.0)
    return -(u * SOPHIA_ETA)


def check_sophia_against_rule(steps: int = 40, kappa: float = 1e4, seed: int = 0) -> float:
    """Largest |difference| between the numpy Sophia trajectory and ``sophia_ref.rule.update`` (0.0: bitwise)."""
    import torch

    from sophia_ref import rule

    worst = 0.0
    for kind in PROBLEMS:
        A, V, a, c, x0 = problem(kind, kappa, seed)
        gamma = SOPHIA_ETA / 0.25
        hyper = rule.Hyper(lr=SOPHIA_ETA, beta1=0.0, beta2=0.0, gamma=gamma, eps=SOPHIA_EPS)
        theta = torch.tensor(x0, dtype=torch.float64)
        state = rule.init(theta)
        hd = torch.tensor(np.diag(A).copy())
        x = x0[None].copy()
        for _ in range(steps):
            g = np.einsum("bij,bj->bi", A[None], x - c[None])  # one gradient for both, so only the rule is compared
            state, delta, _ = rule.update(state, theta, torch.tensor(g[0]), hyper, hhat=hd)
            theta = theta + delta
            x = x + sophia_delta(g, np.diag(A)[None], np.array([[gamma]]))
            worst = max(worst, float(np.abs(x[0] - theta.numpy()).max()))
    return worst


# -- the experiment ---------------------------------------------------------------------------------------------

def _grids(quick: bool) -> dict[str, list[float]]:
    if quick:
        return {"gd": [float("nan")], "signgd": [10.0 ** (-k / 4) for k in range(8, 29)],
                "adam": [10.0 ** (-k / 2) for k in range(0, 9)], "sophia": [1.0, 0.5, 0.25, 0.125],
                "newton": [float("nan")]}
    return {"gd": [float("nan")], "signgd": [10.0 ** (-k / 8) for k in range(16, 57)],
            "adam": [10.0 ** (-k / 3) for k in range(0, 16)], "sophia": [1.0, 0.5, 0.25, 0.125],
            "newton": [float("nan")]}


def fit_slope(kappas, steps) -> float | None:
    """Least-squares slope of log(steps) on log(kappa), over kappa >= 10 with steps reached; None under 2 points."""
    pts = [(math.log(k), math.log(s)) for k, s in zip(kappas, steps) if k >= 10 and s is not None and s > 0]
    if len(pts) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def run(quick: bool = False, seeds: int | None = None, progress: Progress | None = None) -> Result:
    t_start = time.monotonic()
    say = progress or (lambda message: None)
    n_seeds = seeds if seeds is not None else (1 if quick else 3)
    if n_seeds < 1:
        raise ValueError(f"seeds={seeds!r} is not valid; accepted range: integers >= 1")
    kappas = [1.0, 10.0, 1e2, 1e3, 1e4, 1e6] if quick else [10.0 ** k for k in range(7)]
    budget = 100_000
    budgets = {m: (100_000 if m == "signgd" or not quick else 20_000) for m in METHODS}
    grids = _grids(quick)
    seed_list = list(range(n_seeds))

    rows, per = [], {}
    timings = {}
    for kind in PROBLEMS:
        probs = {(k, s): problem(kind, k, s) for k in kappas for s in seed_list}
        for method in METHODS:
            t0 = time.monotonic()
            grid = grids[method]
            members = [(k, s, p) for k in kappas for s in seed_list for p in grid]
            gid = {(k, s): i for i, (k, s) in enumerate((k, s) for k in kappas for s in seed_list)}
            A = np.stack([probs[k, s][0] for k, s, _ in members])
            V = np.stack([probs[k, s][1] for k, s, _ in members])
            a = np.stack([probs[k, s][2] for k, s, _ in members])
            c = np.stack([probs[k, s][3] for k, s, _ in members])
            x0 = np.stack([probs[k, s][4] for k, s, _ in members])
            if method == "gd":
                param = np.array([2.0 / (1.0 + k) for k, _, _ in members])
            elif method == "sophia":
                param = np.array([SOPHIA_ETA / p for _, _, p in members])  # gamma = eta / omega
            else:
                param = np.array([p for _, _, p in members])
            group = np.array([gid[k, s] for k, s, _ in members])
            st = simulate(method, A, V, a, c, x0, param, group, budgets[method])
            timings[f"{kind}/{method}"] = round(time.monotonic() - t0, 3)
            say(f"{kind} {method}: {timings[f'{kind}/{method}']:.1f}s")
            out = []
            for k in kappas:
                best, best_p = [], []
                for s in seed_list:
                    cand = [(int(st[i]), members[i][2]) for i in range(len(members))
                            if members[i][0] == k and members[i][1] == s and st[i] >= 0]
                    if cand:
                        n, p = min(cand)
                        best.append(n)
                        best_p.append(p)
                    else:
                        best.append(None)
                        best_p.append(None)
                reached = all(b is not None for b in best)
                mean = float(math.exp(np.mean([math.log(max(b, 1)) for b in best]))) if reached else None
                out.append({"kappa": k, "steps": best, "best_param": best_p, "geomean": mean,
                            "reached": reached})
            slope = fit_slope(kappas, [o["geomean"] for o in out])
            per[f"{kind}/{method}"] = {"runs": out, "slope": slope}
            for o in out:
                finite = [b for b in o["steps"] if b is not None]
                spread = (f"{min(finite)}-{max(finite)}" if finite else "-") if n_seeds > 1 else ""
                n_reached = len(finite)
                rows.append([kind, method, o["kappa"],
                             round(o["geomean"], 1) if o["reached"] else "not reached",
                             spread if n_seeds > 1 else f"{n_reached}/{n_seeds}",
                             _param_text(method, o["best_param"]),
                             round(slope, 3) if slope is not None else "-"])

    sophia_check = check_sophia_against_rule()
    slopes = {key: v["slope"] for key, v in per.items()}

    newton_flat = all(slopes[f"{k}/newton"] is not None and abs(slopes[f"{k}/newton"]) <= 0.15 for k in PROBLEMS)
    sg = slopes["separable/signgd"]
    signgd_sqrt = sg is not None and 0.35 <= sg <= 0.65
    claim_held = bool(newton_flat and signgd_sqrt)
    rs = slopes["rotated/sophia"]
    summary = (f"Fitted log-log slopes of steps vs kappa (kappa >= 10, reached runs, budget {budgets['gd']:g} steps, SignGD {budgets['signgd']:g}): "
               f"clipped Newton {_s(slopes['separable/newton'])} separable / {_s(slopes['rotated/newton'])} rotated "
               f"({'flat' if newton_flat else 'not flat'}); SignGD {_s(sg)} / {_s(slopes['rotated/signgd'])} "
               f"({'matches' if signgd_sqrt else 'does not match'} sqrt(kappa) = 0.5 on the separable problem); "
               f"GD {_s(slopes['separable/gd'])} / {_s(slopes['rotated/gd'])}; Adam {_s(slopes['separable/adam'])} / "
               f"{_s(slopes['rotated/adam'])}; diagonal Sophia {_s(slopes['separable/sophia'])} separable "
               f"(flat) but {_s(rs)} rotated, where it is a damped Jacobi iteration and grows like GD.")
    columns = ["problem", "method", "kappa", "steps", "spread" if n_seeds > 1 else "seeds reached",
               "best setting", "slope"]
    data = {"kappas": kappas, "seeds": seed_list, "budget": budget, "budgets": budgets, "stall": STALL, "target": TARGET, "dim": DIM, "r0": R0,
            "grids": {m: [None if math.isnan(p) else p for p in g] for m, g in grids.items()},
            "results": per, "slopes": slopes, "newton_flat": newton_flat, "signgd_sqrt": signgd_sqrt,
            "sophia_vs_rule_max_abs_diff": sophia_check,
            "settings": {"gd": "lr = 2/(mu+L) = 2/(1+kappa)",
                         "signgd": "fixed lr, best of the grid per kappa and seed (first hitting time)",
                         "adam": f"b1={ADAM_B1}, b2={ADAM_B2}, eps={ADAM_EPS}, bias-corrected, best lr of the grid",
                         "sophia": f"b1=0, b2=0, k=1, exact diag, eta={SOPHIA_ETA}, eps={SOPHIA_EPS}, "
                                   "gamma=eta/omega, best omega of the grid",
                         "newton": f"eta={NEWTON_ETA}, rho={NEWTON_RHO}, full Hessian eigenbasis"},
            "timings_s": timings, "wall_s": round(time.monotonic() - t_start, 3)}

    def draw(path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        colors = {"gd": "C0", "signgd": "C1", "adam": "C2", "sophia": "C3", "newton": "C4"}
        for ax, kind in zip(axes, PROBLEMS):
            for method in METHODS:
                entry = per[f"{kind}/{method}"]
                ks = [o["kappa"] for o in entry["runs"] if o["reached"]]
                ys = [o["geomean"] for o in entry["runs"] if o["reached"]]
                sl = entry["slope"]
                label = f"{method} (slope {sl:.2f})" if sl is not None else f"{method} (slope -)"
                ax.loglog(ks, ys, "o-", color=colors[method], label=label)
                for o in entry["runs"]:
                    if not o["reached"]:
                        ax.loglog([o["kappa"]], [budgets[method]], "x", color=colors[method])
            ax.axhline(budget, color="gray", lw=0.8, ls="--")
            ax.set_title(f"{kind} quadratic, d={DIM}")
            ax.set_xlabel("condition number kappa")
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"steps to L - L* <= {TARGET:g} (x: not reached by {budget:g})")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Result(name=NAME, claim=CLAIM, columns=columns, rows=rows, summary=summary, claim_held=claim_held,
                  data=data, draw=draw)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _param_text(method: str, params: list) -> str:
    got = [p for p in params if p is not None]
    if method in ("gd", "newton") or not got:
        return {"gd": "lr=2/(1+kappa)", "newton": f"eta={NEWTON_ETA}, rho={NEWTON_RHO}"}.get(method, "-")
    key = "omega" if method == "sophia" else "lr"
    return ", ".join(f"{key}={p:.3g}" for p in got)
