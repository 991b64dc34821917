"""SPEC section 3's descent lemma, checked at every step on random strictly convex problems.

Problems (seed i gives problem i, ``numpy.random.default_rng(i)``): dimension d in 2..6,

    L(θ) = ½ (θ - c)ᵀ A (θ - c) + Σ_k c_k φ_k(a_kᵀ θ - t_k),

A = Q diag(λ) Qᵀ with eigenvalues log-uniform in [1, κ], κ = 10^U(0, 3) (λ_min = 1, λ_max = κ), and
1 to 3 convex terms φ = log cosh (φ'' = sech² <= 1, |φ'''| <= M3 = 4/(3√3)) or softplus
(φ'' = s(1 - s) <= 1/4, |φ'''| <= M3 = 1/(6√3)), each weighted so that ``c_k max φ'' |a_k|²`` is
0.5 to 3 times λ_min(A): the convex terms change the curvature by as much as the quadratic has in its
flattest direction, so Hessian stability is not global.

R, derived: H(θ) = A + Σ c_k φ_k''(z_k) a_k a_kᵀ ⪰ A, so for any θ, θ'
``||H(θ')⁻¹ H(θ)|| = ||I + H(θ')⁻¹ (H(θ) - H(θ'))|| <= 1 + ||H(θ) - H(θ')|| / λ_min(A)`` and
``||H(θ) - H(θ')|| <= Σ c_k M3 |a_k|³ ||θ - θ'||``; hence ``||H(θ')⁻¹ H(θ)|| <= 2`` whenever
``||θ - θ'|| <= R = λ_min(A) / Σ c_k M3 |a_k|³``. (Spot-checked numerically too: random θ' at
distance R from the iterates; the largest norm seen is reported.)

Method: H(θ) = Vᵀ diag(σ) V, V orthogonal with the eigenvectors v_i as ROWS (V = Qᵀ for numpy's
``eigh`` columns Q), and ``θ+ = θ - η Vᵀ clip(V H⁻¹ ∇L, ρ)``, i.e. the i-th coordinate of the step in
the eigenbasis is ``-η clip(v_iᵀ∇L / σ_i, ρ)``. Lemma (needs ηρ <= R/√d, so ||θ+ - θ|| <= R):
``L(θ+) - L(θ) <= -(η - η²) S``, ``S = Σ_i min(ρ |v_iᵀ∇L|, |v_iᵀ∇L|² / σ_i)``.

Settings: (η, ρ) = (1/2, R/(2√d)) (SPEC's choice, for which T is stated), (1/2, 2R/√d) and
(0.9, R/(0.9√d)) (both at the limit ηρ = R/√d); a fourth, (1/2, 100 · 2R/√d), breaks the assumption
and is informational (not part of the verdict).

The iteration runs in float64 (numpy); ``L(θ+) - L(θ)`` is evaluated in mpmath at 40 digits at the
float64 iterates, so the check is not blurred by cancellation. A run stops when L - L* <= 1e-10 (L* from
a damped Newton solve, in mpmath), where the float64 gradient is still accurate to ~1e-8 relative, or
after 20000 steps. Per step the ratio ``(η - η²) S / (L(θ) - L(θ+))`` (the fraction of the actual decrease
the lemma guarantees) must lie in [0, 1]; the largest is the tightest margin. Also reported: steps to
reach L - L* <= 1e-6 against ``T = d (L(θ0) - L*)/(μ R²) + ln(μ R² / (32 d ε))`` with μ = λ_min(A)
(a valid strong-convexity constant), informational: the bound is stated up to a constant.

Quick (12 problems): about 5 s.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

from .base import Progress, Result

NAME = "descent"
CLAIM = ("Descent lemma: with Hessian stability within R and eta*rho <= R/sqrt(d), one clipped Newton step in "
         "the Hessian's eigenbasis decreases L by at least (eta - eta^2) sum_i min(rho |v_i.g|, |v_i.g|^2/sigma_i).")

M3 = {"logcosh": 4.0 / (3.0 * math.sqrt(3.0)), "softplus": 1.0 / (6.0 * math.sqrt(3.0))}
PHI2_MAX = {"logcosh": 1.0, "softplus": 0.25}
STOP_GAP = 1e-10
EPS = 1e-6
MAX_STEPS = 20000
SETTINGS = [  # (label, eta, rho as a multiple of R/sqrt(d), inside the lemma's assumption)
    ("SPEC: eta 1/2, rho R/(2 sqrt d)", 0.5, 0.5, True),
    ("eta 1/2, rho 2R/sqrt d (eta rho = R/sqrt d)", 0.5, 2.0, True),
    ("eta 0.9, rho R/(0.9 sqrt d) (eta rho = R/sqrt d)", 0.9, 1.0 / 0.9, True),
    ("outside: eta 1/2, rho 200R/sqrt d", 0.5, 200.0, False),
]
_MP = mpmath.MPContext()
_MP.dps = 40


class ConvexProblem:
    """One random problem: value/gradient/Hessian in float64, value in mpmath."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.d = d = int(rng.integers(2, 7))
        self.kappa = 10.0 ** rng.uniform(0.0, 3.0)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = np.sort(10.0 ** rng.uniform(0.0, math.log10(self.kappa), size=d))
        lam[0], lam[-1] = 1.0, self.kappa
        self.A = (q * lam) @ q.T
        self.A = (self.A + self.A.T) / 2
        self.mu = float(np.linalg.eigvalsh(self.A)[0])
        self.c = rng.normal(size=d)
        self.terms = []
        for _ in range(int(rng.integers(1, 4))):
            kind = ["logcosh", "softplus"][int(rng.integers(0, 2))]
            a = rng.normal(size=d)
            weight = self.mu * rng.uniform(0.5, 3.0) / (PHI2_MAX[kind] * float(a @ a))
            self.terms.append((kind, a, float(rng.normal()), weight))
        self.R = self.mu / sum(w * M3[k] * float(np.linalg.norm(a)) ** 3 for k, a, _, w in self.terms)
        self.start = self.c + rng.normal(size=d) * 1.5
        self._mp = [([_MP.mpf(float(v)) for v in a], _MP.mpf(t), _MP.mpf(w), k) for k, a, t, w in self.terms]
        self._mpA = [[_MP.mpf(float(v)) for v in row] for row in self.A]
        self._mpc = [_MP.mpf(float(v)) for v in self.c]

    @staticmethod
    def _phi(kind, z):
        if kind == "logcosh":
            return abs(z) + math.log1p(math.exp(-2 * abs(z))) - math.log(2.0)
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))

    @staticmethod
    def _dphi(kind, z):
        return math.tanh(z) if kind == "logcosh" else 1.0 / (1.0 + math.exp(-z))

    @staticmethod
    def _d2phi(kind, z):
        if kind == "logcosh":
            return 1.0 / math.cosh(z) ** 2 if abs(z) < 350 else 0.0
        s = 1.0 / (1.0 + math.exp(-z))
        return s * (1.0 - s)

    def value(self, x) -> float:
        r = x - self.c
        return 0.5 * float(r @ self.A @ r) + sum(w * self._phi(k, float(a @ x) - t) for k, a, t, w in self.terms)

    def grad(self, x) -> np.ndarray:
        g = self.A @ (x - self.c)
        for k, a, t, w in self.terms:
            g = g + w * self._dphi(k, float(a @ x) - t) * a
        return g

    def hessian(self, x) -> np.ndarray:
        h = self.A.copy()
        for k, a, t, w in self.terms:
            h = h + w * self._d2phi(k, float(a @ x) - t) * np.outer(a, a)
        return h

    def value_mp(self, x):
        xs = [_MP.mpf(float(v)) for v in x]
        r = [xi - ci for xi, ci in zip(xs, self._mpc)]
        total = sum(r[i] * self._mpA[i][j] * r[j] for i in range(self.d) for j in range(self.d)) / 2
        for a, t, w, kind in self._mp:
            z = _MP.fsum(ai * xi for ai, xi in zip(a, xs)) - t
            total += w * (_MP.log(_MP.cosh(z)) if kind == "logcosh" else _MP.log(1 + _MP.exp(z)))
        return total

    def minimize(self) -> np.ndarray:
        """Damped Newton (backtracking) to a float64 gradient at rounding level."""
        x = self.c.copy()
        for _ in range(200):
            g = self.grad(x)
            step = np.linalg.solve(self.hessian(x), g)
            t = 1.0
            while self.value(x - t * step) > self.value(x) + 1e-12 * abs(self.value(x)) and t > 1e-8:
                t /= 2
            x = x - t * step
            if np.linalg.norm(step) * t < 1e-15 * (1 + np.linalg.norm(x)):
                break
        return x


