"""``sophia_ref.fast.Sophia``: the Sophia rule for real training, on the foreach or the Triton backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .. import distributed
from ..dialects import Dialect
from ..optim import Estimate, EstimateSource, _SophiaBase
from . import foreach, triton_step
from .plan import Bucket, Item, scalars, unsupported

BACKENDS = ("auto", "foreach", "triton")


_local = distributed.local
_mesh_group = distributed.mesh_group


@dataclass(frozen=True)
class FastDiagnostics:
    """What the last :meth:`Sophia.step` did: ``win_rate`` is the fraction of coordinates whose step
    was not clipped (computed on the device; read, with one host sync, only when this is asked for)."""

    step: int
    skipped: bool
    refreshed: bool
    numel: int
    win_rate: float
    refreshes: int
    skipped_steps: int


class Sophia(_SophiaBase):
    r"""Sophia (arXiv 2305.14342, Algorithm 3) for training: float32 state, one fused pass per step.

    The constructor and :meth:`step` are :class:`~sophia_ref.SophiaRef`'s (the same dialects,
    defaults, refresh schedule, estimate forms and errors); what differs is the arithmetic:
    parameters are updated in place in their own dtype, m and h are float32 (float64 for float64
    parameters), and the step runs as

    - ``backend="foreach"``: ``torch._foreach_*`` ops over all tensors (CPU and CUDA);
    - ``backend="triton"``: one multi-tensor Triton kernel per device and parameter dtype that
      reads p, g, m, h once and writes p and m (h on refresh steps) (:mod:`.triton_step`); float32
      and bfloat16 parameters, on CUDA, or on CPU under ``TRITON_INTERPRET=1``;
    - ``backend="auto"``: triton for float32 and bfloat16 parameters on CUDA, foreach otherwise.

    The kernel writes through raw addresses, so a non-contiguous parameter (a strided view) takes
    the foreach path on either backend.

    Every preset is selectable; a custom :class:`~sophia_ref.dialects.Dialect` whose knobs the fast
    path does not implement (``h_bias_correction``, ``estimate_clamp``, ``weight_decay_form`` other
    than the paper's) is refused with the knobs named.

    ``stochastic_rounding``: bfloat16 parameters are written back with stochastic rounding
    (unbiased) instead of round-to-nearest (triton backend; the foreach backend rounds to nearest).

    ``nan_policy``: ``"raise"`` (default) and ``"skip"`` check every gradient and estimate on the
    device and read one flag (one host sync per step): a non-finite entry raises
    ``FloatingPointError`` or skips the step, with nothing changed, as in SophiaRef. ``"ignore"``
    checks nothing and never syncs: non-finite values propagate, as in ``torch.optim``.

    :attr:`diagnostics` is the last step's :class:`FastDiagnostics`; its win rate stays on the
    device until it is read.
    """

    nan_policies = ("raise", "skip", "ignore")

    def __init__(self, params, lr: float, betas: tuple[float, float] | None = None, gamma: float | None = None,
                 eps: float | None = None, weight_decay: float | None = None, hessian_interval: int | None = None,
                 dialect: str | Dialect = "paper", nan_policy: str = "raise",
                 hessian_estimator: Callable[[], Estimate] | None = None, backend: str = "auto",
                 stochastic_rounding: bool = False, *, rho: float | None = None, batch_size: float | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not valid; accepted values: {', '.join(map(repr, BACKENDS))}")
        if not isinstance(stochastic_rounding, bool):
            raise ValueError(f"stochastic_rounding={stochastic_rounding!r} is not valid; accepted values: True, False")
        self.backend = backend
        self.stochastic_rounding = stochastic_rounding
        self._device = None
        self._last = None
        self._tables: dict = {}
        self._scratch: dict = {}  # CPU parameters of the foreach path: u's buffer, kept between steps
        self._seed = None
        super().__init__(params, lr, betas, gamma, eps, weight_decay, hessian_interval, dialect=dialect, rho=rho,
                         batch_size=batch_size, nan_policy=nan_policy, hessian_estimator=hessian_estimator)
        missing = unsupported(self.dialect.knobs)
        if missing:
            raise ValueError(f"dialect {self.dialect.name!r} is not available on the fast path: it sets "
                             f"{', '.join(missing)}, which sophia_ref.fast does not implement; use SophiaRef for it")

    # -- parameters --------------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        for p in tensors:
            if not isinstance(p, Tensor):
                continue
            if self._device is None:
                self._device = p.device
            elif p.device != self._device:
                raise ValueError(f"Sophia's parameters must all be on one device: got {p.device} after "
                                 f"{self._device}; build one optimizer per device")
            if self.backend == "triton" and p.is_floating_point() and not p.is_complex():
                why = self._triton_refuses(p.device, p.dtype)
                if why:
                    raise ValueError(f"backend='triton' cannot update a {p.dtype} parameter on {p.device}: {why}")
        param_group = dict(param_group, params=params)
        super().add_param_group(param_group)

    @staticmethod
    def _triton_refuses(device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in triton_step.DTYPES:
            return "the kernel takes float32 and bfloat16 parameters (use backend='foreach' for others)"
        return triton_step.runs_on(device)

    def _backend_for(self, device: torch.device, dtype: torch.dtype) -> str:
        if self.backend == "auto":
            return "triton" if device.type == "cuda" and self._triton_refuses(device, dtype) is None else "foreach"
        return self.backend

    @staticmethod
    def _state_dtype(p: Tensor) -> torch.dtype:
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    _kept_state = ("step", "m", "h", "refreshes")

    # -- diagnostics ---------------------------------------------------------------------------------------------

    @property
    def diagnostics(self) -> FastDiagnostics | None:
        if self._last is None:
            return None
        t, skipped, refreshed, numel, counts = self._last
        if skipped or not numel:
            rate = float("nan")
        else:  # the one host read (a CPU count is taken here, from the last step's u)
            rate = int(sum(c() if callable(c) else c for c in counts)) / numel
        return FastDiagnostics(t, skipped, refreshed, numel, rate, self._refreshes, self._skipped)

    @diagnostics.setter
    def diagnostics(self, value) -> None:  # the base class initializes it to None
        self._last = None

    # -- the step ------------------------------------------------------------------------------------------------

    def _check_grad(self, p: Tensor, name: str) -> None:
        g = p.grad
        if g.is_sparse:
            raise ValueError(f"{name} has a sparse gradient; Sophia supports dense gradients only")
        if g.shape != p.shape:
            raise ValueError(f"{name}: gradient shape {tuple(g.shape)} != {tuple(p.shape)}")
        if g.dtype != p.dtype:
            raise ValueError(f"{name}: gradient dtype {g.dtype} != parameter dtype {p.dtype}")
        if g.device != p.device:
            raise ValueError(f"{name}: gradient on {g.device}, parameter on {p.device}")

    def _non_finite(self, tensors: list[Tensor]) -> bool:
        """Whether any entry of ``tensors`` is NaN or Inf, with one flag read.

        Euclidean norms first (one multi-tensor reduction; a NaN or Inf entry always makes its norm
        non-finite, as squares cannot cancel). A non-finite norm is then confirmed entry by entry,
        because the sum of squares of large finite entries can overflow too. DTensors (FSDP2) are
        checked shard by shard and the verdict is agreed over their mesh (one all-reduce), so every
        rank raises or skips together."""
        group = _mesh_group(tensors)
        tensors = [_local(x) for x in tensors]
        tensors = [x for x in tensors if x.numel()]
        bad = False
        if tensors:
            norms = torch.stack([n.float() for n in torch._foreach_norm(tensors, 2)])
            suspects = (~torch.isfinite(norms)).nonzero().reshape(-1).tolist()  # the one host read
            bad = any(not bool(torch.isfinite(tensors[i]).all()) for i in suspects)
        if group is not None:
            import torch.distributed as dist

            flag = torch.tensor([int(bad)], dtype=torch.int32,
                                device=tensors[0].device if tensors else self._device or "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            bad = bool(flag.item())
        return bad

    def _culprit(self, work, refresh, estimate, t: int) -> str:
        for (gi, pi, fi, p), r in zip(work, refresh):
            for what, x in (("gradient", p.grad), ("Hessian estimate", estimate[fi] if r else None)):
                if x is not None and x.numel():
                    bad = int(torch.count_nonzero(~torch.isfinite(x)))
                    if bad:
                        return (f"step {t}: the {what} of {self._name(gi, pi, p)} has {bad} non-finite entries "
                                f"(NaN or Inf); nothing was changed (nan_policy='raise')")
        return f"step {t}: a gradient or estimate has non-finite entries; nothing was changed"

    def _scratch_for(self, bucket: Bucket) -> list[Tensor] | None:
        """u's buffers for a CPU bucket, kept between steps (a fresh large CPU allocation costs page faults); None
        on other devices, where the caching allocator makes a per-step buffer cheap."""
        if bucket.device.type != "cpu":
            return None
        out = []
        for it in bucket.items:
            key = it.p if it.key is None else it.key
            buf = self._scratch.get(key)
            if buf is None or buf.shape != it.p.shape or buf.dtype != it.m.dtype:
                buf = self._scratch[key] = torch.empty(it.p.shape, dtype=it.m.dtype)
            out.append(buf)
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, hessian_estimate: EstimateSource | None = None):
        """One Sophia step; returns the closure's loss (or None)."""
        loss, t, hypers = self._begin_step(closure)
        knobs = self.dialect.knobs

        work = []  # (group index, index in group, flat index, parameter)
        flat = 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check_grad(p, self._name(gi, pi, p))
                    work.append((gi, pi, flat, p))
                flat += 1
        steps = [self.state[p].get("step", 0) if p in self.state else 0 for _, _, _, p in work]
        refresh = [self._is_refresh_step(s + 1, hypers[gi].hessian_interval, hessian_estimate is not None)
                   for (gi, _, _, _), s in zip(work, steps)]
        estimate = self._estimate(hessian_estimate, t, flat) if any(refresh) else None
        if estimate is not None:
            for (gi, pi, fi, p), r in zip(work, refresh):
                if r:
                    self._check_estimate_entry(estimate[fi], p, self._name(gi, pi, p))

        if self.nan_policy != "ignore":
            checked = [p.grad for _, _, _, p in work] + [estimate[fi] for (_, _, fi, _), r in zip(work, refresh) if r]
            if self._non_finite(checked):
                if self.nan_policy == "raise":
                    raise FloatingPointError(self._culprit(work, refresh, estimate, t))
                self._skipped += 1
                self._last = (t, True, False, 0, [])
                return loss

        buckets: dict = {}
        for (gi, pi, fi, p), s, r in zip(work, steps, refresh):
            state = self.state[p]
            dtype = self._state_dtype(p)
            if "m" not in state:  # zeros_like: a DTensor parameter gets DTensor state with its placements
                state.update(step=0, m=torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format),
                             h=torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format), refreshes=0)
            for key in ("m", "h"):  # state written from outside (another dtype, layout or device) is taken over
                x = state[key]
                if x.dtype != dtype or x.device != p.device or not x.is_contiguous():
                    state[key] = x.to(device=p.device, dtype=dtype, memory_format=torch.contiguous_format)
            state.setdefault("refreshes", 0)
            hhat = distributed.shard_like(estimate[fi], p) if r else None  # a full estimate of a sharded p
            # under FSDP2 the kernels see this rank's shards: the rule is elementwise
            item = Item(_local(p), _local(p.grad), _local(state["m"]), _local(state["h"]), _local(hhat),
                        scalars(hypers[gi], knobs, s + 1), key=p)
            key = (p.device, p.dtype, self._backend_for(p.device, p.dtype) if p.is_contiguous() else "foreach")
            buckets.setdefault(key, Bucket(p.device, p.dtype)).items.append(item)

        counts = []
        for (device, dtype, backend), bucket in buckets.items():
            if backend == "triton":
                count = torch.zeros((), dtype=torch.int32, device=device)
                if self.stochastic_rounding and self._seed is None:
                    self._seed = torch.randint(0, 2 ** 31 - 1, (), dtype=torch.int64).to(device)
                triton_step.step(bucket, knobs, self._tables.setdefault((device, dtype), triton_step._Tables()),
                                 count, self._seed, self.stochastic_rounding)
            else:
                count = foreach.step(bucket, knobs, self._scratch_for(bucket))
            if count is not None:
                counts.append(count)
        if self._seed is not None:
            self._seed.add_(1)  # a new random stream each step, without leaving the device

        for (_, _, _, p), r in zip(work, refresh):
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            state["refreshes"] += bool(r)
        refreshed = any(refresh)
        self._step = t
        self._refreshes += refreshed
        numel = sum(_local(p).numel() for _, _, _, p in work)  # under FSDP2: this rank's shards
        self._last = (t, False, refreshed, numel, counts)
        return loss
