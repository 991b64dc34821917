"""``SophiaRef``: the float64 reference rule as a ``torch.optim.Optimizer``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed, rule
from .dialects import Dialect, get_dialect

Estimate = Sequence[Union[Tensor, None]]
EstimateSource = Union[Estimate, Callable[[], Estimate]]
NAN_POLICIES = ("raise", "skip")
_STATE_DICT_KEY = "sophia_ref"


def _count_non_finite(tensor: Tensor) -> int:
    """Entries that are NaN or +-Inf. A NaN or Inf anywhere makes the sum non-finite, so one
    cheap reduction clears the common case; only then are entries counted. A DTensor (FSDP2) is
    counted shard by shard and the count summed over its mesh, the same one collective on every rank."""
    shard = distributed.local(tensor)
    bad = 0 if bool(torch.isfinite(shard.sum())) else int(torch.count_nonzero(~torch.isfinite(shard)))
    return distributed.count_over_mesh(bad, [tensor], shard.device)


def recipe_refresh_step(t: int, k: int) -> bool:
    """The official recipe's refresh steps in this rule's terms: ``t > 1`` and ``(t - 1) mod k == 0``."""
    return t > 1 and (t - 1) % k == 0


def _implied_refreshes(step: int, k: int, knobs: rule.Knobs, refresh_steps: int) -> int:
    """The refresh count of a parameter after ``step`` steps, for checkpoints saved without one:
    ``ceil(step / k)`` on the ``(t - 1) mod k`` schedule, 0 if h never refreshes, and for a caller-driven
    refresh the optimizer's count of refresh steps (exact when the parameter had a gradient on each)."""
    if knobs.refresh in ("immediate", "next_step"):
        return -(-step // k)
    if knobs.refresh == "never":
        return 0
    return refresh_steps


def _saved_knobs(saved: dict) -> dict:
    """The knobs a checkpoint was saved with; fields it predates take their defaults."""
    try:
        return asdict(rule.Knobs(**saved))
    except (TypeError, ValueError):
        return dict(saved)


@dataclass(frozen=True)
class StepDiagnostics:
    """What the last call to :meth:`SophiaRef.step` did, over all parameters.

    ``win_rate``: fraction of coordinates whose step was not clipped (the paper's
    diagnostic; it suggests keeping it between 0.1 and 0.5). ``sign_steps``:
    coordinates clipped to a full sign step ``eta c sign(m)``. ``floored``:
    coordinates whose scaled curvature ``gamma h`` was at or below eps.
    ``refreshes`` and ``skipped_steps`` count over the whole run.
    """

    step: int
    skipped: bool
    refreshed: bool
    numel: int
    win_rate: float
    sign_steps: int
    floored: int
    refreshes: int
    skipped_steps: int


class _SophiaBase(Optimizer):
    """What SophiaRef and the fast optimizers share: the constructor, its validation, the dialect's
    defaults, the refresh schedule and the checks of a Hessian estimate."""

    nan_policies = NAN_POLICIES

    def __init__(self, params, lr: float, betas: tuple[float, float] | None = None, gamma: float | None = None,
                 eps: float | None = None, weight_decay: float | None = None, hessian_interval: int | None = None,
                 *, dialect: str | Dialect = "paper", rho: float | None = None, batch_size: float | None = None,
                 nan_policy: str = "raise", hessian_estimator: Callable[[], Estimate] | None = None):
        self.dialect = get_dialect(dialect)
        if rho is not None:
            if self.dialect.knobs.form != "rho":
                raise ValueError(f"rho={rho!r} is the clip threshold of the rho form, but dialect "
                                 f"{self.dialect.name!r} uses the gamma form: pass gamma instead")
            if gamma is not None:
                raise ValueError(f"gamma={gamma!r} and rho={rho!r} were both given; in the rho form they are one "
                                 "hyperparameter: pass one of them")
            gamma = rho
        if nan_policy not in self.nan_policies:
            raise ValueError(f"nan_policy={nan_policy!r} is not valid; accepted values: "
                             f"{', '.join(map(repr, self.nan_policies))}")
        if hessian_estimator is not None and not callable(hessian_estimator):
            raise ValueError(f"hessian_estimator={hessian_estimator!r} is not valid: expected a callable of no "
                             "argument returning one tensor per parameter")
        given = dict(betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay,
                     hessian_interval=hessian_interval, batch_size=batch_size)
        defaults = {key: self.dialect.defaults[key] if value is None else value for key, value in given.items()}
        defaults["lr"] = lr
        self._hyper(defaults)  # validate before torch builds the groups
        self.nan_policy = nan_policy
        self.hessian_estimator = hessian_estimator
        self._step = 0
        self._refreshes = 0
        self._skipped = 0
        self.diagnostics: StepDiagnostics | None = None
        self._denominators: dict = {}  # per parameter, max(gamma h, eps) for its current h: a cache, never saved
        super().__init__(params, defaults)

    # -- hyperparameters ---------------------------------------------------------------------------------------

    @staticmethod
    def _hyper(group: dict) -> rule.Hyper:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas={betas!r} is not valid; accepted: a pair (beta1, beta2), each in [0, 1)")
        return rule.Hyper(lr=group["lr"], beta1=betas[0], beta2=betas[1], gamma=group["gamma"], eps=group["eps"],
                          weight_decay=group["weight_decay"], hessian_interval=group["hessian_interval"],
                          batch_size=group["batch_size"])

    def add_param_group(self, param_group: dict) -> None:
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self._hyper(param_group)
        params = param_group["params"]
        for p in [params] if isinstance(params, Tensor) else params:
            p = p[1] if isinstance(p, tuple) else p
            if isinstance(p, Tensor) and (p.is_complex() or not p.is_floating_point()):
                raise ValueError(f"{type(self).__name__} needs real floating-point parameters; got one of dtype {p.dtype}")
        super().add_param_group(param_group)

    # -- the step ----------------------------------------------------------------------------------------------

    def _name(self, group_index: int, index: int, p: Tensor) -> str:
        names = self.param_groups[group_index].get("param_names")
        if names:
            return f"parameter {names[index]!r}"
        return f"parameter {index} of group {group_index} (shape {tuple(p.shape)})"

    def _estimate(self, source: EstimateSource | None, t: int, count: int) -> list[Tensor | None]:
        source = self.hessian_estimator if source is None else source
        if source is None:
            raise ValueError(f"step {t} refreshes the Hessian estimate, but none was given: pass "
                             f"step(hessian_estimate=...) or build {type(self).__name__} with hessian_estimator=...")
        if callable(source):
            with torch.enable_grad():
                source = source()
        if isinstance(source, Tensor) or not isinstance(source, (list, tuple)):
            raise ValueError(f"hessian_estimate must be a list with one tensor per parameter, got "
                             f"{type(source).__name__}")
        if len(source) != count:
            raise ValueError(f"hessian_estimate has {len(source)} entries, but the optimizer has {count} parameters "
                             "(all groups, in order)")
        return list(source)

    def _check_estimate_entry(self, hhat, p: Tensor, name: str) -> None:
        if not isinstance(hhat, Tensor):
            raise ValueError(f"hessian_estimate for {name} is {type(hhat).__name__}, expected a tensor")
        if hhat.is_complex() or not hhat.is_floating_point():
            raise ValueError(f"hessian_estimate for {name} has dtype {hhat.dtype}; expected a real floating dtype")
        if hhat.shape != p.shape:
            raise ValueError(f"hessian_estimate for {name} has shape {tuple(hhat.shape)}, expected {tuple(p.shape)}")
        if hhat.device != p.device:
            raise ValueError(f"hessian_estimate for {name} is on {hhat.device}, but the parameter is on {p.device}")

    def _begin_step(self, closure) -> tuple:
        """``(loss, t, hypers)``: the closure's loss (or None), the step's number and each group's Hyper."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return loss, self._step + 1, [self._hyper(group) for group in self.param_groups]

    def _is_refresh_step(self, t: int, k: int, explicit: bool) -> bool:
        """Whether a parameter at its step t refreshes: the rule's schedule, except that a caller-driven
        refresh given no explicit estimate calls ``hessian_estimator`` on the official recipe's steps."""
        knobs = self.dialect.knobs
        if knobs.refresh == "caller" and not explicit and self.hessian_estimator is not None:
            return recipe_refresh_step(t, k)
        return rule.is_refresh_step(t, k, knobs, explicit)

    # -- checkpoints -------------------------------------------------------------------------------------------

    #: the per-parameter state entries this optimizer keeps from a checkpoint
    _kept_state = ("step", "m", "h", "refreshes", "master")

    @staticmethod
    def _state_dtype(p: Tensor) -> torch.dtype:
        """The dtype of p's floating state (and master copy): float64 in the reference."""
        return torch.float64

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict[_STATE_DICT_KEY] = dict(step=self._step, refreshes=self._refreshes, skipped=self._skipped,
                                           dialect=self.dialect.name, knobs=asdict(self.dialect.knobs),
                                           optimizer=type(self).__name__)
        return state_dict

    def init_state(self) -> None:
        """Create every parameter's state as a first step would find it (step 0, m = h = 0), without stepping.

        For ``torch.distributed.checkpoint.state_dict.get_state_dict`` on a fresh optimizer: it initializes an
        empty optimizer by calling ``step()`` with zero gradients, which a Sophia refuses on its first step (a
        refresh step needs an estimate). With the state in place it does not step."""
        for group in self.param_groups:
            for p in group["params"]:
                if not self.state.get(p):
                    dtype = self._state_dtype(p)
                    self.state[p] = {"step": 0, "m": torch.zeros_like(p, dtype=dtype),
                                     "h": torch.zeros_like(p, dtype=dtype), "refreshes": 0}

    def _check_checkpoint(self, state_dict: dict) -> None:
        """Refuse, before anything is written, a state dict whose layout or entries cannot be this optimizer's:
        other parameter groups, a state tensor of another shape, a non-finite m or h, a step or refresh count
        that is not a count. A truncated or corrupted file fails in torch.load; what loads must still fit."""
        if not isinstance(state_dict.get("state"), dict) or not isinstance(state_dict.get("param_groups"), list):
            raise ValueError("not an optimizer state dict: expected 'state' (a dict) and 'param_groups' (a list)")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"this state dict has {len(saved_groups)} parameter groups, the optimizer "
                             f"{len(self.param_groups)}: it was saved for another parameter layout")
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(f"parameter group {gi} has {len(saved.get('params', ()))} parameters in this state "
                                 f"dict and {len(group['params'])} in the optimizer: another parameter layout")
        ids = [i for g in saved_groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            entry = state_dict["state"].get(pid)
            if not entry:
                continue
            where = f"the state of parameter {pid} (shape {tuple(p.shape)})"
            for key in ("m", "h", "master"):
                value = entry.get(key)
                if value is None:
                    continue
                if not isinstance(value, Tensor) or not value.is_floating_point() or value.shape != p.shape:
                    got = (f"shape {tuple(value.shape)}, dtype {value.dtype}" if isinstance(value, Tensor)
                           else type(value).__name__)
                    raise ValueError(f"{where}: {key} is {got}; expected a floating tensor of shape {tuple(p.shape)} "
                                     "(a checkpoint of another model, or a corrupted one)")
                why = distributed.layout_mismatch(value, p)
                if why:
                    raise ValueError(f"{where}: {key} does not fit: {why}")
                if key != "master" and not bool(torch.isfinite(value).all()):  # a DTensor: over all its ranks
                    raise ValueError(f"{where}: {key} has non-finite entries (a corrupted checkpoint, or one saved "
                                     "after a diverged step)")
            step, refreshes = entry.get("step"), entry.get("refreshes")
            step = int(step.item()) if isinstance(step, Tensor) and step.numel() == 1 else step
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise ValueError(f"{where}: step is {step!r}; expected a count >= 0")
            if refreshes is not None and (not isinstance(refreshes, int) or not 0 <= refreshes <= step):
                raise ValueError(f"{where}: refreshes is {refreshes!r}; expected a count between 0 and step={step}")

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        counters = state_dict.pop(_STATE_DICT_KEY, None)
        if counters is not None and _saved_knobs(counters["knobs"]) != asdict(self.dialect.knobs):
            raise ValueError(f"this state dict was saved by a {counters.get('optimizer', 'SophiaRef')} with dialect "
                             f"{counters['dialect']!r}, "
                             f"which differs from this optimizer's {self.dialect.name!r}")
        saved_state = state_dict.get("state")
        self._check_checkpoint(state_dict)
        super().load_state_dict(state_dict)
        self._denominators.clear()
        # torch casts floating state to each parameter's dtype; each optimizer keeps its own state dtype
        # (the reference float64, bit for bit), and drops what it does not keep (the reference's master copies)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for pid, p in zip(ids, params):
            for key, value in saved_state.get(pid, {}).items():
                if key not in self._kept_state:
                    self.state[p].pop(key, None)
                elif isinstance(value, Tensor) and value.is_floating_point():
                    value = value.to(device=p.device, dtype=self._state_dtype(p), copy=True)
                    self.state[p][key] = distributed.shard_like(value, p)  # a full tensor of a sharded parameter
        if counters is not None:
            self._step, self._refreshes, self._skipped = counters["step"], counters["refreshes"], counters["skipped"]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "refreshes" not in state:
                    state["refreshes"] = _implied_refreshes(state["step"], group["hessian_interval"],
                                                            self.dialect.knobs, self._refreshes)


class SophiaRef(_SophiaBase):
    r"""Sophia (Liu et al., arXiv 2305.14342, Algorithm 3), computed in float64.

    .. code-block:: text

        input: eta (lr), b1, b2 (betas), gamma, eps, lambda (weight_decay), k (hessian_interval)
        m_0 = 0, h_0 = 0
        for t = 1, 2, ...:
            g_t = grad L_t(theta_t)
            m_t = b1 m_{t-1} + (1 - b1) g_t
            if (t - 1) mod k == 0:  h_t = b2 h_{t-k} + (1 - b2) hhat_t    (hhat_t: hessian_estimate)
            else:                   h_t = h_{t-1}
            theta_{t+1} = theta_t - eta lambda theta_t - eta clip(m_t / max(gamma h_t, eps), 1)

    ``dialect`` selects the rule's knobs (:mod:`sophia_ref.dialects`): ``"paper"``
    (the default) is the algorithm above; the others model public
    implementations. Hyperparameters left as ``None`` take the dialect's
    defaults (for ``"paper"``: betas (0.96, 0.99), gamma 0.01, eps 1e-12,
    weight_decay 0, k 10). In the rho-form dialects gamma is rho and may be
    given as ``rho=``. ``batch_size`` is the batch factor B of dialects that
    multiply it at step time (``official``).

    The optimizer keeps float64 master copies of the parameters and float64
    state whatever the parameter dtype, and writes each step back rounded to the
    parameter's dtype. On refresh steps :meth:`step` needs a Hessian-diagonal
    estimate: a list with one tensor per parameter (all groups, in order; None
    for a parameter without a gradient), or a callable returning one, or else
    the ``hessian_estimator`` given here (a callable of no argument returning
    such a list). Callables run only on refresh steps, before any parameter
    moves, with grad enabled.

    In a dialect whose refresh is the caller's (``official``, ``levanter``), an
    explicit ``hessian_estimate`` refreshes every parameter on that step; without
    one, a ``hessian_estimator`` is called on the official recipe's schedule:
    steps ``t > 1`` with ``(t - 1) mod k == 0`` (t = k + 1, 2k + 1, ...; the
    recipe's ``update_hessian()`` after steps k, 2k, ...), per parameter group's k.
    In a dialect whose refresh is ``"never"`` (``fastxtend``) estimates are ignored.

    Each parameter's state holds ``step``, ``m``, ``h`` (float64) and
    ``refreshes``, the number of estimates folded into its h (the n of the
    ``h_bias_correction="refreshes"`` knob). A checkpoint saved without it is
    given the count its schedule implies: ``ceil(step / k)`` for the
    ``(t - 1) mod k`` phases, 0 for ``"never"``, and the optimizer's count of
    refresh steps for a caller-driven refresh.

    ``nan_policy``: a NaN or Inf in a gradient or an estimate raises
    ``FloatingPointError`` (``"raise"``) or skips the step and counts it
    (``"skip"``); either way nothing changes. :attr:`diagnostics` describes the
    last step.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, hessian_estimate: EstimateSource | None = None):
        """One Sophia step; returns the closure's loss (or None)."""
        loss, t, hypers = self._begin_step(closure)
        knobs = self.dialect.knobs

        work = []  # (group index, index in group, flat index, parameter, its rule state)
        flat = 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    name = self._name(gi, pi, p)
                    if p.grad.is_sparse:
                        raise ValueError(f"{name} has a sparse gradient; SophiaRef supports dense gradients only")
                    if p.grad.shape != p.shape:
                        raise ValueError(f"{name}: gradient shape {tuple(p.grad.shape)} != {tuple(p.shape)}")
                    if p.grad.is_complex():
                        raise ValueError(f"{name} has a complex gradient ({p.grad.dtype})")
                    state = self.state.get(p)  # .get: a failed step must not leave even an empty entry behind
                    current = (rule.State(state["step"], state["m"], state["h"], self._denominators.get(p),
                                          state.get("refreshes", 0)) if state else rule.init(p))
                    work.append((gi, pi, flat, p, current))
                flat += 1

        refresh = [self._is_refresh_step(s.step + 1, hypers[gi].hessian_interval, hessian_estimate is not None)
                   for gi, _, _, _, s in work]
        estimate = self._estimate(hessian_estimate, t, flat) if any(refresh) else None
        if estimate is not None:
            for (gi, pi, fi, p, _), r in zip(work, refresh):
                if r:
                    self._check_estimate_entry(estimate[fi], p, self._name(gi, pi, p))

        for (gi, pi, fi, p, _), r in zip(work, refresh):
            for what, tensor in (("gradient", p.grad), ("Hessian estimate", estimate[fi] if r else None)):
                bad = 0 if tensor is None else _count_non_finite(tensor)
                if bad:
                    if self.nan_policy == "raise":
                        raise FloatingPointError(
                            f"step {t}: the {what} of {self._name(gi, pi, p)} has {bad} non-finite entries "
                            f"(NaN or Inf); nothing was changed (nan_policy='raise')")
                    self._skipped += 1
                    self.diagnostics = StepDiagnostics(t, True, False, 0, float("nan"), 0, 0,
                                                       self._refreshes, self._skipped)
                    return loss

        results = []
        for (gi, pi, fi, p, current), r in zip(work, refresh):
            theta = self._master(p)
            hhat = estimate[fi].to(torch.float64) if r else None
            results.append(rule.update(current, theta, p.grad.to(torch.float64), hypers[gi], knobs, hhat))

        numel = clipped = floored = unclipped = 0
        for (gi, pi, fi, p, _), (new, delta, diag) in zip(work, results):
            state = self.state[p]
            state["step"], state["m"], state["h"], state["refreshes"] = new.step, new.m, new.h, new.refreshes
            self._denominators[p] = new.denominator
            if p.dtype == torch.float64:
                p.add_(delta)
            else:
                master = state["master"]
                master.add_(delta)
                p.copy_(master)
            numel += diag.numel
            clipped += diag.clipped
            unclipped += diag.unclipped
            floored += diag.floored
        refreshed = any(diag.refreshed for _, _, diag in results)
        self._step = t
        self._refreshes += refreshed
        self.diagnostics = StepDiagnostics(t, False, refreshed, numel, unclipped / numel if numel else float("nan"),
                                           clipped, floored, self._refreshes, self._skipped)
        return loss

    def _master(self, p: Tensor) -> Tensor:
        """The float64 value of p: p itself, or its master copy (re-read if p was changed from outside)."""
        if p.dtype == torch.float64:
            return p.detach()
        state = self.state[p]
        master = state.get("master")
        if master is None or not torch.equal(master.to(p.dtype), p):
            master = p.detach().to(torch.float64, copy=True)
            state["master"] = master
        return master
