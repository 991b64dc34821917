"""The problem zoo: losses with value, gradient and Hessian in closed form, in any number system.

Every formula here is written once, over scalars, against a small :class:`Ops`
backend, so the same code evaluates in float64 (:data:`FLOAT`), in mpmath at any
precision (:func:`mp_ops`) and in torch float64 with autograd (:func:`torch_ops`, for
feeding the reference's estimators). Nothing here imports ``sophia_ref``: the
derivatives are derived by hand (docstrings give them) and checked against
finite differences in mpmath by the tests.

A parameter vector is a list of numbers; matrices are lists of rows. The data of
each problem (design matrices, labels, rotations) are float64 numbers drawn from
a seeded generator and taken as exact in every backend.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import mpmath

Vector = list
Matrix = list


@dataclass(frozen=True)
class Ops:
    """Scalar arithmetic of one number system: ``num`` turns a Python float into one of its numbers."""

    name: str
    num: Callable[[float], Any]
    exp: Callable[[Any], Any]
    log: Callable[[Any], Any]
    tanh: Callable[[Any], Any]


FLOAT = Ops("float64", float, math.exp, math.log, math.tanh)


def mp_ops(dps: int = 50) -> Ops:
    """mpmath at ``dps`` decimal digits, in a private context (the global mpmath precision is untouched)."""
    ctx = mpmath.MPContext()
    ctx.dps = dps
    return Ops(f"mpmath {dps} digits", ctx.mpf, ctx.exp, ctx.log, ctx.tanh)


@functools.lru_cache(maxsize=None)
def torch_ops() -> Ops:
    """torch float64 0-d tensors, so autograd sees the formulas (torch is imported on first use)."""
    import torch

    return Ops("torch float64", lambda v: torch.as_tensor(v, dtype=torch.float64), torch.exp, torch.log, torch.tanh)


# -- small helpers over any backend ---------------------------------------------------------------------------

def _sum(values, ops: Ops):
    total = ops.num(0.0)
    for v in values:
        total = total + v
    return total


def _softmax(logits: Sequence, ops: Ops) -> list:
    top = max(logits)
    e = [ops.exp(f - top) for f in logits]
    z = _sum(e, ops)
    return [v / z for v in e]


def _log_sum_exp(logits: Sequence, ops: Ops):
    top = max(logits)
    return top + ops.log(_sum((ops.exp(f - top) for f in logits), ops))


def _zeros(n: int, m: int, ops: Ops) -> Matrix:
    return [[ops.num(0.0) for _ in range(m)] for _ in range(n)]


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _gauss_matrix(rng: random.Random, n: int, m: int) -> list[list[float]]:
    return [[rng.gauss(0.0, 1.0) for _ in range(m)] for _ in range(n)]


# -- the problems ---------------------------------------------------------------------------------------------

@dataclass
class Problem:
    """A loss L: R^dim -> R with closed-form derivatives. Subclasses define the three formulas.

    ``start`` is a start point (Python floats); ``convex`` says whether L is
    convex; ``starts`` may list more start points for experiments that need them.
    """

    name: str
    dim: int
    start: list[float]
    convex: bool
    starts: list[list[float]] = field(default_factory=list)

    def value(self, x: Vector, ops: Ops):
        raise NotImplementedError

    def grad(self, x: Vector, ops: Ops) -> Vector:
        raise NotImplementedError

    def hessian(self, x: Vector, ops: Ops) -> Matrix:
        raise NotImplementedError

    def hessian_diagonal(self, x: Vector, ops: Ops) -> Vector:
        h = self.hessian(x, ops)
        return [h[i][i] for i in range(self.dim)]

    def convert(self, x: Sequence[float], ops: Ops) -> Vector:
        return [ops.num(float(v)) for v in x]

    def torch_loss(self, theta) -> Callable[[], Any]:
        """A no-argument callable giving L at the current value of the float64 tensor ``theta`` (autograd on)."""
        return lambda: self.value(list(theta.unbind()), torch_ops())


class SeparableQuadratic(Problem):
    """``L = 1/2 sum_i a_i (x_i - c_i)^2``, ``a_i = kappa^(i/(d-1))``: gradient ``a (x - c)``, Hessian ``diag(a)``."""

    def __init__(self, kappa: float, dim: int = 6, seed: int = 0):
        rng = _rng(seed)
        self.kappa = kappa
        self.a = [kappa ** (i / (dim - 1)) for i in range(dim)]
        self.c = [rng.uniform(-2.0, 2.0) for _ in range(dim)]
        start = [ci + rng.uniform(-3.0, 3.0) for ci in self.c]
        super().__init__(f"separable quadratic, kappa={kappa:g}", dim, start, True)

    def value(self, x, ops):
        return _sum((ops.num(0.5) * ops.num(a) * (xi - ops.num(c)) ** 2 for a, c, xi in zip(self.a, self.c, x)), ops)

    def grad(self, x, ops):
        return [ops.num(a) * (xi - ops.num(c)) for a, c, xi in zip(self.a, self.c, x)]

    def hessian(self, x, ops):
        h = _zeros(self.dim, self.dim, ops)
        for i, a in enumerate(self.a):
            h[i][i] = ops.num(a)
        return h

    def minimizer(self) -> list[float]:
        return list(self.c)


class RotatedQuadratic(Problem):
    """``L = 1/2 (x - c)^T A (x - c)``, ``A = Q diag(a) Q^T`` with Q from Gram-Schmidt of a seeded Gaussian
    matrix (its float64 entries are taken as exact, so A is exactly symmetric positive definite and its
    condition number is kappa to float64 accuracy). Gradient ``A (x - c)``, Hessian ``A``."""

    def __init__(self, kappa: float, dim: int = 6, seed: int = 0):
        rng = _rng(seed + 1000)
        self.kappa = kappa
        a = [kappa ** (i / (dim - 1)) for i in range(dim)]
        q: list[list[float]] = []
        for row in _gauss_matrix(rng, dim, dim):  # Gram-Schmidt, float64
            for prev in q:
                dot = sum(r * p for r, p in zip(row, prev))
                row = [r - dot * p for r, p in zip(row, prev)]
            norm = math.sqrt(sum(r * r for r in row))
            q.append([r / norm for r in row])
        self.q, self.a = q, a  # rows of q are the eigenvectors
        self.c = [rng.uniform(-2.0, 2.0) for _ in range(dim)]
        start = [ci + rng.uniform(-3.0, 3.0) for ci in self.c]
        super().__init__(f"rotated quadratic, kappa={kappa:g}", dim, start, True)

    def matrix(self, ops) -> Matrix:
        n = self.dim
        return [[_sum((ops.num(self.q[k][i]) * ops.num(self.a[k]) * ops.num(self.q[k][j]) for k in range(n)), ops)
                 for j in range(n)] for i in range(n)]

    def value(self, x, ops):
        r = [xi - ops.num(c) for xi, c in zip(x, self.c)]
        g = self.grad(x, ops)
        return ops.num(0.5) * _sum((ri * gi for ri, gi in zip(r, g)), ops)

    def grad(self, x, ops):
        a = self.matrix(ops)
        r = [xi - ops.num(c) for xi, c in zip(x, self.c)]
        return [_sum((aij * rj for aij, rj in zip(row, r)), ops) for row in a]

    def hessian(self, x, ops):
        return self.matrix(ops)

    def minimizer(self) -> list[float]:
        return list(self.c)


class LogisticRegression(Problem):
    """``L = (1/n) sum_b log(1 + exp(-y_b w.x_b)) + (mu/2) |w|^2``, labels in {-1, +1}.

    With ``s_b = sigma(-y_b w.x_b)``: gradient ``-(1/n) sum_b s_b y_b x_b + mu w``;
    Hessian ``(1/n) sum_b s_b (1 - s_b) x_b x_b^T + mu I``. Strictly convex.
    """

    def __init__(self, n: int = 24, dim: int = 3, mu: float = 1e-2, seed: int = 0):
        rng = _rng(seed + 2000)
        truth = [rng.gauss(0.0, 1.5) for _ in range(dim)]
        self.x = _gauss_matrix(rng, n, dim)
        self.y = [1.0 if sum(t * v for t, v in zip(truth, row)) + rng.gauss(0.0, 1.0) > 0 else -1.0 for row in self.x]
        self.mu = mu
        super().__init__("logistic regression", dim, [rng.uniform(-1.0, 1.0) for _ in range(dim)], True)

    def _margins(self, w, ops):
        return [ops.num(y) * _sum((wi * ops.num(v) for wi, v in zip(w, row)), ops) for row, y in zip(self.x, self.y)]

    def value(self, w, ops):
        n = len(self.x)
        loss = _sum((_log_sum_exp([ops.num(0.0), -z], ops) for z in self._margins(w, ops)), ops) / ops.num(n)
        return loss + ops.num(self.mu / 2) * _sum((wi * wi for wi in w), ops)

    def _s(self, w, ops):
        return [ops.num(1.0) / (ops.num(1.0) + ops.exp(z)) for z in self._margins(w, ops)]  # sigma(-z)

    def grad(self, w, ops):
        n, s = len(self.x), self._s(w, ops)
        return [-_sum((sb * ops.num(y * row[i]) for sb, y, row in zip(s, self.y, self.x)), ops) / ops.num(n)
                + ops.num(self.mu) * w[i] for i in range(self.dim)]

    def hessian(self, w, ops):
        n, s = len(self.x), self._s(w, ops)
        h = [[_sum((sb * (ops.num(1.0) - sb) * ops.num(row[min(i, j)]) * ops.num(row[max(i, j)])
                    for sb, row in zip(s, self.x)), ops) / ops.num(n) for j in range(self.dim)] for i in range(self.dim)]
        for i in range(self.dim):
            h[i][i] = h[i][i] + ops.num(self.mu)
        return h


class _SoftmaxModel(Problem):
    """Mean softmax cross-entropy over n examples plus ``(mu/2) |theta|^2``; subclasses give the logits."""

    labels: list[int]
    classes: int
    mu: float

    def logits(self, theta, ops) -> Matrix:
        raise NotImplementedError

    def cross_entropy(self, theta, ops):
        rows = self.logits(theta, ops)
        n = len(rows)
        return _sum((_log_sum_exp(f, ops) - f[y] for f, y in zip(rows, self.labels)), ops) / ops.num(n)

    def value(self, theta, ops):
        return self.cross_entropy(theta, ops) + ops.num(self.mu / 2) * _sum((t * t for t in theta), ops)

    def gauss_newton_diagonal(self, theta, ops) -> Vector:
        """Diagonal of the Gauss-Newton matrix of the mean cross-entropy (no ridge):
        ``(1/n) sum_b diag(J_b^T (diag p_b - p_b p_b^T) J_b)``."""
        raise NotImplementedError

    def torch_logits(self, theta) -> Callable[[], Any]:
        """No-argument callable: the (n, classes) logits tensor at the current ``theta`` (autograd on)."""
        import torch

        return lambda: torch.stack([torch.stack(row) for row in self.logits(list(theta.unbind()), torch_ops())])


class SoftmaxRegression(_SoftmaxModel):
    """Linear logits ``f_b = x_b W`` (W is d x K, flattened row-major), mean CE + ``(mu/2)|W|^2``.

    With ``A_b = diag(p_b) - p_b p_b^T``: gradient ``(1/n) sum_b x_bi (p_b - e_{y_b})_k + mu W_ik``;
    Hessian ``H[(i,k),(j,l)] = (1/n) sum_b x_bi x_bj A_b[k,l] + mu [i=j][k=l]``. The logits are
    linear in W, so the Gauss-Newton matrix of the CE is exactly its Hessian.
    """

    def __init__(self, n: int = 12, features: int = 3, classes: int = 3, mu: float = 1e-2, seed: int = 0):
        rng = _rng(seed + 3000)
        self.x = _gauss_matrix(rng, n, features)
        self.labels = [rng.randrange(classes) for _ in range(n)]
        self.features, self.classes, self.mu = features, classes, mu
        start = [rng.uniform(-1.0, 1.0) for _ in range(features * classes)]
        super().__init__("softmax regression", features * classes, start, True)

    def logits(self, w, ops):
        d, k = self.features, self.classes
        return [[_sum((ops.num(row[i]) * w[i * k + c] for i in range(d)), ops) for c in range(k)] for row in self.x]

    def _probs(self, w, ops):
        return [_softmax(f, ops) for f in self.logits(w, ops)]

    def grad(self, w, ops):
        d, k, n = self.features, self.classes, len(self.x)
        p = self._probs(w, ops)
        out = []
        for i in range(d):
            for c in range(k):
                s = _sum((ops.num(row[i]) * (pb[c] - ops.num(1.0 if y == c else 0.0))
                          for row, pb, y in zip(self.x, p, self.labels)), ops)
                out.append(s / ops.num(n) + ops.num(self.mu) * w[i * k + c])
        return out

    def _ce_hessian(self, w, ops) -> Matrix:
        d, k, n = self.features, self.classes, len(self.x)
        p = self._probs(w, ops)
        dim = d * k
        h = _zeros(dim, dim, ops)
        for row, pb in zip(self.x, p):
            for i in range(d):
                for c in range(k):
                    for j in range(d):
                        for e in range(k):
                            a = (pb[c] if c == e else ops.num(0.0)) - pb[c] * pb[e]
                            xx = ops.num(row[min(i, j)]) * ops.num(row[max(i, j)])  # the same rounding both ways
                            h[i * k + c][j * k + e] = h[i * k + c][j * k + e] + xx * a
        return [[v / ops.num(n) for v in r] for r in h]

    def hessian(self, w, ops):
        h = self._ce_hessian(w, ops)
        for i in range(self.dim):
            h[i][i] = h[i][i] + ops.num(self.mu)
        return h

    def gauss_newton_diagonal(self, w, ops):
        h = self._ce_hessian(w, ops)
        return [h[i][i] for i in range(self.dim)]


class TanhNetwork(_SoftmaxModel):
    """Two layers: ``a_b = tanh(x_b W1)`` (W1: d x m), ``f_b = a_b W2`` (W2: m x K); theta = (W1, W2) flattened
    row-major; mean CE + ``(mu/2)|theta|^2``. Non-convex.

    With ``delta_b = p_b - e_{y_b}``, ``A_b = diag(p_b) - p_b p_b^T``, ``s_bj = (W2 delta_b)_j``,
    ``t_bj = 1 - a_bj^2`` and ``M_b = W2 A_b W2^T``:

    - gradient: ``dW2[j,k] = (1/n) sum_b a_bj delta_bk``; ``dW1[i,j] = (1/n) sum_b x_bi s_bj t_bj``;
    - Hessian, W2-W2: ``(1/n) sum_b a_bj a_bj' A_b[k,k']``;
    - W1-W2 (``dW1[i,j] dW2[j',k']``): ``(1/n) sum_b x_bi t_bj ([j=j'] delta_bk' + (W2 A_b)[j,k'] a_bj')``;
    - W1-W1: ``(1/n) sum_b x_bi x_bi' (t_bj t_bj' M_b[j,j'] - [j=j'] 2 s_bj a_bj t_bj)``;
    - plus ``mu`` on the diagonal. The Gauss-Newton matrix keeps the ``J^T A J`` terms only: it
      drops ``[j=j'] delta_bk'`` (W1-W2) and ``- 2 s a t`` (W1-W1), so on W1 its diagonal differs
      from the Hessian's.
    """

    def __init__(self, n: int = 8, features: int = 3, hidden: int = 4, classes: int = 3, mu: float = 1e-2,
                 seed: int = 0):
        rng = _rng(seed + 4000)
        self.x = _gauss_matrix(rng, n, features)
        self.labels = [rng.randrange(classes) for _ in range(n)]
        self.features, self.hidden, self.classes, self.mu = features, hidden, classes, mu
        dim = features * hidden + hidden * classes
        start = [rng.gauss(0.0, 0.8) for _ in range(dim)]
        super().__init__("tanh network", dim, start, False)

    def _split(self, theta):
        d, m, k = self.features, self.hidden, self.classes
        w1 = [[theta[i * m + j] for j in range(m)] for i in range(d)]
        off = d * m
        w2 = [[theta[off + j * k + c] for c in range(k)] for j in range(m)]
        return w1, w2

    def _forward(self, theta, ops):
        w1, w2 = self._split(theta)
        d, m, k = self.features, self.hidden, self.classes
        acts, logits = [], []
        for row in self.x:
            a = [ops.tanh(_sum((ops.num(row[i]) * w1[i][j] for i in range(d)), ops)) for j in range(m)]
            acts.append(a)
            logits.append([_sum((a[j] * w2[j][c] for j in range(m)), ops) for c in range(k)])
        return w2, acts, logits

    def logits(self, theta, ops):
        return self._forward(theta, ops)[2]

    def _terms(self, theta, ops):
        w2, acts, logits = self._forward(theta, ops)
        m, k = self.hidden, self.classes
        out = []
        for a, f, y in zip(acts, logits, self.labels):
            p = _softmax(f, ops)
            delta = [p[c] - ops.num(1.0 if c == y else 0.0) for c in range(k)]
            amat = [[(p[c] if c == e else ops.num(0.0)) - p[c] * p[e] for e in range(k)] for c in range(k)]
            s = [_sum((w2[j][c] * delta[c] for c in range(k)), ops) for j in range(m)]
            t = [ops.num(1.0) - aj * aj for aj in a]
            w2a = [[_sum((w2[j][c] * amat[c][e] for c in range(k)), ops) for e in range(k)] for j in range(m)]
            mmat = [[_sum((w2a[j][e] * w2[jj][e] for e in range(k)), ops) for jj in range(m)] for j in range(m)]
            out.append((a, delta, amat, s, t, w2a, mmat))
        return out

    def _index(self):
        d, m, k = self.features, self.hidden, self.classes
        w1 = [("w1", i, j) for i in range(d) for j in range(m)]
        w2 = [("w2", j, c) for j in range(m) for c in range(k)]
        return w1 + w2

    def grad(self, theta, ops):
        n = len(self.x)
        terms = self._terms(theta, ops)
        out = []
        for idx, (kind, r, c) in enumerate(self._index()):
            if kind == "w1":
                g = _sum((ops.num(row[r]) * s[c] * t[c] for row, (a, delta, amat, s, t, w2a, mm) in zip(self.x, terms)), ops)
            else:
                g = _sum((a[r] * delta[c] for (a, delta, amat, s, t, w2a, mm) in terms), ops)
            out.append(g / ops.num(n) + ops.num(self.mu) * theta[idx])
        return out

    def _curvature(self, theta, ops, gauss_newton: bool, diagonal_only: bool):
        n = len(self.x)
        terms = self._terms(theta, ops)
        index = self._index()
        dim = len(index)
        h = _zeros(dim, dim, ops)
        for row, (a, delta, amat, s, t, w2a, mmat) in zip(self.x, terms):
            for p, (kp, rp, cp) in enumerate(index):
                for q in ([p] if diagonal_only else range(p, dim)):
                    kq, rq, cq = index[q]
                    if kp == "w1" and kq == "w1":   # (i, j), (i', j')
                        v = t[cp] * t[cq] * mmat[cp][cq]
                        if cp == cq and not gauss_newton:
                            v = v - ops.num(2.0) * s[cp] * a[cp] * t[cp]
                        v = ops.num(row[rp]) * ops.num(row[rq]) * v
                    elif kp == "w2" and kq == "w2":  # (j, k), (j', k')
                        v = a[rp] * a[rq] * amat[cp][cq]
                    else:                           # W1 (i, j) with W2 (j', k')
                        (i, j), (jj, kk) = ((rp, cp), (rq, cq)) if kp == "w1" else ((rq, cq), (rp, cp))
                        v = w2a[j][kk] * a[jj]
                        if j == jj and not gauss_newton:
                            v = v + delta[kk]
                        v = ops.num(row[i]) * t[j] * v
                    h[p][q] = h[p][q] + v
        for p in range(dim):
            for q in range(p, dim):
                h[p][q] = h[p][q] / ops.num(n)
                h[q][p] = h[p][q]
        return h

    def hessian(self, theta, ops):
        h = self._curvature(theta, ops, gauss_newton=False, diagonal_only=False)
        for i in range(self.dim):
            h[i][i] = h[i][i] + ops.num(self.mu)
        return h

    def hessian_diagonal(self, theta, ops):
        h = self._curvature(theta, ops, gauss_newton=False, diagonal_only=True)
        return [h[i][i] + ops.num(self.mu) for i in range(self.dim)]

    def gauss_newton_diagonal(self, theta, ops):
        h = self._curvature(theta, ops, gauss_newton=True, diagonal_only=True)
        return [h[i][i] for i in range(self.dim)]


class PaperToy(Problem):
    """SPEC section 3: ``L1(x) + L2(y)``, ``L1 = 8 (x-1)^2 q(x)`` with ``q = c x^2 + 2x + 1``, ``c = 1.3``,
    ``L2 = (y - 4)^2 / 2``. Derivatives in product form, so they are exact for c as stored (the float
    nearest 1.3): ``L1' = 16 (x-1) q + 8 (x-1)^2 q'``, ``L1'' = 16 q + 32 (x-1) q' + 8 (x-1)^2 q''``,
    ``q' = 2cx + 2``, ``q'' = 2c``. L1'' < 0 for -0.3655 < x < 0.5963. Minimizer (1, 4); saddle
    (0, 4) (L1'(0) = -16 + 16 = 0 exactly); a local minimum near (-0.654, 4)."""

    NONCONVEX_STARTS = [[0.3, 1.0], [0.45, 0.0], [-0.3, 2.0], [0.1, 7.0], [0.55, 6.0]]
    C = 1.3

    def __init__(self):
        super().__init__("paper 2-D problem", 2, [0.3, 1.0], False, [list(s) for s in self.NONCONVEX_STARTS])

    def _q(self, x, ops):
        c = ops.num(self.C)
        return c * x * x + ops.num(2.0) * x + ops.num(1.0), ops.num(2.0) * c * x + ops.num(2.0), ops.num(2.0) * c

    def value(self, v, ops):
        x, y = v
        q, _, _ = self._q(x, ops)
        return ops.num(8.0) * (x - ops.num(1.0)) ** 2 * q + ops.num(0.5) * (y - ops.num(4.0)) ** 2

    def grad(self, v, ops):
        x, y = v
        q, dq, _ = self._q(x, ops)
        r = x - ops.num(1.0)
        return [ops.num(16.0) * r * q + ops.num(8.0) * r * r * dq, y - ops.num(4.0)]

    def hessian(self, v, ops):
        x, _ = v
        q, dq, ddq = self._q(x, ops)
        r = x - ops.num(1.0)
        return [[ops.num(16.0) * q + ops.num(32.0) * r * dq + ops.num(8.0) * r * r * ddq, ops.num(0.0)],
                [ops.num(0.0), ops.num(1.0)]]


class Rosenbrock(Problem):
    """``(1 - x)^2 + 100 (y - x^2)^2``: gradient ``(-2(1-x) - 400x(y-x^2), 200(y-x^2))``,
    Hessian ``[[2 - 400y + 1200x^2, -400x], [-400x, 200]]``. Minimizer (1, 1)."""

    def __init__(self):
        super().__init__("Rosenbrock", 2, [-1.2, 1.0], False)

    def value(self, v, ops):
        x, y = v
        return (ops.num(1.0) - x) ** 2 + ops.num(100.0) * (y - x * x) ** 2

    def grad(self, v, ops):
        x, y = v
        return [ops.num(-2.0) * (ops.num(1.0) - x) - ops.num(400.0) * x * (y - x * x), ops.num(200.0) * (y - x * x)]

    def hessian(self, v, ops):
        x, y = v
        off = ops.num(-400.0) * x
        return [[ops.num(2.0) - ops.num(400.0) * y + ops.num(1200.0) * x * x, off], [off, ops.num(200.0)]]


class DoubleWell(Problem):
    """``sum_i (x_i^2 - 1)^2 + b_i x_i`` (quartic, non-convex for |x_i| < 1/sqrt 3), tilts b = 0.3, -0.2, ...
    Gradient ``4x(x^2 - 1) + b``, Hessian ``diag(12x^2 - 4)``."""

    def __init__(self, dim: int = 2):
        self.tilt = [0.3 if i % 2 == 0 else -0.2 for i in range(dim)]
        super().__init__("quartic double well", dim, [0.1 * (-1) ** i for i in range(dim)], False)

    def value(self, x, ops):
        return _sum(((xi * xi - ops.num(1.0)) ** 2 + ops.num(b) * xi for xi, b in zip(x, self.tilt)), ops)

    def grad(self, x, ops):
        return [ops.num(4.0) * xi * (xi * xi - ops.num(1.0)) + ops.num(b) for xi, b in zip(x, self.tilt)]

    def hessian(self, x, ops):
        h = _zeros(self.dim, self.dim, ops)
        for i, xi in enumerate(x):
            h[i][i] = ops.num(12.0) * xi * xi - ops.num(4.0)
        return h


class Saddle(Problem):
    """``(x^2 - y^2) / 2``: a pure saddle at the origin, unbounded below. Gradient ``(x, -y)``, Hessian ``diag(1, -1)``."""

    def __init__(self):
        super().__init__("pure saddle", 2, [0.5, 1e-3], False)

    def value(self, v, ops):
        x, y = v
        return ops.num(0.5) * (x * x - y * y)

    def grad(self, v, ops):
        x, y = v
        return [x, -y]

    def hessian(self, v, ops):
        return [[ops.num(1.0), ops.num(0.0)], [ops.num(0.0), ops.num(-1.0)]]


def convex_problems(quick: bool = False) -> list[Problem]:
    kappas = [1.0, 1e4, 1e8] if quick else [1.0, 1e2, 1e4, 1e6, 1e8]
    return ([SeparableQuadratic(k) for k in kappas] + [RotatedQuadratic(k) for k in kappas]
            + [LogisticRegression(), SoftmaxRegression()])


def nonconvex_problems() -> list[Problem]:
    return [PaperToy(), Rosenbrock(), DoubleWell(), Saddle(), TanhNetwork()]


def all_problems(quick: bool = False) -> list[Problem]:
    return convex_problems(quick) + nonconvex_problems()
