"""The ``triton`` backend: one bucket's step as one multi-tensor kernel launch.

Design: a *multi-tensor launch*. The kernel gets tables of raw addresses (p, g, m, h and the
estimate of every parameter), one row of per-step scalars per parameter, and a chunk table:
chunk i covers ``BLOCK`` elements of parameter ``chunk_param[i]`` from ``chunk_start[i]``. One
program per chunk reads p, g, m, h (and the estimate on a refresh), and writes p and m (and h):
24 bytes per fp32 parameter on a step, the fewest any Sophia step can move.

Why not flat buffers: viewing the parameters and their gradients into one flat buffer would let a
plain elementwise kernel run, but it must re-point ``p.data`` and keep ``p.grad`` inside the
buffer, which breaks as soon as autograd or the user's ``zero_grad(set_to_none=True)`` allocates a
fresh gradient (the default), and it fights FSDP, which owns its own flat storage. Address tables
leave every tensor where it is: only the gradient table changes between steps, and it is 8 bytes
per parameter tensor (148 for GPT-2 small), copied to the device asynchronously.

The scalars (lr, betas, gamma, eps, decay, bias correction) are read from device memory, so a
learning-rate schedule or a new weight decay never recompiles. The dialect's structural knobs
(eps placement, clip form, the next-step phase, the momentum count, stochastic rounding) are
compile-time constants: one compiled kernel per combination, as each changes the arithmetic.

Arithmetic: float32, in the order of the reference's float32 evaluation, with IEEE
round-to-nearest division (``div_rn``) and floating-point contraction off (``enable_fp_fusion=
False``: no product and sum fused into one multiply-add), so on a GPU as in the interpreter each
operation rounds exactly where the float32 evaluation rounds: the kernel's output is that
evaluation's, bit for bit. This costs nothing measurable in a step bound by memory bandwidth, and
it removes the one place where a correct kernel can still move a coordinate by 2 lr: where h is
about 0, d is eps and ``u = clip(m / eps)`` turns a rounding of a cancelling m into a full step.
bfloat16 parameters are read as float32 and written back rounded to nearest, or stochastically
(``stochastic_rounding=True``: add 16 random bits below the bfloat16 mantissa, then truncate, so
the rounding is unbiased). On CPU tensors it runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .. import rule
from .plan import SCALARS, Bucket

BLOCK = 1024
_NUM_SCALARS = len(SCALARS)
DTYPES = (torch.float32, torch.bfloat16)


def available() -> str | None:
    """None if Triton can run here, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    return None


