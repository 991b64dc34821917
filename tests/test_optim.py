"""SophiaRef: agreement with the rule, float64 master copies, groups, closures, schedulers,
bit-exact resume, diagnostics, refresh phases and every bad-input path."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from sophia_ref import SophiaRef, exact_diagonal, hutchinson, rule
from sophia_ref.dialects import DIALECTS, PAPER

F64 = torch.float64


def snapshot(opt: SophiaRef, params) -> dict:
    """Everything a step could change: parameters, optimizer state and counters (deep copies)."""
    return dict(params=[p.detach().clone() for p in params], state=copy.deepcopy(opt.state_dict()),
                diagnostics=opt.diagnostics)


def assert_same(a, b):
    """Bit-for-bit equality of nested containers of tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def problem(dtype=F64, seed=0):
    """Softmax regression on a seeded synthetic set: two parameter tensors, a loss and its logits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, dtype=dtype, generator=gen)
    y = torch.randint(0, 3, (64,), generator=gen)
    w = torch.randn(5, 3, dtype=dtype, generator=gen).requires_grad_()
    b = torch.zeros(3, dtype=dtype).requires_grad_()
    logits = lambda: x @ w + b
    loss = lambda: torch.nn.functional.cross_entropy(logits(), y) + 0.05 * (w ** 4).sum()
    return [w, b], loss


def train(opt, params, loss, steps, gen, start=0):
    """A seeded loop: Hutchinson refresh drawn from gen (only called on refresh steps)."""
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step(hessian_estimate=lambda: hutchinson(loss, params, generator=gen))


def test_steps_equal_the_pure_rule_bit_for_bit():
    params, loss = problem()
    opt = SophiaRef(params, lr=0.05, gamma=0.05, weight_decay=0.1, hessian_interval=3)
    states = [rule.init(p) for p in params]
    hyper = rule.Hyper(lr=0.05, beta1=0.96, beta2=0.99, gamma=0.05, eps=1e-12, weight_decay=0.1, hessian_interval=3)
    gen = torch.Generator().manual_seed(0)
    expected = [p.detach().clone() for p in params]
    for t in range(1, 13):
        opt.zero_grad()
        loss().backward()
        grads = [p.grad.clone() for p in params]
        hhat = hutchinson(loss, params, generator=gen) if (t - 1) % 3 == 0 else None
        opt.step(hessian_estimate=hhat)
        for i, (state, g) in enumerate(zip(states, grads)):
            states[i], delta, _ = rule.update(state, expected[i], g, hyper, PAPER.knobs, None if hhat is None else hhat[i])
            expected[i] = expected[i] + delta
        for p, e in zip(params, expected):
            assert torch.equal(p.detach(), e)


@pytest.mark.parametrize("low", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_parameters_follow_float64_master_copies(low):
    """Low-precision parameters: state and master are float64, and the master trajectory equals a float64
    run fed the same (representable) gradients and estimates; the parameter is the master rounded."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(40, generator=gen).to(low)
    p32 = start.clone().requires_grad_()
    p64 = start.to(F64).requires_grad_()
    opts = [SophiaRef([p], lr=0.01, gamma=0.05, weight_decay=0.1, hessian_interval=2) for p in (p32, p64)]
    for t in range(20):
        g = torch.randn(40, generator=gen).to(low)
        hhat = (torch.rand(40, generator=gen) - 0.2).to(low)
        for p, opt in zip((p32, p64), opts):
            p.grad = g.to(p.dtype)
            opt.step(hessian_estimate=[hhat.to(p.dtype)])
    state = opts[0].state[p32]
    assert state["master"].dtype == state["m"].dtype == state["h"].dtype == F64
    assert torch.equal(state["master"], p64.detach())
    assert torch.equal(p32.detach(), p64.detach().to(low))
    assert not torch.equal(p32.detach().double(), p64.detach())  # the rounding is real, and kept out of the run


