"""sophia_ref.fast.Sophia: both backends against the reference's float32 evaluation, certification, bad input,
checkpoints and the torch.optim API. The triton backend runs in Triton's interpreter here (tests/conftest.py)."""

from __future__ import annotations

import io
import os

import pytest
import torch

from sophia_ref import SophiaRef, rule
from sophia_ref.dialects import Dialect, get_dialect
from sophia_ref.fast import Sophia
from verification.adapters.convention import ConventionAdapter
from verification.conformance.pipeline import certify

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package (pip install triton)")
BACKENDS = ("foreach", "triton")


# these tests hand the triton backend CPU tensors, which it runs only in Triton's interpreter: set by
# tests/conftest.py without CUDA; on a GPU machine run them as `TRITON_INTERPRET=1 pytest tests/test_fast.py`
# (tests/test_gpu_check.py tests the kernel on CUDA tensors)
@pytest.fixture(autouse=True)
def _triton_on_cpu_needs_the_interpreter(request):
    if "triton" in request.node.name and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the triton backend runs on CPU tensors only under TRITON_INTERPRET=1")
DIALECTS = ("paper", "official", "optax", "sophia_optimizer", "paper_v1", "levanter", "fastxtend")


def _data(dtype, steps=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (1500,), ()]
    init = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(steps)]
    hhats = [[torch.randn(s, generator=g).abs() * 5 for s in shapes] for _ in range(steps)]
    return init, grads, hhats


def _run(opt_params, opt, grads, hhats, dialect):
    for t, (gs, hs) in enumerate(zip(grads, hhats)):
        for p, gi in zip(opt_params, gs):
            p.grad = gi.clone()
        caller = get_dialect(dialect).knobs.refresh == "caller"
        opt.step(hessian_estimate=hs if not caller or t % 3 == 0 else None)


def _naive(init, grads, hhats, dialect, lr=0.1, gamma=0.05):
    """The reference rule evaluated in float32 (the tolerance model's yardstick), parameters rounded each step."""
    d = get_dialect(dialect)
    hyper = rule.Hyper(lr=lr, beta1=d.defaults["betas"][0], beta2=d.defaults["betas"][1], gamma=gamma,
                       eps=d.defaults["eps"], weight_decay=d.defaults["weight_decay"],
                       hessian_interval=d.defaults["hessian_interval"], batch_size=d.defaults["batch_size"])
    params = [p.clone() for p in init]
    states = [rule.State(0, torch.zeros(p.shape), torch.zeros(p.shape)) for p in init]
    for t, (gs, hs) in enumerate(zip(grads, hhats)):
        caller = d.knobs.refresh == "caller"
        for i, p in enumerate(params):
            hh = hs[i] if (not caller or t % 3 == 0) else None
            if not rule.is_refresh_step(states[i].step + 1, hyper.hessian_interval, d.knobs, hh is not None):
                hh = None
            theta = p.to(torch.float32)
            states[i], delta, _ = rule.update(states[i], theta, gs[i].to(torch.float32), hyper, d.knobs, hh)
            params[i] = (theta + delta).to(p.dtype)
    return params, states


# float32 parameters: the triton kernel computes the reference's float32 evaluation bit for bit, in every preset
@pytest.mark.parametrize("dialect", DIALECTS)
def test_triton_float32_equals_the_reference_evaluated_in_float32(dialect):
    init, grads, hhats = _data(torch.float32)
    params = [p.clone() for p in init]
    opt = Sophia(params, lr=0.1, gamma=0.05, dialect=dialect, backend="triton")
    _run(params, opt, grads, hhats, dialect)
    want, states = _naive(init, grads, hhats, dialect)
    for p, w, s in zip(params, want, states):
        assert torch.equal(p, w)
        assert torch.equal(opt.state[p]["m"], s.m) and torch.equal(opt.state[p]["h"], s.h)


# the foreach backend rounds differently (lerp, a fused multiply-add): the certification battery is its contract,
# in every preset it can reach
@pytest.mark.parametrize("dialect", DIALECTS)
def test_foreach_certified_in_every_preset(dialect):
    adapter = ConventionAdapter(Sophia, "fast (foreach)", dialect=dialect, extra={"backend": "foreach", "dialect": dialect})
    cert = certify(adapter, dialect, quick=True, dtype=torch.float32)
    assert cert.verdict == "conforms", cert.findings


