"""Adapter for ``optax.contrib.sophia`` (optax 0.2.8, JAX on CPU, float64 enabled).

``sophia(learning_rate, b1, b2, eps, weight_decay, gamma, update_interval=k,
hessian_diagonal_fn=...)`` is a chain ``scale_by_sophia -> add_decayed_weights ->
scale_by_learning_rate``. ``scale_by_sophia`` calls ``hessian_diagonal_fn.update(grads,
state, params=params, **hess_fn_kwargs)`` (under ``jax.lax.cond``) when
``count % k == 0``, where ``count`` is the number of completed steps, and folds the result
into ``nu`` *after* computing this step's update: the new nu is used from the next step
(the dialect's ``refresh="next_step"``). Its update is ``clip(m_hat / max(gamma nu, eps), 1)``
with bias-corrected ``m_hat``; weight decay is ``lr * weight_decay * theta`` on the
pre-step theta.

The harness's estimate replaces the Hutchinson default: the adapter passes a
``hessian_diagonal_fn`` whose update returns the keyword argument ``hessian_diagonal``,
given through sophia's own ``update(..., hessian_diagonal=...)`` extra-argument path, so no
Hessian-vector product runs. The harness refreshes on ``(t - 1) % k == 0``, i.e. exactly
when ``count == t - 1`` is a multiple of k; on the other steps a zero estimate of the right
shape is passed (the cond's other branch ignores it). A refresh on a step where optax
would not fold it, or a missing refresh where it would, raises.

``jax.config.update("jax_enable_x64", True)`` is set (process-wide) before any array is
made. By default each step runs ``tx.update`` and ``optax.apply_updates`` under
``jax.jit``, the usual way to run optax (one compiled step for every build of the same
shapes and dtypes, the hyperparameters passed as arguments); ``OptaxAdapter(jit=False)`` runs them eagerly.
The two are not bit-identical on CPU: XLA fuses the jitted step and rounds differently
(m differs by up to about 0.3 ulp of its operand scale; eagerly, m and h match the
reference bit for bit). Both agree with the reference within a few ulps
(tests/test_adapters.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Adapter, Hyperparameters, Refresh
from ._torch import installed_version

DISTRIBUTION = "optax"
ESTIMATE_KWARG = "hessian_diagonal"


def _jax():
    """jax with float64 enabled, jax.numpy and optax (imported lazily: importing this module needs none)."""
    installed_version("jax")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax
    import optax.contrib

    return jax, jnp, optax


def supplied_hessian_diagonal():
    """A GradientTransformationExtraArgs returning the estimate passed as ``hessian_diagonal=``."""
    _, _, optax = _jax()

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del updates, params
        if ESTIMATE_KWARG not in extra_args:
            raise ValueError(f"pass the Hessian-diagonal estimate as sophia's update(..., {ESTIMATE_KWARG}=...)")
        return extra_args[ESTIMATE_KWARG], state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_JITTED_STEP = None


def _jitted_step():
    """One jitted ``sophia`` step shared by every adapter, the hyperparameters among its arguments.

    ``sophia(...)`` is built inside the traced function from its arguments, so a new set of
    hyperparameters reuses the compiled step: jit's cache is keyed by shapes and dtypes only.
    The hyperparameters arrive as Python scalars, which jit traces as *weakly typed* values:
    they promote exactly as the Python constants of an eager ``sophia(lr, b1, ...)`` do (a
    float32 run stays float32). Without this, each build compiled afresh, and the
    certification battery spent most of its time in XLA.
    """
    global _JITTED_STEP
    if _JITTED_STEP is None:
        jax, _, optax = _jax()

        def step(params, opt_state, grads, estimate, lr, b1, b2, eps, weight_decay, gamma, interval):
            tx = optax.contrib.sophia(learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                      gamma=gamma, update_interval=interval,
                                      hessian_diagonal_fn=supplied_hessian_diagonal())
            updates, opt_state = tx.update(grads, opt_state, params, **{ESTIMATE_KWARG: estimate})
            return optax.apply_updates(params, updates), opt_state

        _JITTED_STEP = jax.jit(step)
    return _JITTED_STEP


_JAX_DTYPES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


class OptaxAdapter(Adapter):
    """``optax.contrib.sophia`` on JAX CPU with the harness's estimate fed through ``hessian_diagonal_fn``."""

    name = "optax.contrib.sophia"
    dialect = "optax"
    accepts_any_estimate = True

    def __init__(self, jit: bool = True) -> None:
        self.jit = jit
        self.params = None
        self.opt_state = None

    def build(self, params, hyper: Hyperparameters, dtype, device) -> None:
        self.version = installed_version(DISTRIBUTION)
        jax, jnp, optax = _jax()
        if dtype not in _JAX_DTYPES:
            raise ValueError(f"dtype {dtype} has no JAX counterpart here; accepted: {sorted(map(str, _JAX_DTYPES))}")
        if str(device) != "cpu":
            raise ValueError(f"{self.name} runs on JAX CPU in this harness; got device={device!r}")
        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.device = jax.devices("cpu")[0]
        self.jdtype = jnp.dtype(_JAX_DTYPES[dtype])
        self.interval = hyper.hessian_interval
        self.tx = optax.contrib.sophia(
            learning_rate=hyper.lr, b1=hyper.beta1, b2=hyper.beta2, eps=hyper.eps, weight_decay=hyper.weight_decay,
            gamma=hyper.gamma, update_interval=hyper.hessian_interval,
            hessian_diagonal_fn=supplied_hessian_diagonal())
        self.params = self._to_jax(params)
        self.opt_state = self.tx.init(self.params)
        if self.jit:
            hyper_args = (hyper.lr, hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay, hyper.gamma,
                          hyper.hessian_interval)
            self._update = lambda p, s, g, e: _jitted_step()(p, s, g, e, *hyper_args)
        else:
            def update(params, opt_state, grads, estimate):
                updates, opt_state = self.tx.update(grads, opt_state, params, **{ESTIMATE_KWARG: estimate})
                return optax.apply_updates(params, updates), opt_state

            self._update = update

    # -- conversions --------------------------------------------------------------------------------------------

    def _to_jax(self, tensors, like=None) -> list:
        """float64 torch tensors as JAX CPU arrays, in the dtype of ``like``'s arrays (default: the parameters')."""
        dtypes = [self.jdtype] * len(tensors) if like is None else [a.dtype for a in like]
        if len(dtypes) != len(tensors):
            raise ValueError(f"got {len(tensors)} tensors for {len(dtypes)} parameters")
        out = []
        for t, dtype in zip(tensors, dtypes):
            value = t.detach().to(device="cpu", dtype=torch.float64).numpy()
            out.append(self.jax.device_put(self.jnp.asarray(value, dtype=self.jnp.float64).astype(dtype), self.device))
        return out

    @staticmethod
    def _to_torch(arrays) -> list[Tensor]:
        return [torch.from_numpy(np.array(a, dtype=np.float64)) for a in arrays]

    def _sophia_state(self):
        return self.opt_state[0]  # chain(scale_by_sophia, add_decayed_weights, scale_by_learning_rate)

    # -- the protocol -------------------------------------------------------------------------------------------

    def step(self, grads, refresh: Refresh | None) -> None:
        count = int(self._sophia_state().count)
        folds = count % self.interval == 0
        if folds and refresh is None:
            raise RuntimeError(f"step {count + 1}: optax folds a new Hessian estimate when count % update_interval "
                               f"== 0 (count={count}, update_interval={self.interval}); pass `refresh` on this step")
        if refresh is not None and not folds:
            raise ValueError(f"step {count + 1}: optax folds an estimate only when count % update_interval == 0 "
                             f"(count={count}, update_interval={self.interval}); this refresh would be ignored")
        grads = self._to_jax(grads)
        if refresh is not None:
            estimate = self._to_jax(refresh.hhat)
        else:
            estimate = [self.jnp.zeros_like(p) for p in self.params]  # not used: the cond takes the other branch
        self.params, self.opt_state = self._update(self.params, self.opt_state, grads, estimate)

    def parameters(self) -> list[Tensor]:
        return self._to_torch(self.params)

    def state(self):
        s = self._sophia_state()
        return int(s.count), self._to_torch(s.mu), self._to_torch(s.nu)

    def load(self, params, step, m, h) -> None:
        s = self._sophia_state()
        self.params = self._to_jax(params)
        new = s._replace(
            count=self.jnp.asarray(step, dtype=s.count.dtype),
            mu=self._to_jax(m, like=s.mu),
            nu=self._to_jax(h, like=s.nu),
        )  # hessian_fn_state is kept
        self.opt_state = (new,) + tuple(self.opt_state[1:])
