"""Closed forms behind the estimator checks (SPEC section 2), and batched copies of zoo problems.

Oracle side only; :mod:`verification.checks.estimators` runs the reference's estimators against it.

- The Hessian, its diagonal and the Gauss-Newton diagonal of every zoo problem, from the zoo's
  hand-derived formulas in mpmath at :data:`DPS` = 50 digits, returned as float64 arrays.
- The measure of an estimated diagonal: per coordinate ``|d_i - H_ii| / max(|H_ii|, 0.1 max_j |H_ij|)``,
  plain relative error except where a diagonal entry is more than ten times smaller than the
  largest entry of its Hessian row. Such an entry is a near-cancellation (on the tanh network,
  Gauss-Newton part minus the residual term), and its float64 value cannot be more accurate than
  the rounding of the terms that cancel, whose size the row shows.
- The per-example cross-entropy gradients ``c[b, v, i] = J_b^T (p_b - e_v)`` of the softmax models in
  closed form, and the softmax probabilities: the law of one GNB draw (``B ghat_i^2`` with the label
  of each prediction drawn from ``p_b``) is built from them.
- *Copies*: a loss (or logits) of k independent copies of a problem, a float64 batched torch
  transcription of the zoo formula, with parameters ``theta`` of shape (k, dim). The Hessian is then
  block diagonal, so one Hutchinson call with one probe yields k independent single-probe estimates
  of the problem's diagonal; one GNB call sees ``B = k n`` predictions, so ``k`` times its output on
  copy c is exactly a single-copy GNB draw with ``B = n`` (``ghat_c`` is scaled by 1/k, ``B`` by k).
  :func:`validate_batched` checks a transcription against the zoo's float64 value and gradient.

The acceptance bands of the statistical checks are :mod:`verification.oracles.bands`.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .zoo import (FLOAT, LogisticRegression, Problem, RotatedQuadratic, Rosenbrock, SeparableQuadratic,
                  SoftmaxRegression, TanhNetwork, _SoftmaxModel, mp_ops)

DPS = 50
MP = mp_ops(DPS)
F64 = torch.float64

ROW_FLOOR = 0.1
"""Relative error of entry i is measured against ``max(|H_ii|, ROW_FLOOR * max_j |H_ij|)``."""


# ---------------------------------------------------------------------------------------------------------
# closed forms (mpmath, 50 digits), returned as float64 arrays
# ---------------------------------------------------------------------------------------------------------

def closed_hessian(problem: Problem, x: Sequence[float]) -> np.ndarray:
    """The Hessian at ``x``, in mpmath at 50 digits, rounded to float64."""
    return np.array([[float(v) for v in row] for row in problem.hessian(problem.convert(x, MP), MP)])


def closed_hessian_diagonal(problem: Problem, x: Sequence[float]) -> np.ndarray:
    """The Hessian diagonal at ``x``, in mpmath at 50 digits, rounded to float64."""
    return np.array([float(v) for v in problem.hessian_diagonal(problem.convert(x, MP), MP)])


def closed_gauss_newton(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    """The Gauss-Newton diagonal of the cross-entropy at ``x``, in mpmath at 50 digits, rounded to float64."""
    return np.array([float(v) for v in problem.gauss_newton_diagonal(problem.convert(x, MP), MP)])


def row_relative_error(estimate: np.ndarray, exact_diag: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``|d_i - H_ii| / max(|H_ii|, ROW_FLOOR * max_j |H_ij|)`` per coordinate."""
    scale = np.maximum(np.abs(exact_diag), ROW_FLOOR * np.abs(hessian).max(axis=1))
    scale = np.where(scale > 0, scale, np.finfo(float).tiny)
    return np.abs(estimate - exact_diag) / scale


def seed_of(*parts: str) -> int:
    """A seed named by its parts (CRC-32 of ``"/".join(parts)``)."""
    return zlib.crc32("/".join(parts).encode())


def evaluation_points(problem: Problem, quick: bool) -> list[list[float]]:
    """Start point and listed starts; the full run adds three seeded points around the start (N(0, 0.5^2))."""
    points = [list(problem.start)] + [list(s) for s in problem.starts]
    if not quick:
        gen = np.random.default_rng(seed_of("points", problem.name))
        points += [list(np.asarray(problem.start) + 0.5 * gen.standard_normal(problem.dim)) for _ in range(3)]
    return points