# the foreach backend is close to the float32 evaluation on plain data: every preset, a few float32 ulps of the
# operands after 8 steps (each of its lines rounds once or twice where the float32 evaluation rounds twice)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_foreach_float32_close_to_the_reference_evaluated_in_float32(dialect):
    init, grads, hhats = _data(torch.float32)
    params = [p.clone() for p in init]
    opt = Sophia(params, lr=0.1, gamma=0.05, dialect=dialect, backend="foreach")
    _run(params, opt, grads, hhats, dialect)
    want, states = _naive(init, grads, hhats, dialect)
    ulp = torch.finfo(torch.float32).eps
    for p, w, s in zip(params, want, states):
        # parameters: |theta| <= 4 here and 8 steps of lr = 0.1 each move it by at most a few ulps of its scale
        torch.testing.assert_close(p, w, rtol=0, atol=16 * ulp * max(float(w.abs().max()), 1.0))
        for key, ref in (("m", s.m), ("h", s.h)):
            torch.testing.assert_close(opt.state[p][key], ref, rtol=0, atol=16 * ulp * max(float(ref.abs().max()), 1.0))


# bfloat16 parameters with float32 state: the triton kernel rounds to nearest even exactly as the naive evaluation
@pytest.mark.parametrize("dialect", ("paper", "official"))
def test_bfloat16_triton_equals_the_naive_evaluation(dialect):
    init, grads, hhats = _data(torch.bfloat16)
    for backend in BACKENDS:
        params = [p.clone() for p in init]
        opt = Sophia(params, lr=0.1, gamma=0.05, dialect=dialect, backend=backend)
        _run(params, opt, grads, hhats, dialect)
        assert all(opt.state[p]["m"].dtype == torch.float32 and set(opt.state[p]) == {"step", "m", "h", "refreshes"}
                   for p in params)                                    # exactly two float32 buffers per parameter
        if backend == "triton":
            want, _ = _naive(init, grads, hhats, dialect)
            assert all(torch.equal(a, w) for a, w in zip(params, want))


# both backends pass the certification battery for paper in float32 and bfloat16 (the tolerance model)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_certified(backend, dtype):
    adapter = ConventionAdapter(Sophia, f"fast ({backend})", dialect="paper", extra={"backend": backend})
    cert = certify(adapter, "paper", quick=True, dtype=dtype)
    assert cert.verdict == "conforms", cert.findings


# stochastic rounding of bfloat16 write-backs is unbiased: the mean of many roundings of x is x
def test_triton_stochastic_rounding_is_unbiased():
    x = torch.full((20000,), 1.0 + 2.0 ** -9, dtype=torch.float32)          # between bf16 1.0 and 1.0078125
    p = torch.ones(20000, dtype=torch.bfloat16)
    opt = Sophia([p], lr=2.0 ** -9, gamma=1.0, eps=1e-12, backend="triton", stochastic_rounding=True)
    p.grad = torch.full_like(p, -1.0)                                      # h = 0: a full sign step of +lr
    opt.step(hessian_estimate=[torch.zeros(20000)])
    values = set(p.float().unique().tolist())
    assert values == {1.0, 1.0078125}
    # each coordinate rounds up with probability 1/4; 5 sigma of a binomial mean over 20000 draws is 0.015
    assert abs(p.float().mean().item() - x[0].item()) < 0.015 * 2.0 ** -7 * 4


# the win rate matches the reference's, read from the device only when asked
@pytest.mark.parametrize("backend", BACKENDS)
def test_win_rate_matches_reference(backend):
    init, grads, hhats = _data(torch.float32)
    fast_params, ref_params = [p.clone() for p in init], [p.clone() for p in init]
    fast = Sophia(fast_params, lr=0.1, gamma=0.05, backend=backend)
    ref = SophiaRef(ref_params, lr=0.1, gamma=0.05)
    _run(fast_params, fast, grads, hhats, "paper")
    _run(ref_params, ref, grads, hhats, "paper")
    assert fast.diagnostics.win_rate == ref.diagnostics.win_rate and 0 < ref.diagnostics.win_rate < 1


