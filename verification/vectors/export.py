"""``sophia-ref vectors export DIR``: the float64 reference's answers on the certification battery, as data.

One *case* per dialect preset and scenario: the battery's fixed-data scenarios (random tensors, 0-d and empty
tensors, k = 1, no weight decay, huge gradients, the eps floor, signed estimates, two parameter groups, long
runs, the paper's defaults) and its zoo trajectory (the tanh network, its gradients and Gauss-Newton
estimates taken along the reference's own path, so a port given them as data follows the same path); and,
outside ``--quick``, a 30-step trajectory on each of the 13 problems of the oracle zoo (convex quadratics up
to kappa = 1e8, logistic and softmax regression, the paper's 2-D problem, Rosenbrock, a double well, a
saddle, the tanh network) with the exact Hessian diagonal as the estimate. Two
battery scenarios have nothing to add as data and are left out: non-contiguous tensors (a memory layout) and
a state loaded with negative h (a teacher-forced harness move); the checkpoint scenario is exported as the
plain run it is.

Each case holds, per tensor i, ``theta0_i`` (initial parameters), ``grad_i`` (steps x shape), ``hhat_i``
(one row per refresh step, in ``refresh_steps`` order; the dialect's own meaning of the estimate: B ghat^2,
or ghat^2 where B is applied at step time) and the expected ``theta_i``, ``m_i``, ``h_i`` after every step
(steps x shape), computed by ``sophia_ref.rule.update`` in float64; ``exact_theta_i``, each step's new
parameters in exact rationals from the reference's previous float64 state, correctly rounded (the step
oracle, :mod:`verification.oracles.step`; a port checked teacher-forced can compare with it); and ``case.json``: the dialect, its
knobs, the hyperparameters (gamma is rho in the rho form), per-tensor overrides, the steps, the refresh
steps and the per-step diagnostics (refreshed, clipped, unclipped). Everything is deterministic: the same
code exports the same bytes on any machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict

import numpy as np
import torch

from sophia_ref import rule
from sophia_ref.dialects import DIALECTS, get_dialect

from ..conformance.judge import FLOAT64_GROWTH_ULPS_PER_STEP, FLOAT64_STEP_ULPS
from ..conformance.scenarios import _zoo_inputs, battery, hyperparameters, make_data, refresh_steps
from . import FORMAT_VERSION, store

F64 = torch.float64
SKIPPED_SCENARIOS = ("non-contiguous tensors", "negative h loaded into the state")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def scenarios(quick: bool = False):
    return [s for s in battery(quick) if s.name not in SKIPPED_SCENARIOS]


def _hyper(h, overrides) -> rule.Hyper:
    return rule.Hyper(lr=overrides.get("lr", h.lr), beta1=h.beta1, beta2=h.beta2, gamma=h.gamma, eps=h.eps,
                      weight_decay=overrides.get("weight_decay", h.weight_decay), hessian_interval=h.hessian_interval,
                      batch_size=h.batch_size)


def case_arrays(dialect_name: str, scenario) -> tuple[dict, dict]:
    """(metadata, {file name: float64 array}) of one case."""
    dialect = get_dialect(dialect_name)
    knobs = dialect.knobs
    h = hyperparameters(scenario)
    data = make_data(scenario, dialect, h)
    refreshing = refresh_steps(dialect, h.hessian_interval, scenario.steps)
    n = len(data.init)
    overrides = [dict(scenario.groups[i]) if scenario.groups else {} for i in range(n)]
    thetas = [x.detach().clone() for x in data.init]
    states = [rule.init(x) for x in thetas]
    grads, hhats = [[] for _ in range(n)], [[] for _ in range(n)]
    out = {k: [[] for _ in range(n)] for k in ("theta", "m", "h", "exact_theta")}
    diagnostics = []
    for t in range(1, scenario.steps + 1):
        if scenario.problem is not None:
            g, refresh = _zoo_inputs(scenario, dialect, h, thetas[0], t in refreshing)
        else:
            g, refresh = data.grads[t - 1], data.refreshes.get(t)
        row = []
        for i in range(n):
            hhat = None if refresh is None else refresh.hhat[i]
            grads[i].append(g[i])
            if t in refreshing:
                hhats[i].append(hhat)
            hyper_i = _hyper(h, overrides[i])
            out["exact_theta"][i].append(_exact_theta(knobs, hyper_i, states[i], thetas[i], g[i], hhat))
            new, delta, diag = rule.update(states[i], thetas[i], g[i], hyper_i, knobs, hhat)
            states[i], thetas[i] = new._replace(denominator=None), thetas[i] + delta
            for key, value in (("theta", thetas[i]), ("m", new.m), ("h", new.h)):
                out[key][i].append(value)
            row.append(dict(refreshed=bool(diag.refreshed), clipped=int(diag.clipped), unclipped=int(diag.unclipped)))
        diagnostics.append(row)
    arrays = {}
    for i, x in enumerate(data.init):
        shape = tuple(x.shape)
        arrays[f"theta0_{i}.npy"] = x.numpy()
        arrays[f"grad_{i}.npy"] = torch.stack(grads[i]).numpy()
        arrays[f"hhat_{i}.npy"] = (torch.stack(hhats[i]) if hhats[i] else torch.zeros((0, *shape), dtype=F64)).numpy()
        for key in ("theta", "m", "h", "exact_theta"):
            arrays[f"{key}_{i}.npy"] = torch.stack(out[key][i]).numpy()
    meta = dict(dialect=dialect_name, scenario=scenario.name, knobs=asdict(knobs),
                hyper=dict(lr=h.lr, beta1=h.beta1, beta2=h.beta2, gamma=h.gamma, eps=h.eps,
                           weight_decay=h.weight_decay, hessian_interval=h.hessian_interval, batch_size=h.batch_size),
                steps=scenario.steps, refresh_steps=refreshing,
                tensors=[dict(shape=list(x.shape), overrides=overrides[i]) for i, x in enumerate(data.init)],
                diagnostics=diagnostics)
    return meta, {k: np.asarray(v, dtype=np.float64, order="C") for k, v in arrays.items()}


#: the zoo trajectories: every problem of the oracle zoo, the exact Hessian diagonal as the estimate (the paper's
#: deterministic Sophia), taken along the reference's own path
ZOO_HYPER = rule.Hyper(lr=0.05, beta1=0.9, beta2=0.95, gamma=0.5, eps=1e-12, weight_decay=0.0, hessian_interval=3,
                       batch_size=8.0)
ZOO_STEPS = 30


def zoo_case(dialect_name: str, problem) -> tuple[dict, dict]:
    """(metadata, arrays) of one zoo trajectory: one tensor, the problem's parameters. The estimate is diag(H) in
    the dialect's own meaning: divided by B where B multiplies h at step time."""
    from ..oracles.zoo import FLOAT

    dialect = get_dialect(dialect_name)
    knobs, h = dialect.knobs, ZOO_HYPER
    refreshing = refresh_steps(dialect, h.hessian_interval, ZOO_STEPS)
    theta = torch.tensor(problem.start, dtype=F64)
    state = rule.init(theta)
    per_b = 1.0 if knobs.batch_factor == "estimate" else 1.0 / h.batch_size
    rows = {k: [] for k in ("grad", "hhat", "theta", "m", "h", "exact_theta")}
    diagnostics = []
    for t in range(1, ZOO_STEPS + 1):
        x = [float(v) for v in theta.tolist()]
        g = torch.tensor(problem.grad(x, FLOAT), dtype=F64)
        hhat = torch.tensor(problem.hessian_diagonal(x, FLOAT), dtype=F64) * per_b if t in refreshing else None
        rows["grad"].append(g)
        if hhat is not None:
            rows["hhat"].append(hhat)
        rows["exact_theta"].append(_exact_theta(knobs, h, state, theta, g, hhat))
        new, delta, diag = rule.update(state, theta, g, h, knobs, hhat)
        state, theta = new._replace(denominator=None), theta + delta
        rows["theta"].append(theta)
        rows["m"].append(new.m)
        rows["h"].append(new.h)
        diagnostics.append([dict(refreshed=bool(diag.refreshed), clipped=int(diag.clipped),
                                 unclipped=int(diag.unclipped))])
    arrays = {"theta0_0.npy": torch.tensor(problem.start, dtype=F64).numpy()}
    for key, values in rows.items():
        arrays[f"{key}_0.npy"] = torch.stack(values).numpy()
    meta = dict(dialect=dialect_name, scenario=f"zoo trajectory: {problem.name} (exact Hessian diagonal)",
                knobs=asdict(knobs), hyper=dict(lr=h.lr, beta1=h.beta1, beta2=h.beta2, gamma=h.gamma, eps=h.eps,
                                               weight_decay=h.weight_decay, hessian_interval=h.hessian_interval,
                                               batch_size=h.batch_size),
                steps=ZOO_STEPS, refresh_steps=refreshing, tensors=[dict(shape=[problem.dim], overrides={})],
                diagnostics=diagnostics)
    return meta, {k: np.asarray(v, dtype=np.float64, order="C") for k, v in arrays.items()}


