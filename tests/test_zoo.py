"""The problem zoo's closed forms are right: gradients and Hessians against central differences
in mpmath at 50 digits, and the torch float64 evaluation against the closed form."""

from __future__ import annotations

import pytest
import torch

from verification.oracles.zoo import SoftmaxRegression, TanhNetwork, all_problems, mp_ops

MP = mp_ops(50)
PROBLEMS = all_problems(quick=True)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_closed_forms_match_central_differences_in_mpmath(problem):
    """Central differences with step 1e-15 at 50 digits: truncation ~ 1e-30 |f'''|, cancellation
    ~ 1e-50 / 1e-15 = 1e-35, so agreement to 1e-25 (relative to 1 + |value|) is a real check."""
    x = problem.convert(problem.start, MP)
    g, h = problem.grad(x, MP), problem.hessian(x, MP)
    step = MP.num(1e-15)
    for i in range(problem.dim):
        up, down = list(x), list(x)
        up[i] += step
        down[i] -= step
        fd = (problem.value(up, MP) - problem.value(down, MP)) / (2 * step)
        assert abs(fd - g[i]) <= 1e-25 * (1 + abs(g[i]))
        g_up, g_down = problem.grad(up, MP), problem.grad(down, MP)
        for j in range(problem.dim):
            assert abs((g_up[j] - g_down[j]) / (2 * step) - h[j][i]) <= 1e-25 * (1 + abs(h[j][i]))
            assert h[i][j] == h[j][i]
    assert problem.hessian_diagonal(x, MP) == [h[i][i] for i in range(problem.dim)]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_torch_evaluation_agrees_with_the_closed_form(problem):
    """torch autograd of the float64 formula vs the closed-form gradient at 50 digits: a handful of
    roundings per term, so 1e-13 relative to 1 + |g| (measured worst ~5e-16)."""
    theta = torch.tensor(problem.start, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(problem.torch_loss(theta)(), theta)
    exact = problem.grad(problem.convert(problem.start, MP), MP)
    for a, b in zip(g.tolist(), exact):
        assert abs(a - float(b)) <= 1e-13 * (1 + abs(float(b)))


def test_gauss_newton_equals_the_hessian_for_linear_logits_but_not_for_tanh():
    soft = SoftmaxRegression()
    x = soft.convert(soft.start, MP)
    gn, diag = soft.gauss_newton_diagonal(x, MP), soft.hessian_diagonal(x, MP)
    assert all(abs(a + soft.mu - b) < 1e-45 for a, b in zip(gn, diag))
    net = TanhNetwork()
    x = net.convert(net.start, MP)
    gn, diag = net.gauss_newton_diagonal(x, MP), net.hessian_diagonal(x, MP)
    w1 = net.features * net.hidden
    assert all(abs(a + net.mu - b) < 1e-45 for a, b in zip(gn[w1:], diag[w1:]))  # W2: logits linear in W2
    gaps = [abs(a + net.mu - b) / abs(b) for a, b in zip(gn[:w1], diag[:w1])]
    assert max(gaps) > 1e-2  # W1: the residual term -2 s a (1 - a^2) is real curvature GN leaves out