# the sign form with a negative h (official: eps added, so d < 0 can happen) takes unclipped steps larger than c:
# they are not wins (|u| < c), in the reference's count and in both backends'
@pytest.mark.parametrize("backend", BACKENDS)
def test_win_rate_with_negative_h_in_the_sign_form(backend):
    g = torch.Generator().manual_seed(5)
    init = [torch.randn(2000, generator=g)]
    grads = [[torch.randn(2000, generator=g)] for _ in range(3)]
    hhats = [[torch.randn(2000, generator=g) * 50] for _ in range(3)]   # half of them negative
    fast_params, ref_params = [p.clone() for p in init], [p.clone() for p in init]
    fast = Sophia(fast_params, lr=0.1, gamma=0.05, dialect="official", backend=backend)
    ref = SophiaRef(ref_params, lr=0.1, gamma=0.05, dialect="official")
    _run(fast_params, fast, grads, hhats, "official")
    _run(ref_params, ref, grads, hhats, "official")
    assert fast.diagnostics.win_rate == ref.diagnostics.win_rate and 0 < ref.diagnostics.win_rate < 1


# checkpoints: a SophiaRef state dict loads into Sophia and back, through torch.save / torch.load(weights_only)
def test_checkpoints_cross_load():
    init, grads, hhats = _data(torch.float32)
    ref_params = [p.clone() for p in init]
    ref = SophiaRef(ref_params, lr=0.1, gamma=0.05)
    _run(ref_params, ref, grads[:4], hhats[:4], "paper")
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    fast = Sophia([p.clone() for p in ref_params], lr=0.1, gamma=0.05, backend="foreach")
    fast.load_state_dict(torch.load(buffer, weights_only=True))
    p0 = fast.param_groups[0]["params"][0]
    assert fast.state[p0]["m"].dtype == torch.float32 and "master" not in fast.state[p0]
    assert fast.state[p0]["step"] == 4 and fast._step == 4
    back = SophiaRef([p.clone() for p in ref_params], lr=0.1, gamma=0.05)
    back.load_state_dict(fast.state_dict())
    q0 = back.param_groups[0]["params"][0]
    assert back.state[q0]["m"].dtype == torch.float64
    assert torch.equal(back.state[q0]["m"], ref.state[ref_params[0]]["m"].float().double())
    with pytest.raises(ValueError, match="saved by a Sophia with dialect 'paper', which differs"):
        SophiaRef([p.clone() for p in ref_params], lr=0.1, dialect="optax").load_state_dict(fast.state_dict())


# torch.optim API: step pre-hooks, closures, LR schedulers (the new lr is read from the group each step)
@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_closure_and_scheduler(backend):
    p = torch.zeros(3)
    opt = Sophia([p], lr=1.0, gamma=1.0, hessian_interval=1, backend=backend)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append(1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        p.grad = torch.ones(3)
        return torch.tensor(1.0)

    for _ in range(3):
        assert opt.step(closure, hessian_estimate=[torch.zeros(3)]).item() == 1.0
        sched.step()
    assert calls == [1, 1, 1]
    assert torch.equal(p, torch.full((3,), -(1.0 + 0.5 + 0.25)))         # sign steps of the scheduled lr


# bad input: each a clear error, parameters and state untouched
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_changes_nothing(backend):
    p = torch.ones(4)
    opt = Sophia([p], lr=0.1, backend=backend)
    p.grad = torch.ones(4)
    opt.step(hessian_estimate=[torch.ones(4)])
    before = (p.clone(), opt.state[p]["m"].clone(), opt.state[p]["h"].clone(), opt.state[p]["step"])

    def unchanged():
        assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["m"], before[1])
        assert torch.equal(opt.state[p]["h"], before[2]) and opt.state[p]["step"] == before[3] and opt._step == 1

    p.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    with pytest.raises(FloatingPointError, match="the gradient of parameter 0 of group 0 .* has 1 non-finite"):
        opt.step()
    unchanged()
    p.grad = torch.ones(4)
    for _ in range(9):  # steps 2..10; step 11 refreshes (k = 10), and estimates are checked there
        opt.step()
    before = (p.clone(), opt.state[p]["m"].clone(), opt.state[p]["h"].clone(), opt.state[p]["step"])
    with pytest.raises(ValueError, match=r"has shape \(3,\), expected \(4,\)"):
        opt.step(hessian_estimate=[torch.ones(3)])
    with pytest.raises(ValueError, match="expected a real floating dtype"):
        opt.step(hessian_estimate=[torch.ones(4, dtype=torch.int64)])
    with pytest.raises(FloatingPointError, match="Hessian estimate of parameter 0 .* 1 non-finite"):
        opt.step(hessian_estimate=[torch.tensor([1.0, float("inf"), 1.0, 1.0])])
    with pytest.raises(ValueError, match="none was given"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["h"], before[2]) and opt.state[p]["step"] == 10


