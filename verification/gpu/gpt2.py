"""A plain GPT-2 (Radford et al. 2019) for the GPU suite and benchmarks: model, parameter shapes, synthetic data.

GPT-2 small is 12 layers, width 768, 12 heads, context 1024 and, padded to a multiple of 64 as is usual for
speed, a vocabulary of 50304: 124,475,904 parameters in 148 tensors (token and position embeddings, 12 x 12
per block, the final LayerNorm's 2; the output head is tied to the token embedding). Pre-LayerNorm blocks,
causal attention by ``scaled_dot_product_attention``, GELU (tanh) MLP of width 4 x 768, initialization N(0,
0.02) with the residual projections scaled by 1/sqrt(2 x layers), as in GPT-2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Config:
    layers: int = 12
    width: int = 768
    heads: int = 12
    vocab: int = 50304
    context: int = 1024

    @property
    def numel(self) -> int:
        w, v, c = self.width, self.vocab, self.context
        block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
        return v * w + c * w + self.layers * block + 2 * w


SMALL = Config()
#: a toy configuration with the same structure, for CPU runs of the same code
TINY = Config(layers=2, width=64, heads=4, vocab=512, context=64)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.heads = cfg.heads
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.c_attn = nn.Linear(cfg.width, 3 * cfg.width)
        self.attn_proj = nn.Linear(cfg.width, cfg.width)
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.c_fc = nn.Linear(cfg.width, 4 * cfg.width)
        self.mlp_proj = nn.Linear(4 * cfg.width, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(w, dim=2)
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, w)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """``GPT2(cfg)(tokens)`` -> logits (B, T, vocab)."""

    def __init__(self, cfg: Config = SMALL, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("ln_f"):
                    p.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith("proj.weight") else 0.02
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # the tied head


def shapes(cfg: Config = SMALL) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) of every parameter tensor of GPT2(cfg), in order, without building it."""
    w = cfg.width
    out = [("wte.weight", (cfg.vocab, w)), ("wpe.weight", (cfg.context, w))]
    for i in range(cfg.layers):
        for name, shape in (("ln_1.weight", (w,)), ("ln_1.bias", (w,)), ("c_attn.weight", (3 * w, w)),
                            ("c_attn.bias", (3 * w,)), ("attn_proj.weight", (w, w)), ("attn_proj.bias", (w,)),
                            ("ln_2.weight", (w,)), ("ln_2.bias", (w,)), ("c_fc.weight", (4 * w, w)),
                            ("c_fc.bias", (4 * w,)), ("mlp_proj.weight", (w, 4 * w)), ("mlp_proj.bias", (w,))):
            out.append((f"blocks.{i}.{name}", shape))
    return out + [("ln_f.weight", (w,)), ("ln_f.bias", (w,))]


def batches(cfg: Config, batch: int, steps: int, seed: int = 0, device="cpu", seq: int | None = None):
    """``steps`` synthetic (inputs, targets) pairs of token ids, (batch, seq) each: a fixed random Markov chain
    (each token's successor drawn from 16 preferred tokens), so there is something to learn. Deterministic in
    ``seed``; the first 50257 ids only (GPT-2's real vocabulary; the padded rows never occur)."""
    seq = cfg.context if seq is None else seq
    vocab = min(cfg.vocab, 50257)
    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, 16), generator=generator)
    for _ in range(steps):
        tokens = torch.empty(batch, seq + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (batch,), generator=generator)
        choice = torch.randint(0, 16, (batch, seq), generator=generator)
        for t in range(seq):
            tokens[:, t + 1] = successors[tokens[:, t], choice[:, t]]
        tokens = tokens.to(device)
        yield tokens[:, :-1], tokens[:, 1:]