def clipped_newton_step(H: np.ndarray, g: np.ndarray, eta: float, rho: float):
    """``(theta+ - theta, S, sigma, V g)``: the step ``-eta Vᵀ clip(V H⁻¹ g, rho)``, V's rows the eigenvectors."""
    sigma, Q = np.linalg.eigh(H)
    V = Q.T
    gv = V @ g
    step = -eta * (V.T @ np.clip(gv / sigma, -rho, rho))
    S = float(np.sum(np.minimum(rho * np.abs(gv), gv ** 2 / sigma)))
    return step, S, sigma, gv


def _run_one(problem: ConvexProblem, L_star, eta: float, rho: float, rng) -> dict:
    x = problem.start.copy()
    L = problem.value_mp(x)
    gap0 = float(L - L_star)
    worst_ratio, slack_at_worst, min_slack, violations, steps_to_eps = -math.inf, None, math.inf, 0, None
    stability_max, ratios, t = 0.0, [], 0
    while float(L - L_star) > STOP_GAP and t < MAX_STEPS:
        if steps_to_eps is None and float(L - L_star) <= EPS:
            steps_to_eps = t
        H = problem.hessian(x)
        step, S, _, _ = clipped_newton_step(H, problem.grad(x), eta, rho)
        x_new = x + step
        L_new = problem.value_mp(x_new)
        decrease = float(L - L_new)
        guaranteed = (eta - eta * eta) * S
        ratio = guaranteed / decrease if decrease > 0 else math.inf
        slack = decrease - guaranteed
        if not (0.0 <= ratio <= 1.0):
            violations += 1
        if ratio > worst_ratio:
            worst_ratio, slack_at_worst = ratio, slack
        min_slack = min(min_slack, slack)
        if t % 5 == 0:
            ratios.append([t, ratio if math.isfinite(ratio) else None])
            u = rng.normal(size=problem.d)
            x_far = x + problem.R * u / np.linalg.norm(u)
            stability_max = max(stability_max, float(np.linalg.norm(np.linalg.solve(problem.hessian(x_far), H), 2)))
        x, L, t = x_new, L_new, t + 1
    if steps_to_eps is None and float(L - L_star) <= EPS:
        steps_to_eps = t
    return {"steps": t, "converged": float(L - L_star) <= STOP_GAP, "violations": violations,
            "worst_ratio": worst_ratio if math.isfinite(worst_ratio) else None, "slack_at_worst": slack_at_worst, "min_slack": min_slack,
            "steps_to_eps": steps_to_eps, "gap0": gap0, "stability_max": stability_max, "ratios": ratios}