def test_a_parameter_changed_from_outside_is_re_read():
    p = torch.ones(3).requires_grad_()
    opt = SophiaRef([p], lr=0.1, hessian_interval=100)
    p.grad = torch.ones(3)
    opt.step(hessian_estimate=[torch.ones(3)])
    with torch.no_grad():
        p.fill_(5.0)
    opt.step()
    assert torch.allclose(opt.state[p]["master"], torch.full((3,), 5.0 - 0.1, dtype=F64))


def test_param_groups_closure_and_scheduler():
    params, loss = problem()
    opt = SophiaRef([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.0}], lr=0.05, hessian_interval=2,
                    hessian_estimator=lambda: hutchinson(loss, params, generator=torch.Generator().manual_seed(0)))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    b_before = params[1].detach().clone()
    losses = []
    for _ in range(6):
        def closure():
            opt.zero_grad()
            value = loss()
            value.backward()
            return value
        losses.append(float(opt.step(closure).detach()))
        scheduler.step()
    assert torch.equal(params[1].detach(), b_before)  # lr = 0 group does not move
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 3)
    assert losses[-1] < losses[0]
    assert opt.diagnostics.refreshes == 3 and opt.diagnostics.step == 6


@pytest.mark.parametrize("dialect", ["paper", "optax", "official", "pytorch_optimizer"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_resume_from_a_checkpoint_is_bit_exact(dialect, dtype):
    """A run split in two by state_dict / torch.save / load_state_dict equals the unsplit run bit for bit."""
    def fresh():
        params, loss = problem(dtype)
        return params, loss, SophiaRef(params, lr=0.02, dialect=dialect, hessian_interval=3)

    params, loss, opt = fresh()
    gen = torch.Generator().manual_seed(7)
    train(opt, params, loss, 11, gen)
    whole = snapshot(opt, params)

    params, loss, opt = fresh()
    gen = torch.Generator().manual_seed(7)
    train(opt, params, loss, 5, gen)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict(), "gen": gen.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    params, loss, opt = fresh()
    with torch.no_grad():
        for p, value in zip(params, saved["params"]):
            p.copy_(value)
    opt.load_state_dict(saved["opt"])
    gen.set_state(saved["gen"])
    assert all(v.dtype == F64 for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    train(opt, params, loss, 6, gen)
    assert_same(snapshot(opt, params), whole)


def test_loading_another_dialects_state_is_refused():
    params, loss = problem()
    opt = SophiaRef(params, lr=0.02, dialect="optax")
    train(opt, params, loss, 2, torch.Generator().manual_seed(0))
    other = SophiaRef(params, lr=0.02)
    with pytest.raises(ValueError, match=r"saved by a SophiaRef with dialect 'optax', which differs from .*'paper'"):
        other.load_state_dict(opt.state_dict())


def test_diagnostics_count_clipped_unclipped_and_refreshes():
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    opt = SophiaRef([p], lr=1.0, betas=(0.0, 0.0), gamma=1.0, eps=1e-12, hessian_interval=2)
    p.grad = torch.tensor([0.5, 3.0, -3.0, 1.0], dtype=F64)
    opt.step(hessian_estimate=[torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=F64)])
    d = opt.diagnostics
    # ratios 0.5 | 3 -> 1 | -3 -> -1 | floored (h < 0) -> sign step
    assert (d.step, d.refreshed, d.numel, d.sign_steps, d.floored, d.refreshes) == (1, True, 4, 3, 1, 1)
    assert d.win_rate == 0.25
    assert p.detach().tolist() == [-0.5, -1.0, 1.0, -1.0]
    opt.step()
    assert (opt.diagnostics.refreshed, opt.diagnostics.refreshes) == (False, 1)


@pytest.mark.parametrize("k", range(1, 13))
def test_refresh_happens_on_exactly_the_papers_steps(k):
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    calls = []
    opt = SophiaRef([p], lr=0.1, hessian_interval=k,
                    hessian_estimator=lambda: calls.append(opt.diagnostics.step + 1 if opt.diagnostics else 1)
                    or [torch.ones(3, dtype=F64)])
    refreshed = []
    for _ in range(3 * k + 2):
        p.grad = torch.ones(3, dtype=F64)
        opt.step()
        refreshed.append(opt.diagnostics.refreshed)
    expected = [t for t in range(1, 3 * k + 3) if (t - 1) % k == 0]
    assert calls == expected
    assert [t for t, r in enumerate(refreshed, start=1) if r] == expected


def test_optax_phase_uses_the_new_estimate_from_the_next_step():
    """optax refreshes on t = 1 but divides by h_0 = 0 at t = 1: a sign step; the paper divides by the estimate."""
    for dialect, expected in (("paper", -0.1 * 0.5 / 2.0), ("optax", -0.1)):
        p = torch.zeros(1, dtype=F64, requires_grad=True)
        opt = SophiaRef([p], lr=0.1, betas=(0.0, 0.0), gamma=1.0, eps=1e-12, dialect=dialect)
        p.grad = torch.tensor([0.5], dtype=F64)
        opt.step(hessian_estimate=[torch.tensor([2.0], dtype=F64)])
        assert p.item() == pytest.approx(expected, rel=1e-15)


def test_caller_driven_refresh_follows_the_estimates_given():
    p = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = SophiaRef([p], lr=0.1, dialect="official")
    refreshed = []
    for t in range(1, 8):
        p.grad = torch.ones(2, dtype=F64)
        opt.step(hessian_estimate=[torch.ones(2, dtype=F64)] if t in (3, 6) else None)
        refreshed.append(opt.diagnostics.refreshed)
    assert refreshed == [False, False, True, False, False, True, False]


@pytest.mark.parametrize("dialect", ["official", "levanter"])
def test_caller_driven_dialects_call_the_estimator_on_the_official_recipes_schedule(dialect):
    """Without an explicit estimate, hessian_estimator runs on t > 1 with (t - 1) mod k == 0 (the recipe's
    update_hessian() after steps k, 2k, ...), per group's k; an explicit estimate still refreshes its step."""
    a = torch.zeros(2, dtype=F64, requires_grad=True)
    b = torch.zeros(3, dtype=F64, requires_grad=True)
    calls = []

    def estimator():
        calls.append(opt._step + 1)
        return [torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)]

    opt = SophiaRef([{"params": [a]}, {"params": [b], "hessian_interval": 4}], lr=0.1, hessian_interval=3,
                    dialect=dialect, hessian_estimator=estimator)
    refreshes = {"a": [], "b": []}
    for t in range(1, 14):
        a.grad, b.grad = torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)
        before = {name: opt.state[p]["refreshes"] if p in opt.state else 0 for name, p in (("a", a), ("b", b))}
        opt.step(hessian_estimate=[torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)] if t == 2 else None)
        for name, p in (("a", a), ("b", b)):
            if opt.state[p]["refreshes"] > before[name]:
                refreshes[name].append(t)
    assert calls == [4, 5, 7, 9, 10, 13]
    assert refreshes == {"a": [2, 4, 7, 10, 13], "b": [2, 5, 9, 13]}


