"""Focused tests of sophia_ref/estimators.py, each pinning behaviour a surviving mutant changed
(docs/MUTATION.md, "Results")."""

from __future__ import annotations

import pytest
import torch

from sophia_ref import estimators as E
from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def count_vjps(monkeypatch):
    """Record the number of cotangent rows of every batched vector-Jacobian product."""
    calls = []
    real = E._batched_vjp

    def spy(output, inputs, cotangents):
        calls.append(cotangents.shape[0])
        return real(output, inputs, cotangents)

    monkeypatch.setattr(E, "_batched_vjp", spy)
    return calls


# exact_diagonal batches its Hessian rows: ceil(n / chunk) products of chunk = _BATCH_ELEMENTS // n rows each
def test_exact_diagonal_batches_rows(monkeypatch):
    calls = count_vjps(monkeypatch)
    monkeypatch.setattr(E, "_BATCH_ELEMENTS", 12)
    x = torch.arange(1.0, 7.0, dtype=F64, requires_grad=True)               # n = 6: chunks of 2 rows
    [d] = exact_diagonal(lambda: (x ** 3).sum(), [x])
    assert torch.equal(d, 6 * x.detach())
    assert calls == [2, 2, 2]


# an empty parameter has an empty diagonal (no division by its zero size)
def test_exact_diagonal_of_empty_parameter():
    x = torch.ones(2, dtype=F64, requires_grad=True)
    e = torch.ones(0, dtype=F64, requires_grad=True)
    dx, de = exact_diagonal(lambda: (x ** 2).sum() + (e ** 2).sum() * (x ** 2).sum(), [x, e])
    assert torch.equal(dx, torch.full((2,), 2.0, dtype=F64)) and de.shape == (0,)


# Rademacher probes take both values -1 and +1 (and nothing else)
def test_rademacher_probe_has_both_signs():
    u = E._probe(torch.zeros(1000, dtype=F64), "rademacher", gen(0))
    assert set(u.tolist()) == {-1.0, 1.0}


# mode="forward": a parameter the loss does not use gets a zero estimate (not an error)
def test_forward_mode_unused_parameter_is_zero():
    x = torch.ones(3, dtype=F64, requires_grad=True)
    unused = torch.ones(2, dtype=F64, requires_grad=True)
    hx, hu = hutchinson(lambda: (x ** 2).sum(), [x, unused], probe="rademacher", generator=gen(1), mode="forward")
    assert torch.equal(hx, torch.full((3,), 2.0, dtype=F64)) and torch.equal(hu, torch.zeros(2, dtype=F64))


class _CubeNoJvp(torch.autograd.Function):
    """x**3 with a twice-differentiable backward and no jvp: forward-mode AD raises."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x ** 2


# mode="auto" falls back to double backward where forward mode is unsupported (mode="forward" raises)
def test_auto_mode_falls_back_to_double_backward():
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    f = lambda: _CubeNoJvp.apply(x).sum()
    [h] = hutchinson(f, [x], probe="rademacher", generator=gen(2), mode="auto")
    assert torch.equal(h, 6 * x.detach())                                     # diagonal Hessian: exact
    with pytest.raises((RuntimeError, NotImplementedError)):
        hutchinson(f, [x], probe="rademacher", generator=gen(2), mode="forward")


# logits must be at least 1-d with a non-empty last axis: a ValueError names what came back
@pytest.mark.parametrize("logits", [torch.tensor(1.0, dtype=F64), torch.zeros(2, 0, dtype=F64)])
def test_gnb_rejects_bad_logits(logits):
    w = torch.ones(1, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="logits_fn must return floating-point logits"):
        gnb(lambda: logits * w.sum(), [w], generator=gen(3))


# gnb = B * ghat**2, B the number of predictions (rows), not the vocabulary size; labels drawn from the generator
def test_gnb_is_batch_times_squared_sampled_gradient():
    torch.manual_seed(0)
    W = torch.randn(4, 3, dtype=F64, requires_grad=True)                   # B = 4 rows (via X), V = 3
    X = torch.randn(4, 4, dtype=F64)
    logits_fn = lambda: X @ W
    [got] = gnb(logits_fn, [W], generator=gen(4))
    logits = logits_fn()
    labels = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1, generator=gen(4)).reshape(-1)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), [W])
    assert torch.equal(got, 4 * g * g)


# gnb_expectation builds its (prediction, label) cotangents in blocks of at most _BATCH_ELEMENTS // (B V) pairs
def test_gnb_expectation_blocks(monkeypatch):
    torch.manual_seed(1)
    W = torch.randn(2, 3, dtype=F64, requires_grad=True)
    X = torch.randn(2, 2, dtype=F64)
    full = gnb_expectation(lambda: X @ W, [W])[0]
    calls = count_vjps(monkeypatch)
    monkeypatch.setattr(E, "_BATCH_ELEMENTS", 12)                          # B V = 6: blocks of 2 of the 6 pairs
    blocked = gnb_expectation(lambda: X @ W, [W])[0]
    assert calls == [2, 2, 2]
    torch.testing.assert_close(blocked, full, rtol=1e-14, atol=0)


# a gradient that does not depend on its own parameter (g_x = y) has zero curvature, found on the batched path
# (one vmapped product per parameter, no per-row fallback)
def test_gradient_independent_of_its_parameter_keeps_the_batched_path(monkeypatch):
    real, calls = torch.autograd.grad, []

    def spy(*args, **kwargs):
        calls.append(bool(kwargs.get("is_grads_batched", False)))
        return real(*args, **kwargs)

    x = torch.arange(1.0, 3.0, dtype=F64, requires_grad=True)
    y = torch.arange(3.0, 5.0, dtype=F64, requires_grad=True)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    dx, dy = exact_diagonal(lambda: (x * y).sum() + (y ** 2).sum(), [x, y])
    monkeypatch.undo()
    assert torch.equal(dx, torch.zeros(2, dtype=F64)) and torch.equal(dy, torch.full((2,), 2.0, dtype=F64))
    assert calls == [False, True, True]                 # the gradient, then one batched product per parameter
