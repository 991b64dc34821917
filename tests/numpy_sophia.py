"""A Sophia port in numpy alone, written from SPEC section 1 (dialect ``paper``): what a port outside torch looks
like to the standalone vector checker. ``step(state, theta, grad, hhat, hyper) -> (state, theta)``."""

import numpy as np


def step(state, theta, grad, hhat, hyper):
    if state is None:
        state = {"m": np.zeros_like(theta), "h": np.zeros_like(theta)}
    b1, b2, lr = hyper["beta1"], hyper["beta2"], hyper["lr"]
    m = b1 * state["m"] + (1 - b1) * grad
    h = b2 * state["h"] + (1 - b2) * hhat if hhat is not None else state["h"]
    d = np.maximum(hyper["gamma"] * h, hyper["eps"])
    u = np.clip(m / d, -1.0, 1.0)
    theta = theta - lr * hyper["weight_decay"] * theta - lr * u
    return {"m": m, "h": h}, theta


def step_without_clip(state, theta, grad, hhat, hyper):
    """A wrong port: the quotient unclipped."""
    if state is None:
        state = {"m": np.zeros_like(theta), "h": np.zeros_like(theta)}
    m = hyper["beta1"] * state["m"] + (1 - hyper["beta1"]) * grad
    h = hyper["beta2"] * state["h"] + (1 - hyper["beta2"]) * hhat if hhat is not None else state["h"]
    u = m / np.maximum(hyper["gamma"] * h, hyper["eps"])
    return {"m": m, "h": h}, theta - hyper["lr"] * hyper["weight_decay"] * theta - hyper["lr"] * u