def _old_checkpoint(state_dict: dict) -> dict:
    """A state dict as saved before the refresh count and the newer knobs existed."""
    old = copy.deepcopy(state_dict)
    for state in old["state"].values():
        state.pop("refreshes")
    for key in ("h_bias_correction", "estimate_clamp", "weight_decay_form"):
        old["sophia_ref"]["knobs"].pop(key)
    return old


@pytest.mark.parametrize("dialect, expected", [("paper", 3), ("optax", 3), ("official", 2), ("fastxtend", 0)])
def test_refresh_counts_are_checkpointed_and_implied_for_old_checkpoints(dialect, expected):
    """Each parameter's refresh count round-trips through state_dict; a checkpoint without it gets the count
    its schedule implies (ceil(step / k); the optimizer's refresh steps for a caller-driven refresh; 0 for
    never), and both resume to the same run."""
    def fresh():
        params, loss = problem()
        return params, loss, SophiaRef(params, lr=0.02, dialect=dialect, hessian_interval=3)

    def run(opt, params, loss, steps, first):
        for t in range(first, first + steps):
            opt.zero_grad()
            loss().backward()
            opt.step(hessian_estimate=[p.grad.detach() ** 2 for p in params] if t in (3, 5) or
                     dialect != "official" else None)

    params, loss, opt = fresh()
    run(opt, params, loss, 7, 1)
    saved = opt.state_dict()
    assert [s["refreshes"] for s in saved["state"].values()] == [expected, expected]
    resumed = []
    for state_dict in (saved, _old_checkpoint(saved)):
        new_params, new_loss, new_opt = fresh()
        with torch.no_grad():
            for p, q in zip(new_params, params):
                p.copy_(q)
        new_opt.load_state_dict(copy.deepcopy(state_dict))
        assert [new_opt.state[p]["refreshes"] for p in new_params] == [expected, expected]
        run(new_opt, new_params, new_loss, 4, 8)
        resumed.append(snapshot(new_opt, new_params))
    assert_same(resumed[0], resumed[1])