def _exact_theta(knobs, hyper: rule.Hyper, state: rule.State, theta, g, hhat) -> torch.Tensor:
    """The exact-rational oracle's new parameters for one step from the reference's float64 state and inputs,
    correctly rounded to float64 (verification.oracles.step)."""
    from ..oracles.step import exact_step

    flat = lambda x: [float(v) for v in x.reshape(-1).tolist()]  # noqa: E731
    if theta.numel() == 0:
        return theta.clone()
    step = exact_step(asdict(knobs), asdict(hyper), state.step, flat(state.m), flat(state.h), flat(theta), flat(g),
                      None if hhat is None else flat(hhat), state.refreshes, error_scales=False)
    return torch.tensor(step.rounded().theta, dtype=F64).reshape(theta.shape)


def tolerance_model() -> dict:
    from ..conformance.judge import LOW_PRECISION_FACTOR, LOW_PRECISION_FLOOR_ULPS, NATIVE_QUANTITIES

    return dict(
        units="ulps of the dtype at operand scale: parameters max(|theta_t|, |theta_t+1|, lr); m max(|m_t|, "
              "|m_t-1|, |g_t|); h max(|h_t|, |h_t-1|, |hhat_t|)",
        float64=dict(teacher_forced_ulps_per_step=FLOAT64_STEP_ULPS,
                     free_running_ulps_per_step=FLOAT64_STEP_ULPS * FLOAT64_GROWTH_ULPS_PER_STEP),
        low_precision=dict(factor_of_naive_float32_error=LOW_PRECISION_FACTOR, floor_ulps=LOW_PRECISION_FLOOR_ULPS,
                           native_quantities={k: list(v) for k, v in NATIVE_QUANTITIES.items()}))


def export(root: str, dialects=None, quick: bool = False, progress=None) -> dict:
    """Write the vector set into ``root`` (created; must be empty or absent) and return its manifest."""
    from ..oracles.zoo import all_problems

    names = list(DIALECTS) if not dialects else list(dialects)
    cases = {}
    for name in names:
        for scenario in scenarios(quick):
            if progress:
                progress(f"{name} / {scenario.name}")
            cases[f"{name}/{slug(scenario.name)}"] = case_arrays(name, scenario)
        if not quick:
            for problem in all_problems(quick=True):
                cases[f"{name}/zoo-{slug(problem.name)}"] = zoo_case(name, problem)
    return store.write(root, cases, dict(tolerance=tolerance_model(), format_version=FORMAT_VERSION))