def per_example_gradients(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    """``c[b, v, i] = d CE(f_b, v) / d theta_i`` in closed form (float64): ``J_b^T (p_b - e_v)``."""
    xs = np.array(problem.x)
    f = np.array(problem.logits(list(x), FLOAT))
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = problem.classes
    delta = p[:, None, :] - np.eye(classes)[None, :, :]  # (n, v, k): p_b - e_v
    theta = np.asarray(x, dtype=float)
    if isinstance(problem, SoftmaxRegression):
        return np.einsum("bi,bvk->bvik", xs, delta).reshape(len(xs), classes, -1)
    d, m = problem.features, problem.hidden
    w1, w2 = theta[: d * m].reshape(d, m), theta[d * m:].reshape(m, classes)
    a = np.tanh(xs @ w1)  # (n, m)
    dw2 = np.einsum("bj,bvk->bvjk", a, delta).reshape(len(xs), classes, -1)
    back = np.einsum("jk,bvk->bvj", w2, delta) * (1 - a * a)[:, None, :]  # (n, v, m)
    dw1 = np.einsum("bi,bvj->bvij", xs, back).reshape(len(xs), classes, -1)
    return np.concatenate([dw1, dw2], axis=2)


def softmax_probabilities(problem: _SoftmaxModel, x: Sequence[float]) -> np.ndarray:
    """``p[b, v]``: the model's predicted class probabilities at ``x`` (float64 closed form)."""
    f = np.array(problem.logits(list(x), FLOAT))
    p = np.exp(f - f.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)



# ---------------------------------------------------------------------------------------------------------
# batched torch transcriptions of zoo problems: k independent copies, theta of shape (k, dim)
# ---------------------------------------------------------------------------------------------------------

def batched_loss(problem: Problem) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta (k, dim) -> sum_c L(theta_c)``: the zoo formula, vectorised over copies (float64)."""
    if isinstance(problem, SoftmaxRegression | TanhNetwork):
        logits = batched_logits(problem)
        labels = torch.tensor(problem.labels)
        n, classes, mu = len(problem.labels), problem.classes, problem.mu

        def loss(theta):
            f = logits(theta)  # (k, n, classes)
            ce = F.cross_entropy(f.reshape(-1, classes), labels.repeat(theta.shape[0]), reduction="sum") / n
            return ce + 0.5 * mu * (theta * theta).sum()
        return loss
    if isinstance(problem, RotatedQuadratic):
        a = torch.tensor(problem.matrix(FLOAT), dtype=F64)
        c = torch.tensor(problem.c, dtype=F64)
        return lambda theta: 0.5 * (((theta - c) @ a.T) * (theta - c)).sum()
    if isinstance(problem, SeparableQuadratic):
        a, c = torch.tensor(problem.a, dtype=F64), torch.tensor(problem.c, dtype=F64)
        return lambda theta: 0.5 * (a * (theta - c) ** 2).sum()
    if isinstance(problem, LogisticRegression):
        x, y = torch.tensor(problem.x, dtype=F64), torch.tensor(problem.y, dtype=F64)
        n, mu = len(problem.y), problem.mu
        return lambda theta: (F.softplus(-(theta @ x.T) * y).sum() / n + 0.5 * mu * (theta * theta).sum())
    if isinstance(problem, Rosenbrock):
        return lambda theta: ((1 - theta[:, 0]) ** 2 + 100 * (theta[:, 1] - theta[:, 0] ** 2) ** 2).sum()
    raise NotImplementedError(f"no batched transcription of {problem.name!r}")


def batched_logits(problem: _SoftmaxModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta (k, dim) -> logits (k, n, classes)`` of the zoo's softmax models."""
    x = torch.tensor(problem.x, dtype=F64)
    if isinstance(problem, SoftmaxRegression):
        d, classes = problem.features, problem.classes
        return lambda theta: x @ theta.reshape(-1, d, classes)
    if isinstance(problem, TanhNetwork):
        d, m, classes = problem.features, problem.hidden, problem.classes

        def logits(theta):
            w1 = theta[:, : d * m].reshape(-1, d, m)
            w2 = theta[:, d * m:].reshape(-1, m, classes)
            return torch.tanh(x @ w1) @ w2
        return logits
    raise NotImplementedError(f"no batched logits of {problem.name!r}")


def validate_batched(problem: Problem, x: Sequence[float]) -> float:
    """Largest disagreement of the batched transcription with the zoo in float64 (value, gradient, two
    copies), relative to ``1 + |.|``; raises if above 1e-12 (the transcription would not be the problem)."""
    theta = torch.tensor([list(x), list(x)], dtype=F64, requires_grad=True)
    value = batched_loss(problem)(theta)
    (grad,) = torch.autograd.grad(value, theta)
    v_ref = problem.value(list(x), FLOAT)
    g_ref = np.array(problem.grad(list(x), FLOAT))
    err = max(abs(value.item() / 2 - v_ref) / (1 + abs(v_ref)),
              float(np.max(np.abs(grad.numpy() - g_ref[None]) / (1 + np.abs(g_ref)))))
    if isinstance(problem, _SoftmaxModel):
        f = batched_logits(problem)(theta.detach())[0].numpy()
        f_ref = np.array(problem.logits(list(x), FLOAT))
        err = max(err, float(np.max(np.abs(f - f_ref) / (1 + np.abs(f_ref)))))
    if not err <= 1e-12:
        raise RuntimeError(f"batched transcription of {problem.name!r} disagrees with the zoo by {err:.3g}")
    return err