def test_resume_with_bias_corrected_h_per_refresh_is_bit_exact():
    """h_bias_correction="refreshes" reads the count: a run split by a checkpoint equals the unsplit run."""
    from dataclasses import replace

    from sophia_ref.dialects import _preset

    dialect = _preset("paper_hbc", replace(PAPER.knobs, h_bias_correction="refreshes"), PAPER.defaults,
                      PAPER.estimator, PAPER.summary)

    def fresh():
        params, loss = problem()
        return params, loss, SophiaRef(params, lr=0.02, dialect=dialect, hessian_interval=3)

    params, loss, opt = fresh()
    train(opt, params, loss, 9, torch.Generator().manual_seed(3))
    whole = snapshot(opt, params)
    params, loss, opt = fresh()
    gen = torch.Generator().manual_seed(3)
    train(opt, params, loss, 4, gen)
    saved = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in params]
    params, loss, opt = fresh()
    with torch.no_grad():
        for p, value in zip(params, values):
            p.copy_(value)
    opt.load_state_dict(saved)
    train(opt, params, loss, 5, gen)
    assert_same(snapshot(opt, params), whole)


# -- bad input ------------------------------------------------------------------------------------------------

BAD_HYPERPARAMETERS = [
    (dict(lr=-1e-3), r"lr=-0.001 is not valid; accepted range: \[0.0, inf\)"),
    (dict(lr=float("nan")), r"lr=nan is not valid"),
    (dict(lr=1e-3, betas=(1.0, 0.99)), r"beta1=1.0 is not valid; accepted range: \[0.0, 1.0\)"),
    (dict(lr=1e-3, betas=(0.9, -0.1)), r"beta2=-0.1 is not valid; accepted range: \[0.0, 1.0\)"),
    (dict(lr=1e-3, betas=(0.9,)), r"betas=\(0.9,\) is not valid; accepted: a pair"),
    (dict(lr=1e-3, gamma=0.0), r"gamma=0.0 is not valid; accepted range: \(0.0, inf\)"),
    (dict(lr=1e-3, gamma=-1.0), r"gamma=-1.0 is not valid; accepted range: \(0.0, inf\)"),
    (dict(lr=1e-3, eps=-1e-12), r"eps=-1e-12 is not valid; accepted range: \[0.0, inf\)"),
    (dict(lr=1e-3, eps=float("inf")), r"eps=inf is not valid: must be finite"),
    (dict(lr=1e-3, weight_decay=-0.1), r"weight_decay=-0.1 is not valid; accepted range: \[0.0, inf\)"),
    (dict(lr=1e-3, hessian_interval=0), r"hessian_interval=0 is not valid; accepted range: integers >= 1"),
    (dict(lr=1e-3, hessian_interval=2.5), r"hessian_interval=2.5 is not valid; accepted range: integers >= 1"),
    (dict(lr=1e-3, batch_size=0.0), r"batch_size=0.0 is not valid; accepted range: \(0.0, inf\)"),
    (dict(lr=1e-3, dialect="adamw"), r"dialect='adamw' is not valid; accepted values: 'paper'"),
    (dict(lr=1e-3, nan_policy="ignore"), r"nan_policy='ignore' is not valid; accepted values: 'raise', 'skip'"),
    (dict(lr=1e-3, hessian_estimator=3), r"hessian_estimator=3 is not valid: expected a callable"),
    (dict(lr="fast"), r"lr='fast' is not valid: expected a real number"),
]