def run(quick: bool = False, seeds: int | None = None, progress: Progress | None = None) -> Result:
    """``seeds``: number of random problems (default 12 quick, 40 full); problem i uses seed i."""
    say = progress or (lambda message: None)
    n = seeds if seeds is not None else (12 if quick else 40)
    problems = []
    for i in range(n):
        p = ConvexProblem(i)
        x_star = p.minimize()
        problems.append((p, x_star, p.value_mp(x_star)))
    results = {label: [] for label, *_ in SETTINGS}
    for label, eta, rho_mult, _inside in SETTINGS:
        for p, x_star, L_star in problems:
            rho = rho_mult * p.R / math.sqrt(p.d)
            r = _run_one(p, L_star, eta, rho, np.random.default_rng(10_000 + p.seed))
            T = p.d * r["gap0"] / (p.mu * p.R ** 2) + math.log(p.mu * p.R ** 2 / (32 * p.d * EPS))
            r.update({"seed": p.seed, "d": p.d, "kappa": p.kappa, "R": p.R, "eta": eta, "rho": rho, "T_bound": T,
                      "terms": [k for k, *_ in p.terms]})
            results[label].append(r)
        say(f"{label}: {len(problems)} problems")

    rows, inside_ok, summary_bits = [], True, []
    for label, eta, rho_mult, inside in SETTINGS:
        rs = results[label]
        steps = sum(r["steps"] for r in rs)
        viol = sum(r["violations"] for r in rs)
        worst = max(rs, key=lambda r: math.inf if r["worst_ratio"] is None else r["worst_ratio"])
        to_eps = [r["steps_to_eps"] for r in rs if r["steps_to_eps"] is not None]
        over_T = [r["steps_to_eps"] / r["T_bound"] for r in rs if r["steps_to_eps"] is not None]
        converged = sum(r["converged"] for r in rs)
        if inside:
            inside_ok = inside_ok and viol == 0 and converged == len(rs)
        rows.append([label, "yes" if inside else "no", len(rs), steps, viol, worst["worst_ratio"],
                     worst["slack_at_worst"], min(r["min_slack"] for r in rs),
                     max(r["stability_max"] for r in rs), f"{converged}/{len(rs)}",
                     int(np.median(to_eps)) if to_eps else "never", max(over_T) if over_T else "n/a"])
        if inside:
            tight = "inf" if worst["worst_ratio"] is None else f"{worst['worst_ratio']:.3f}"
            summary_bits.append(f"{label}: {steps} steps, {viol} violations, tightest ratio {tight}")
    outside = results[SETTINGS[-1][0]]
    outside_viol = sum(r["violations"] for r in outside)
    kappas = [p.kappa for p, *_ in problems]
    summary = (f"{n} random strictly convex problems (d 2-6, kappa {min(kappas):.3g}-{max(kappas):.3g}): "
               + "; ".join(summary_bits)
               + f". Outside the assumption (rho 100x the limit): {outside_viol} violating steps. Steps to "
               f"L - L* <= 1e-6 were at most {rows[0][11] if isinstance(rows[0][11], str) else f'{rows[0][11]:.2g}'} of T "
               f"(SPEC setting). Lemma "
               f"{'held at every step' if inside_ok else 'FAILED'}.")
    data = {"problems": n, "settings": [{"label": l, "eta": e, "rho_over_R_sqrt_d": m, "inside": i}
                                         for l, e, m, i in SETTINGS],
            "results": results, "stop_gap": STOP_GAP, "eps": EPS}

    def draw(path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
        for label, *_ in SETTINGS:
            ts = [t for r in results[label] for t, q in r["ratios"] if q is not None]
            qs = [q for r in results[label] for t, q in r["ratios"] if q is not None]
            ax1.scatter(ts, qs, s=4, label=label, alpha=0.6)
        ax1.axhline(1.0, color="k", lw=0.8)
        ax1.set_xscale("symlog", linthresh=10)
        ax1.set_xlim(left=0)
        ax1.set_xlabel("step (every 5th)")
        ax1.set_ylabel("guaranteed / actual decrease (<= 1: lemma holds)")
        ax1.legend(fontsize=7)
        rs = results[SETTINGS[0][0]]
        pts = [(r["T_bound"], r["steps_to_eps"]) for r in rs if r["steps_to_eps"] is not None]
        if pts:
            sc = ax2.scatter([a for a, _ in pts], [b for _, b in pts], c=[r["kappa"] for r in rs
                                                                          if r["steps_to_eps"] is not None],
                             cmap="viridis", norm=matplotlib.colors.LogNorm())
            fig.colorbar(sc, ax=ax2, label="condition number of A")
            lo, hi = min(min(pts)), max(max(pts))
            ax2.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("T bound")
        ax2.set_ylabel("steps to L - L* <= 1e-6 (SPEC setting)")
        ax2.set_title("informational: the bound T holds up to a constant")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    columns = ["setting", "inside assumption", "problems", "steps", "violations", "tightest ratio",
               "slack at tightest", "min slack", "max ||H'^-1 H|| at R", "converged", "median steps to 1e-6",
               "max steps/T"]
    return Result(NAME, CLAIM, columns, rows, summary, inside_ok, data, draw)
