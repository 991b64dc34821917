"""sophia_ref.fast.gnb_refresh: the same map from labels to estimate as the paper's GNB, labels drawn from
softmax by Gumbel-max, equal in distribution to sophia_ref.gnb, bounded float32 workspace, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sophia_ref import gnb as reference_gnb
from sophia_ref import gnb_expectation
from sophia_ref.fast import Sophia, gnb_refresh, sample_labels
from sophia_ref.fast import gnb as fast_gnb_module

# a fixed seed makes each statistical test deterministic; the threshold is its false-alarm rate over seeds
P_FLOOR = 1e-4


class TinyLM(torch.nn.Module):
    """Embedding -> tanh -> linear head: logits (B, T, V), every parameter reached."""

    def __init__(self, vocab=4, width=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, width, generator=g))
        self.head = torch.nn.Parameter(torch.randn(vocab, width, generator=g) * 1.5)
        self.bias = torch.nn.Parameter(torch.randn(vocab, generator=g))

    def forward(self, tokens):
        return torch.tanh(self.emb[tokens]) @ self.head.T + self.bias


def _tokens(batch=3, seq=2, vocab=4, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _oracle(model, tokens, labels):
    """B * g * g in float64 with g = grad of the mean cross-entropy at the given labels (an independent path:
    a float64 copy of the model and torch's cross_entropy)."""
    params = [p.detach().double().requires_grad_() for p in (model.emb, model.head, model.bias)]
    logits = torch.tanh(params[0][tokens]) @ params[1].T + params[2]
    flat = logits.reshape(-1, logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(flat, labels.reshape(-1))
    grads = torch.autograd.grad(loss, params)
    return [flat.shape[0] * g * g for g in grads]


@pytest.mark.parametrize("chunk_bytes", [1, 16, fast_gnb_module.DEFAULT_CHUNK_BYTES])
def test_estimate_at_given_labels_matches_the_float64_definition(monkeypatch, chunk_bytes):
    # labels fixed (the argmax of each row), so only the map from labels to estimate is tested, in chunks of one
    # row (chunk_bytes=1), of one row of V=4 float32 (16) and all rows at once
    model, tokens = TinyLM(), _tokens(batch=5, seq=3)
    monkeypatch.setattr(fast_gnb_module, "sample_labels", lambda chunk, generator=None: chunk.argmax(-1))
    got = gnb_refresh(model, tokens, chunk_bytes=chunk_bytes)
    want = _oracle(model, tokens, model(tokens).argmax(-1))
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        # float32 forward and backward of a depth-2 model: a few float32 ulps of the largest entry
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_sub_batch_uses_the_first_examples(monkeypatch):
    model, tokens = TinyLM(), _tokens(batch=6, seq=2)
    monkeypatch.setattr(fast_gnb_module, "sample_labels", lambda chunk, generator=None: chunk.argmin(-1))
    got = gnb_refresh(model, tokens, sub_batch=2)
    want = _oracle(model, tokens[:2], model(tokens[:2]).argmin(-1))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def _chi_square_p(counts, probs):
    return stats.chisquare(counts, probs * counts.sum()).pvalue


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_max_draws_from_the_softmax(dtype):
    row = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.25]).to(dtype)
    draws = 200_000
    labels = sample_labels(row.expand(draws, -1), torch.Generator().manual_seed(0))
    counts = np.bincount(labels.numpy(), minlength=5)
    probs = torch.softmax(row.double(), -1).numpy()  # the distribution of the logits as stored (bf16 or fp32)
    assert _chi_square_p(counts, probs) > P_FLOOR
    # the same test rejects a sampler off by a temperature of 1.05: it can fail
    assert _chi_square_p(counts, torch.softmax(row.double() / 1.05, -1).numpy()) < P_FLOOR


def _label_of(estimate, candidates):
    """Which label produced this estimate (one row, so the estimate is a function of its label)."""
    distances = [sum(float((e.double() - c).abs().max()) for e, c in zip(estimate, cand)) for cand in candidates]
    return int(np.argmin(distances))


def test_equal_in_distribution_to_the_reference_gnb():
    # one prediction (sub_batch=1, T=1): each estimator's output is one of V values, one per label, so equality in
    # distribution is equality of the label distributions: both against softmax, and against each other
    vocab, draws = 4, 3000
    model, tokens = TinyLM(vocab=vocab), _tokens(batch=3, seq=1, vocab=vocab)
    logits = model(tokens[:1]).detach().reshape(-1, vocab)
    probs = torch.softmax(logits.double(), -1)[0].numpy()
    candidates = [_oracle(model, tokens[:1], torch.tensor([[v]])) for v in range(vocab)]
    assert min(float(sum((a - b).abs().max() for a, b in zip(candidates[i], candidates[j])))
               for i in range(vocab) for j in range(i)) > 1e-3  # the labels are told apart by their estimates
    params = [model.emb, model.head, model.bias]
    g_fast, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    fast = np.bincount([_label_of(gnb_refresh(model, tokens, sub_batch=1, generator=g_fast), candidates)
                        for _ in range(draws)], minlength=vocab)
    ref = np.bincount([_label_of(reference_gnb(lambda: model(tokens[:1]), params, generator=g_ref), candidates)
                       for _ in range(draws)], minlength=vocab)
    assert _chi_square_p(fast, probs) > P_FLOOR
    assert _chi_square_p(ref, probs) > P_FLOOR
    assert stats.chi2_contingency(np.stack([fast, ref])).pvalue > P_FLOOR


