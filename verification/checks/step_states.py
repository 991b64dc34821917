"""Seeded random states for one Sophia step, boundaries drawn on purpose.

A state is hyperparameters, the completed-step count, the refresh count, and per coordinate
``(m, h, theta, g, hhat)``; each coordinate is of a *kind* that puts it on or near a boundary of
the rule (``h = +-0``, ``h < 0``, ``scale h = +-eps``, ``|m| = scale h``, subnormal or huge
magnitudes, zero momentum, a gradient that cancels the coupled weight decay ``lam theta``).
"""

from __future__ import annotations

import random

SUBNORMALS = (5e-324, 1e-320, 2.2250738585072e-310, 2.2250738585072014e-308 / 2, 1e-310)


def _real(rng: random.Random, low: float = -20.0, high: float = 20.0) -> float:
    """A signed float, log-uniform in magnitude over [10^low, 10^high], sometimes a small integer or +-0."""
    r = rng.random()
    if r < 0.05:
        return rng.choice((0.0, -0.0))
    if r < 0.15:
        return float(rng.randint(-8, 8))
    return rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(low, high)


def _subnormal(rng: random.Random) -> float:
    if rng.random() < 0.5:
        return rng.choice((-1.0, 1.0)) * rng.choice(SUBNORMALS)
    return rng.choice((-1.0, 1.0)) * rng.randint(1, 2**52 - 1) * 2.0**-1074


def random_hyper(rng: random.Random) -> dict:
    """Hyperparameters with the boundary values drawn on purpose (b1 = 0, powers of two, eps = 0, ...)."""
    pick = lambda options, draw: rng.choice(options) if rng.random() < 0.7 else draw()
    return dict(
        lr=pick((1.0, 0.5, 1e-3, 6e-4), lambda: 10.0 ** rng.uniform(-6, 0)),
        beta1=pick((0.0, 0.0, 0.9, 0.96, 0.965, 0.5, 0.3), lambda: rng.uniform(0.0, 0.999)),
        beta2=pick((0.0, 0.99, 0.5, 0.999), lambda: rng.uniform(0.0, 0.999)),
        gamma=pick((0.01, 0.04, 0.05, 0.5, 0.25, 2.0**-7, 1.0, 2.0), lambda: 10.0 ** rng.uniform(-3, 1)),
        eps=rng.choice((0.0, 1e-15, 1e-12, 1e-8, 2.0**-30, 1e-3)),
        weight_decay=pick((0.0, 0.0, 0.1, 0.2), lambda: rng.uniform(0.0, 0.5)),
        hessian_interval=rng.randint(1, 4),
        batch_size=rng.choice((1.0, 4.0, 480.0, 5120.0)),
    )


KINDS = ("generic", "zero_h", "negative_h", "eps_boundary", "clip_boundary", "subnormal", "huge", "tiny", "zero_m",
         "decay_balance")


def random_coordinate(rng: random.Random, hyper: dict, kind: str) -> tuple[float, float, float, float, float]:
    """(m, h, theta, g, hhat) of one coordinate of the given kind.

    ``eps_boundary``: ``h = hhat = +-eps / s`` for ``s`` one of the scales the dialects use (gamma,
    gamma B, 1, B): exactly ``scale h == eps`` (or ``== -eps``: d = 0 in the added-eps form) where the
    quotient is exact (powers of two); the refreshed ``b2 h + (1 - b2) hhat`` is the same value exactly.
    ``clip_boundary``: ``|g| = s h`` (+ eps sometimes), so with b1 = 0 (m_t = g) ``|m| / d`` is exactly
    the clip threshold (c = 1 in the gamma form; in the rho form ``|m| / h = rho`` is the same equation).
    ``huge``: magnitudes 1e250 to 1e300; ``tiny``: 1e-300 to 1e-250; ``subnormal``: some fields subnormal.
    ``decay_balance``: ``g = -lam theta`` (rounded), so the coupled form's ``g + lam theta`` nearly cancels.
    """
    m, h, theta, g, hhat = (_real(rng) for _ in range(5))
    gamma, B, eps = hyper["gamma"], hyper["batch_size"], hyper["eps"]
    s = rng.choice((gamma, gamma * B, 1.0, B))
    if kind == "zero_h":
        h, hhat = rng.choice((0.0, -0.0)), rng.choice((0.0, -0.0, hhat))
    elif kind == "negative_h":
        h, hhat = -abs(h), -abs(hhat)
    elif kind == "eps_boundary":
        h = hhat = rng.choice((1.0, -1.0)) * (eps if eps > 0 else rng.choice((0.0, 1e-12))) / s
    elif kind == "clip_boundary":
        h = hhat = abs(_real(rng, -10, 10)) or 1.0
        g = rng.choice((1.0, -1.0)) * (s * h + (eps if rng.random() < 0.3 else 0.0))
    elif kind == "subnormal":
        values = [m, h, theta, g, hhat]
        for j in rng.sample(range(5), rng.randint(1, 5)):
            values[j] = _subnormal(rng)
        m, h, theta, g, hhat = values
    elif kind in ("huge", "tiny"):
        low, high = (250, 300) if kind == "huge" else (-300, -250)
        m, h, theta, g, hhat = (rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(low, high) if rng.random() < 0.7
                                else v for v in (m, h, theta, g, hhat))
    elif kind == "zero_m":
        m, g = rng.choice((0.0, -0.0)), rng.choice((0.0, -0.0))
    elif kind == "decay_balance":
        g = -hyper["weight_decay"] * theta
    return m, h, theta, g, hhat


def random_refreshes(rng: random.Random, step: int, k: int) -> int:
    """A refresh count for a state after ``step`` steps: half the time the scheduled one
    (``ceil(step / k)``, refreshes on t = 1, k + 1, ...), else 0 or anything up to ``step + 2``."""
    r = rng.random()
    if r < 0.5:
        return -(-step // k)
    if r < 0.7:
        return 0
    return rng.randint(0, step + 2)


def random_case(rng: random.Random, n_max: int = 8) -> dict:
    """One state: hyperparameters, completed steps, refresh count, (m, h, theta, g, hhat) lists of 1 to n_max
    coordinates of random kinds, and whether a caller-phase dialect is given the estimate."""
    hyper = random_hyper(rng)
    n = rng.randint(1, n_max)
    coords = [random_coordinate(rng, hyper, rng.choice(KINDS)) for _ in range(n)]
    m, h, theta, g, hhat = (list(col) for col in zip(*coords))
    step = rng.randint(0, 20)
    return dict(hyper=hyper, step=step, m=m, h=h, theta=theta, g=g, hhat=hhat, give_estimate=rng.random() < 0.6,
                refreshes=random_refreshes(rng, step, hyper["hessian_interval"]))