def runs_on(device: torch.device) -> str | None:
    """None if the kernel can run on tensors of ``device``, else why not."""
    why = available()
    if why:
        return why
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "on CPU tensors Triton runs only in its interpreter: set TRITON_INTERPRET=1 before importing triton"
    return f"Triton does not run on {device.type} tensors"


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def sophia_step(p_tab, g_tab, m_tab, h_tab, e_tab, refresh_tab, sizes, chunk_param, chunk_start, scal,
                    unclipped, seed_ptr,
                    P_BF16: tl.constexpr, EPS_ADD: tl.constexpr, SIGN_MIN: tl.constexpr, NEXT_STEP: tl.constexpr,
                    ZERO_M_IS_ZERO: tl.constexpr, MOMENTUM_UPDATES: tl.constexpr, STOCHASTIC: tl.constexpr,
                    NS: tl.constexpr, BLOCK: tl.constexpr):
        chunk = tl.program_id(0)
        i = tl.load(chunk_param + chunk)
        start = tl.load(chunk_start + chunk)
        n = tl.load(sizes + i)
        offs = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n
        if P_BF16:
            p_ptr = tl.load(p_tab + i).to(tl.pointer_type(tl.bfloat16))
            g_ptr = tl.load(g_tab + i).to(tl.pointer_type(tl.bfloat16))
        else:
            p_ptr = tl.load(p_tab + i).to(tl.pointer_type(tl.float32))
            g_ptr = tl.load(g_tab + i).to(tl.pointer_type(tl.float32))
        m_ptr = tl.load(m_tab + i).to(tl.pointer_type(tl.float32))
        h_ptr = tl.load(h_tab + i).to(tl.pointer_type(tl.float32))
        row = scal + i * NS
        b1 = tl.load(row + 0)
        one_minus_b1 = tl.load(row + 1)
        b2 = tl.load(row + 2)
        one_minus_b2 = tl.load(row + 3)
        scale = tl.load(row + 4)
        eps = tl.load(row + 5)
        c = tl.load(row + 6)
        bias = tl.load(row + 7)
        lr = tl.load(row + 8)
        decay = tl.load(row + 9)

        theta = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0)
        for _ in tl.static_range(MOMENTUM_UPDATES):
            m = b1 * m + one_minus_b1 * g                                     # m_t = b1 m + (1 - b1) g
        h_used = h
        if tl.load(refresh_tab + i) != 0:
            e_ptr = tl.load(e_tab + i).to(tl.pointer_type(tl.float32))
            hhat = tl.load(e_ptr + offs, mask=mask, other=0.0)
            h = b2 * h + one_minus_b2 * hhat                                  # h_t = b2 h + (1 - b2) hhat
            tl.store(h_ptr + offs, h, mask=mask)
            if not NEXT_STEP:
                h_used = h
        m_used = tl.math.div_rn(m, bias)                                      # m_t / (1 - b1^t), or / 1
        curvature = h_used * scale                                            # gamma h
        if EPS_ADD:
            d = curvature + eps                                               # gamma h + eps
        else:
            d = tl.maximum(curvature, eps) + 0.0                              # max(gamma h, eps); -0 -> +0
        if SIGN_MIN:
            q = tl.minimum(tl.math.div_rn(tl.abs(m_used), d), c)
            u = tl.where(m_used > 0, q, tl.where(m_used < 0, -q, 0.0 * q))    # sign(m) min(|m| / d, c)
        else:
            u = tl.minimum(tl.maximum(tl.math.div_rn(m_used, d), -c), c)     # clip(m / d, c)
        if ZERO_M_IS_ZERO:
            u = tl.where(m_used == 0.0, 0.0, u)                               # 0 / 0 read as 0
        s = u * lr
        delta = theta * decay - s                                             # -(lr lam) theta - lr u
        new = theta + delta
        if P_BF16:
            # round to bfloat16 on the bits (explicit, so it is the same on a GPU and in the interpreter):
            # nearest-even adds 0x7FFF plus the lowest kept bit; stochastic adds 16 random bits; then truncate
            bits = new.to(tl.uint32, bitcast=True)
            if STOCHASTIC:
                r = tl.randint(tl.load(seed_ptr), offs + i * 2654435761)  # a stream per tensor and element
                up = bits + (r & 0xFFFF)
            else:
                up = bits + 0x7FFF + ((bits >> 16) & 1)
            rounded = (up & 0xFFFF0000).to(tl.float32, bitcast=True)
            if STOCHASTIC:  # never round a finite value up to infinity: keep it at the largest finite one
                rounded = tl.where(tl.abs(rounded) == float("inf"),
                                   (bits & 0xFFFF0000).to(tl.float32, bitcast=True), rounded)
            rounded = tl.where(new != new, new, rounded)                      # NaN stays NaN
            tl.store(p_ptr + offs, rounded.to(tl.bfloat16), mask=mask)
        else:
            tl.store(p_ptr + offs, new, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        won = (tl.abs(u) < c) & mask                                          # not clipped: the win rate
        tl.atomic_add(unclipped, tl.sum(won.to(tl.int32), axis=0))

    _KERNEL = sophia_step
    return _KERNEL


class _Tables:
    """The address and chunk tables of one bucket, rebuilt only when a tensor moved."""

    def __init__(self):
        self.key = None

    def get(self, bucket: Bucket):
        items = bucket.items
        device = bucket.device
        key = tuple((it.p.data_ptr(), it.m.data_ptr(), it.h.data_ptr(), it.p.numel()) for it in items)
        if key != self.key:
            sizes = [it.p.numel() for it in items]
            chunk_param, chunk_start = [], []
            for i, n in enumerate(sizes):
                for s in range(0, n, BLOCK):
                    chunk_param.append(i)
                    chunk_start.append(s)
            as_dev = lambda xs: torch.tensor(xs, dtype=torch.int64).to(device)  # noqa: E731
            self.static = dict(p=as_dev([k[0] for k in key]), m=as_dev([k[1] for k in key]),
                               h=as_dev([k[2] for k in key]), sizes=as_dev(sizes),
                               chunk_param=as_dev(chunk_param), chunk_start=as_dev(chunk_start))
            self.chunks = len(chunk_param)
            self.key = key
        return self.static


def _upload(values, dtype, device) -> Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def step(bucket: Bucket, knobs: rule.Knobs, tables: _Tables, unclipped: Tensor, seed: Tensor | None,
         stochastic: bool) -> None:
    """Launch the kernel over ``bucket``; adds its count of unclipped coordinates to ``unclipped`` (int32, on the device)."""
    items = [it for it in bucket.items if it.p.numel() > 0]
    if not items:
        return
    bucket = Bucket(bucket.device, bucket.dtype, items)
    static = tables.get(bucket)
    device = bucket.device
    estimates = []
    for it in items:
        if it.hhat is None:
            estimates.append(it.h)  # never read: its refresh flag is 0
        else:
            estimates.append(it.hhat if it.hhat.dtype == torch.float32 and it.hhat.is_contiguous()
                             else it.hhat.to(torch.float32).contiguous())
    grads = [it.g if it.g.is_contiguous() else it.g.contiguous() for it in items]
    g_tab = _upload([g.data_ptr() for g in grads], torch.int64, device)
    e_tab = _upload([e.data_ptr() for e in estimates], torch.int64, device)
    refresh = _upload([int(it.hhat is not None) for it in items], torch.int32, device)
    scal = _upload([x for it in items for x in it.scalars], torch.float32, device)
    if seed is None:
        seed = unclipped  # unused unless stochastic
    eps_zero = any(it.scalars[SCALARS.index("eps")] == 0.0 for it in items)
    _kernel()[(tables.chunks,)](
        static["p"], g_tab, static["m"], static["h"], e_tab, refresh, static["sizes"], static["chunk_param"],
        static["chunk_start"], scal, unclipped, seed,
        P_BF16=bucket.dtype == torch.bfloat16, EPS_ADD=knobs.eps_placement == "add",
        SIGN_MIN=knobs.clip_form == "sign_min", NEXT_STEP=knobs.refresh == "next_step",
        ZERO_M_IS_ZERO=knobs.eps_placement == "add" or eps_zero, MOMENTUM_UPDATES=knobs.momentum_updates,
        STOCHASTIC=bool(stochastic and bucket.dtype == torch.bfloat16), NS=_NUM_SCALARS, BLOCK=BLOCK,
        enable_fp_fusion=False)
    # keep the inputs alive until the launch is enqueued (CUDA's allocator then orders their reuse)
    del grads, estimates