@pytest.mark.parametrize("kwargs,message", BAD_HYPERPARAMETERS)
def test_invalid_hyperparameters_are_named_with_value_and_range(kwargs, message):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        SophiaRef([p], **kwargs)


@pytest.mark.parametrize("kwargs,message", BAD_HYPERPARAMETERS[:13])
def test_invalid_hyperparameters_set_on_a_group_later_fail_the_step_and_change_nothing(kwargs, message):
    params, loss = problem()
    opt = SophiaRef(params, lr=0.02, hessian_interval=2)
    gen = torch.Generator().manual_seed(0)
    train(opt, params, loss, 3, gen)
    group = opt.param_groups[0]
    for key, value in kwargs.items():
        group[key] = value
    loss().backward()
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.step(hessian_estimate=[torch.ones_like(p) for p in params])
    assert_same(snapshot(opt, params), before)


def test_an_invalid_added_group_is_refused():
    params, _ = problem()
    opt = SophiaRef(params[:1], lr=0.02)
    with pytest.raises(ValueError, match=r"gamma=-2.0 is not valid"):
        opt.add_param_group({"params": params[1:], "gamma": -2.0})
    assert len(opt.param_groups) == 1


def test_complex_parameters_are_refused():
    with pytest.raises(ValueError, match=r"real floating-point parameters; got one of dtype torch.complex64"):
        SophiaRef([torch.zeros(2, dtype=torch.complex64, requires_grad=True)], lr=0.1)


def _corrupt(tensor: torch.Tensor, where: list[int], value: float) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[where] = value
    return out