# more bad input, each refused before anything changes: an estimate on another device or with the wrong number of
# entries, not a list, a gradient of another dtype
@pytest.mark.parametrize("backend", BACKENDS)
def test_more_bad_input_changes_nothing(backend):
    p = torch.ones(4)
    opt = Sophia([p], lr=0.1, backend=backend)
    p.grad = torch.ones(4)
    cases = [
        (dict(hessian_estimate=[torch.ones(4, device="meta")]), ValueError, "is on meta, but the parameter is on cpu"),
        (dict(hessian_estimate=[torch.ones(4), torch.ones(4)]), ValueError, "has 2 entries, but the optimizer has 1"),
        (dict(hessian_estimate=torch.ones(4)), ValueError, "must be a list with one tensor per parameter"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            opt.step(**kwargs)
        assert torch.equal(p, torch.ones(4)) and p not in opt.state and opt._step == 0
    p.grad_dtype = None  # torch refuses a gradient of another dtype unless told to allow one
    p.grad = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="gradient dtype torch.float64 != parameter dtype torch.float32"):
        opt.step(hessian_estimate=[torch.ones(4)])
    assert torch.equal(p, torch.ones(4)) and p not in opt.state and opt._step == 0


# nan_policy="ignore" never checks, so never reads from the device; "raise" checks once per step
@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_policy_never_checks(backend, monkeypatch):
    calls = []
    monkeypatch.setattr(Sophia, "_non_finite", lambda self, tensors: calls.append(len(tensors)) or False)
    for policy, expected in (("ignore", []), ("raise", [2, 1])):
        calls.clear()
        p = torch.ones(4)
        opt = Sophia([p], lr=0.1, backend=backend, nan_policy=policy)
        p.grad = torch.ones(4)
        opt.step(hessian_estimate=[torch.ones(4)])  # a refresh: gradient and estimate checked
        opt.step()                                  # gradient only
        assert calls == expected


# the non-finite check reads Euclidean norms, which overflow for large finite entries: those are confirmed entry by
# entry, so a finite gradient of 1e30 (its squares overflow float32) is stepped on, and a lone Inf among them is not
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_finite_gradients_are_not_mistaken_for_inf(backend):
    p = torch.zeros(4)
    opt = Sophia([p], lr=0.1, backend=backend)
    p.grad = torch.full((4,), 1e30)
    opt.step(hessian_estimate=[torch.ones(4)])
    assert torch.equal(p, torch.full((4,), -0.1)) and not opt.diagnostics.skipped
    p.grad = torch.tensor([1e30, float("inf"), 1e30, 1e30])
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    assert torch.equal(p, torch.full((4,), -0.1)) and opt.state[p]["step"] == 1


def test_nan_skip_counts_and_changes_nothing():
    p = torch.ones(2)
    opt = Sophia([p], lr=0.1, backend="foreach", nan_policy="skip")
    p.grad = torch.tensor([float("nan"), 1.0])
    opt.step(hessian_estimate=[torch.ones(2)])
    assert torch.equal(p, torch.ones(2)) and opt.diagnostics.skipped and opt.diagnostics.skipped_steps == 1
    assert "m" not in opt.state[p] and opt._step == 0


def test_constructor_errors():
    with pytest.raises(ValueError, match="backend='cuda' is not valid; accepted values: 'auto', 'foreach', 'triton'"):
        Sophia([torch.ones(1)], lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match=r"lr=-1.0 is not valid"):
        Sophia([torch.ones(1)], lr=-1.0)
    with pytest.raises(ValueError, match="one device"):
        Sophia([torch.ones(1), torch.ones(1, device="meta")], lr=0.1)
    with pytest.raises(ValueError, match="backend='triton' cannot update a torch.float64 parameter"):
        Sophia([torch.ones(1, dtype=torch.float64)], lr=0.1, backend="triton")
    custom = Dialect("clamped", rule.Knobs(estimate_clamp="zero"), get_dialect("paper").defaults, "gnb", "x")
    with pytest.raises(ValueError, match="dialect 'clamped' is not available on the fast path: it sets "
                                         "estimate_clamp='zero'"):
        Sophia([torch.ones(1)], lr=0.1, dialect=custom)
    with pytest.raises(ValueError, match="nan_policy='warn' is not valid; accepted values: 'raise', 'skip', 'ignore'"):
        Sophia([torch.ones(1)], lr=0.1, nan_policy="warn")
