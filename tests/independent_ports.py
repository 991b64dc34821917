"""Two public ports of Sophia, rewritten in plain torch float64 from their source (not from sophia_ref).

Each class follows its port's update for one parameter tensor, operation by operation,
in the order the source writes them:

- :class:`LevanterSophiaH`: levanter ``src/levanter/optim/sophia.py`` (HEAD 9263f81e):
  ``_sophia_gradient_transform`` chained with ``optax.add_decayed_weights`` and
  ``optax.scale(-lr)``, then ``optax.apply_updates``.
- :class:`FastxtendSophia`: fastxtend ``fastxtend/optimizer/sophia.py`` (HEAD b8c4e87c):
  ``sophia_step`` as driven by ``SophiaCallback``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

F64 = torch.float64


class LevanterSophiaH:
    """levanter Sophia-H on one tensor::

        mu      = (1 - b1) g + b1 mu                       update_moment(updates, state.mu, b1, 1)
        mu_hat  = mu / (1 - b1^(count + 1))                bias_correction(mu, b1, state.count + 1)
        u       = mu_hat / max(gamma h, eps)               h: state.h, not bias-corrected
        u       = clip(u, -c, c)
        u       = u + wd theta                             add_decayed_weights (theta: the pre-step params)
        u       = -lr u                                    scale(-lr)
        count   = count + 1
        if count % update_interval == 0:                   update_hessian, after the update
            h = (1 - b2) hhat(theta) + b2 h                hhat at the params the update was given
        theta   = theta + u                                apply_updates
    """

    def __init__(self, theta: Tensor, lr: float, b1: float = 0.96, b2: float = 0.99, eps: float = 1e-12,
                 gamma: float = 0.01, weight_decay: float = 0.1, clip_threshold: float = 1.0,
                 update_interval: int = 10):
        self.lr, self.b1, self.b2, self.eps, self.gamma = lr, b1, b2, eps, gamma
        self.weight_decay, self.clip_threshold, self.update_interval = weight_decay, clip_threshold, update_interval
        self.count = 0
        self.mu = torch.zeros_like(theta, dtype=F64)
        self.h = torch.zeros_like(theta, dtype=F64)

    def step(self, theta: Tensor, grad: Tensor, hessian_fn: Callable[[Tensor], Tensor]) -> Tensor:
        """The new parameters; ``hessian_fn(theta)`` is the Hutchinson estimate at ``theta``."""
        mu = (1 - self.b1) * grad + self.b1 * self.mu
        mu_hat = mu / (1 - self.b1 ** (self.count + 1))
        updates = mu_hat / torch.maximum(self.gamma * self.h, torch.tensor(self.eps, dtype=F64))
        updates = torch.clip(updates, -self.clip_threshold, self.clip_threshold)
        if self.weight_decay > 0:
            updates = updates + self.weight_decay * theta
        updates = -self.lr * updates
        self.mu = mu
        self.count += 1
        if self.count % self.update_interval == 0:
            self.h = (1 - self.b2) * hessian_fn(theta) + self.b2 * self.h
        return theta + updates


class FastxtendSophia:
    """fastxtend Sophia on one tensor (``sophia_step`` with ``SophiaCallback``)::

        hessian step (SophiaCallback: step_iter % hessian_update == hessian_update):
            h = h hess_mom + g g (1 - hess_mom)            addcmul_, and no parameter update
        otherwise:
            p = p (1 - lr wd)                              p.data.mul_
            m = m mom + (1 - mom) g                        grad_avg.mul_(mom).add_(g, alpha=1-mom)
            ratio = min(|m| / (h (rho bs) + eps), 1)       abs().div(hessian.mul(rho*bs).add(eps)).clamp(None, 1)
            p = p + (-lr) sign(m) ratio                    p.data.addcmul_(grad_avg.sign(), ratio, value=-lr)

    The torch calls are fastxtend's own, so fused kernels (``add_`` with alpha, ``addcmul_``)
    round as they do there.
    """

    def __init__(self, theta: Tensor, lr: float, mom: float = 0.965, hess_mom: float = 0.99, rho: float = 0.4,
                 eps: float = 1e-15, wd: float = 0.01, hessian_update: int = 10):
        self.lr, self.mom, self.hess_mom, self.rho, self.eps, self.wd = lr, mom, hess_mom, rho, eps, wd
        self.hessian_update = hessian_update
        self.step_iter = 0
        self.grad_avg = torch.zeros_like(theta, dtype=F64)
        self.hessian = torch.zeros_like(theta, dtype=F64)

    def step(self, p: Tensor, grad: Tensor, bs: int) -> Tensor:
        """The new parameters (p is updated in place, as fastxtend does, and returned)."""
        hessian_step = self.step_iter % self.hessian_update == self.hessian_update
        if hessian_step:
            self.hessian.mul_(self.hess_mom).addcmul_(grad, grad, value=1 - self.hess_mom)
        else:
            if self.wd != 0:
                p.mul_(1 - self.lr * self.wd)
            self.grad_avg.mul_(self.mom).add_(grad, alpha=1 - self.mom)
            ratio = self.grad_avg.abs().div(self.hessian.mul(self.rho * bs).add(self.eps)).clamp(None, 1)
            p.addcmul_(self.grad_avg.sign(), ratio, value=-self.lr)
        self.step_iter += 1
        return p