def test_mean_is_the_gauss_newton_diagonal():
    # several predictions per call: the mean of N draws is within 5 standard errors of gnb_expectation everywhere
    model, tokens = TinyLM(vocab=3), _tokens(batch=2, seq=3, vocab=3)
    params = [model.emb, model.head, model.bias]
    draws, generator = 4000, torch.Generator().manual_seed(3)
    samples = [torch.cat([e.double().reshape(-1) for e in gnb_refresh(model, tokens, generator=generator)])
               for _ in range(draws)]
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / draws ** 0.5
    want = torch.cat([e.reshape(-1) for e in gnb_expectation(lambda: model(tokens), params)])
    assert bool(((mean - want).abs() <= 5 * se + 1e-12).all())
    # and the check has power: a factor 1.1 (a wrong B) is far outside it
    assert not bool(((1.1 * mean - want).abs() <= 5 * se + 1e-12).all())


def test_float32_workspace_is_bounded_and_the_cotangent_keeps_the_logits_dtype(monkeypatch):
    model = TinyLM(vocab=4).to(torch.bfloat16)
    tokens = _tokens(batch=4, seq=5)
    seen = []
    original = fast_gnb_module.sample_labels

    def spy(chunk, generator=None):
        seen.append(chunk.shape)
        return original(chunk, generator)

    monkeypatch.setattr(fast_gnb_module, "sample_labels", spy)
    real_grad = torch.autograd.grad
    cotangents = []

    def grad_spy(outputs, inputs, grad_outputs=None, **kw):
        cotangents.append(grad_outputs)
        return real_grad(outputs, inputs, grad_outputs=grad_outputs, **kw)

    monkeypatch.setattr(torch.autograd, "grad", grad_spy)
    estimates = gnb_refresh(model, tokens, chunk_bytes=3 * 4 * 4)  # three rows of V=4 float32 at a time
    assert [s[0] for s in seen] == [3, 3, 3, 3, 3, 3, 2] and all(s[1] == 4 for s in seen)
    assert cotangents[0].dtype == torch.bfloat16 and cotangents[0].shape == (4, 5, 4)
    assert all(e.dtype == torch.float32 for e in estimates)  # bf16 parameters, float32 estimates (Sophia's h)


def test_gradients_are_untouched_and_it_drives_sophia_on_refresh_steps_only():
    model, tokens = TinyLM(), _tokens()
    calls = []

    def estimate():
        calls.append(1)
        return gnb_refresh(model, tokens, params=opt, generator=torch.Generator().manual_seed(0))

    opt = Sophia(model.parameters(), lr=0.01, hessian_interval=3, backend="foreach")
    for _ in range(7):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, 4), tokens.reshape(-1))
        loss.backward()
        before = [p.grad.clone() for p in model.parameters()]
        opt.step(hessian_estimate=estimate)
        assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
    assert len(calls) == 3  # steps 1, 4, 7
    assert all(bool((opt.state[p]["h"] > 0).any()) for p in model.parameters())


def test_unreached_parameter_gets_zeros_and_model_outputs_are_unwrapped():
    model, tokens = TinyLM(), _tokens()
    unused = torch.nn.Parameter(torch.ones(2))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.unused = model, unused

        def forward(self, tokens):
            return type("Out", (), {"logits": self.inner(tokens)})()

    wrapped = Wrapped()
    estimates = gnb_refresh(wrapped, tokens, generator=torch.Generator().manual_seed(0))
    where = [i for i, p in enumerate(wrapped.parameters()) if p is unused]
    assert len(estimates) == 4 and torch.equal(estimates[where[0]], torch.zeros(2))
    assert all(bool((e > 0).any()) for i, e in enumerate(estimates) if i != where[0])
    tuple_model = lambda t: (model(t), "aux")  # noqa: E731
    assert len(gnb_refresh(tuple_model, tokens, params=list(model.parameters()))) == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"sub_batch": 0}, "sub_batch=0 is not valid"),
    ({"sub_batch": 1.5}, "sub_batch=1.5 is not valid"),
    ({"chunk_bytes": 0}, "chunk_bytes=0 is not valid"),
    ({"params": []}, "no parameters"),
])
def test_bad_arguments_are_refused(kwargs, message):
    model, tokens = TinyLM(), _tokens()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        gnb_refresh(model, tokens, **kwargs)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_bad_model_outputs_are_refused():
    model, tokens = TinyLM(), _tokens()
    with pytest.raises(ValueError, match="floating-point logits shaped"):
        gnb_refresh(lambda t: model(t).argmax(-1), tokens, params=list(model.parameters()))
    frozen = list(model.parameters())
    for p in frozen:
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="do not require grad"):
        gnb_refresh(model, tokens, params=frozen)
    with pytest.raises(ValueError, match="no parameters"):
        gnb_refresh(model, tokens)


def test_works_inside_no_grad():
    # Sophia.step runs under torch.no_grad(); the refresh enables grad for its own forward and backward
    model, tokens = TinyLM(), _tokens()
    with torch.no_grad():
        estimates = gnb_refresh(model, tokens, generator=torch.Generator().manual_seed(0))
    assert any(bool((e > 0).any()) for e in estimates)