@pytest.mark.parametrize("what", ["gradient", "Hessian estimate"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_naming_parameter_step_and_count_and_changes_nothing(what, value):
    params, loss = problem()
    opt = SophiaRef(params, lr=0.02, hessian_interval=2)
    train(opt, params, loss, 4, torch.Generator().manual_seed(0))  # t = 5 refreshes (k = 2)
    opt.zero_grad()
    loss().backward()
    estimate = [torch.ones_like(p) for p in params]
    if what == "gradient":
        params[0].grad = _corrupt(params[0].grad, [0, 3], value)
    else:
        estimate[0] = _corrupt(estimate[0], [0, 3], value)
    before = snapshot(opt, params)
    with pytest.raises(FloatingPointError,
                       match=rf"step 5: the {what} of parameter 0 of group 0 \(shape \(5, 3\)\) has 2 non-finite"):
        opt.step(hessian_estimate=estimate)
    assert_same(snapshot(opt, params), before)


def test_non_finite_input_names_parameters_by_name_when_given():
    w = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = SophiaRef([("encoder.weight", w)], lr=0.02)
    w.grad = torch.tensor([float("nan"), 1.0], dtype=F64)
    with pytest.raises(FloatingPointError, match=r"step 1: the gradient of parameter 'encoder.weight' has 1 non"):
        opt.step(hessian_estimate=[torch.ones(2, dtype=F64)])
    assert not opt.state  # not even an empty entry is left behind


def test_skip_policy_skips_the_step_counts_it_and_changes_nothing():
    params, loss = problem()
    opt = SophiaRef(params, lr=0.02, hessian_interval=2, nan_policy="skip")
    train(opt, params, loss, 3, torch.Generator().manual_seed(0))
    opt.zero_grad()
    loss().backward()
    params[1].grad = _corrupt(params[1].grad, [1], float("nan"))
    before = snapshot(opt, params)
    opt.step()  # t = 4: no refresh needed, so no estimate
    after = snapshot(opt, params)
    assert_same(after["params"], before["params"])
    assert_same(after["state"]["state"], before["state"]["state"])
    assert opt.diagnostics.skipped and opt.diagnostics.skipped_steps == 1 and opt.diagnostics.step == 4
    assert opt.state_dict()["sophia_ref"]["skipped"] == 1 and opt.state_dict()["sophia_ref"]["step"] == 3
    opt.zero_grad()
    loss().backward()
    opt.step()  # the next good step is t = 4
    assert (opt.diagnostics.step, opt.diagnostics.skipped, opt.diagnostics.skipped_steps) == (4, False, 1)


BAD_ESTIMATES = [
    (lambda ps: None, r"step 1 refreshes the Hessian estimate, but none was given: pass step\(hessian_estimate"),
    (lambda ps: ps[0].detach(), r"hessian_estimate must be a list with one tensor per parameter, got Tensor"),
    (lambda ps: [torch.ones_like(ps[0])], r"hessian_estimate has 1 entries, but the optimizer has 2 parameters"),
    (lambda ps: [torch.ones(3, 5, dtype=F64), torch.ones(3, dtype=F64)],
     r"hessian_estimate for parameter 0 of group 0 \(shape \(5, 3\)\) has shape \(3, 5\), expected \(5, 3\)"),
    (lambda ps: [torch.ones(5, 3, dtype=F64, device="meta"), torch.ones(3, dtype=F64)],
     r"hessian_estimate for parameter 0 .* is on meta, but the parameter is on cpu"),
    (lambda ps: [torch.ones(5, 3, dtype=torch.int64), torch.ones(3, dtype=F64)],
     r"hessian_estimate for parameter 0 .* has dtype torch.int64; expected a real floating dtype"),
    (lambda ps: [[1.0] * 3] * 5 and ["h", torch.ones(3, dtype=F64)],
     r"hessian_estimate for parameter 0 .* is str, expected a tensor"),
    (lambda ps: lambda: [torch.ones(2, dtype=F64)] * 2, r"hessian_estimate for parameter 0 .* has shape \(2,\)"),
]


@pytest.mark.parametrize("make,message", BAD_ESTIMATES)
def test_bad_estimates_are_clear_errors_and_change_nothing(make, message):
    params, loss = problem()
    opt = SophiaRef(params, lr=0.02)
    loss().backward()
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.step(hessian_estimate=make(params))
    assert_same(snapshot(opt, params), before)
    assert not opt.state


def test_sparse_and_misshapen_gradients_are_clear_errors():
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = SophiaRef([p], lr=0.1)
    p.grad = torch.zeros(3, dtype=F64).to_sparse()
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 \(shape \(3,\)\) has a sparse gradient"):
        opt.step(hessian_estimate=[torch.ones(3, dtype=F64)])
    assert not opt.state and p.detach().tolist() == [0.0, 0.0, 0.0]


def test_every_dialect_runs_through_the_optimizer():
    for name in DIALECTS:
        params, loss = problem()
        opt = SophiaRef(params, lr=0.01, dialect=name)
        first = float(loss().detach())
        for t in range(1, 31):
            opt.zero_grad()
            loss().backward()
            opt.step(hessian_estimate=[p.grad.detach() ** 2 * 64 for p in params])
        assert float(loss().detach()) < first, name


def test_the_denominator_cache_changes_no_result():
    """A run that reuses max(gamma h, eps) between refreshes equals one that recomputes it every step,
    also when gamma changes mid-run and when h is changed in place from outside."""
    runs = []
    for clear_cache in (False, True):
        params, loss = problem()
        opt = SophiaRef(params, lr=0.02, betas=(0.9, 0.0), gamma=1.0, hessian_interval=4,
                        hessian_estimator=lambda: exact_diagonal(loss, params))
        win_rates = []
        for t in range(1, 15):
            if clear_cache:
                opt._denominators.clear()
            if t == 6:
                opt.param_groups[0]["gamma"] = 3.0
            if t == 10:
                opt.state[params[0]]["h"].mul_(3.0)
            opt.zero_grad()
            loss().backward()
            opt.step()
            win_rates.append(opt.diagnostics.win_rate)
        assert min(win_rates) > 0.2  # unclipped coordinates exist, so a stale denominator would show
        runs.append(snapshot(opt, params))
    assert_same(runs[0], runs[1])
