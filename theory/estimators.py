"""Bias, variance, sign and cost of the Hessian-diagonal estimators (SPEC section 2), measured.

Two models, both float64, both with a softmax cross-entropy loss (the loss every estimator sees):

- **tanh** -- the problem zoo's :class:`TanhNetwork` (8 examples, 3 -> 4 -> 3, 24 parameters) at its
  start point, evaluated by a vectorised torch copy of its formula (checked here against the zoo's own
  torch graph). The zoo's loss adds a ridge ``mu |theta|^2 / 2`` that GNB cannot see, so every
  estimator here gets the cross-entropy alone and the targets are the zoo's closed forms without it:
  ``diag(H) = hessian_diagonal - mu`` and ``diag(GN) = gauss_newton_diagonal``.
- **transformer** -- a one-layer, two-head, pre-LayerNorm causal transformer written below in plain
  torch (vocabulary 8, d_model 8, MLP 16, sequence length 6, 3 sequences, 760 parameters), seeded
  random weights and tokens, next-token cross-entropy over the 18 predictions. Targets:
  ``diag(H)`` by :func:`exact_diagonal`, ``diag(GN)`` by :func:`gnb_expectation`.

Estimators: Hutchinson (Gaussian and Rademacher probes, n = 1, 4, 16 probes per estimate) against
``diag(H)``; GNB (one label draw per estimate) against ``diag(H)`` and against its own expectation
``diag(GN)``. For each, K independent estimates (``seeds`` generators, pooled) give

- relative bias ``||mean - target|| / ||target||`` and its Monte-Carlo noise floor
  ``se = sqrt(tr(Cov)/K) / ||target||`` (the RMS size of ``||mean - E[est]|| / ||target||``), so
  ``z = bias / se`` is about 1 for an unbiased estimator and grows like sqrt(K) for a biased one;
- relative variance of one estimate, ``mean_i Var_i / mean_i target_i^2`` (for Hutchinson also the
  value predicted from the full Hessian: Gaussian ``2 H_ii^2 + sum_{j!=i} H_ij^2``, Rademacher
  ``sum_{j!=i} H_ij^2``, divided by n);
- the fraction of negative entries over all estimates and coordinates;
- the cost of one estimate over the cost of one gradient (forward + backward): the median of the
  per-repeat ratios, the two timed alternately in the same run, on one torch thread; a wall-clock ratio
  on this machine, not a FLOP count.

``quick`` takes under ~30 s on two CPU cores (fewer draws, fewer timing repeats).
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch

from sophia_ref.estimators import exact_diagonal, gnb, gnb_expectation, hutchinson

from .base import Result

NAME = "estimators"
CLAIM = ("Hutchinson's estimator is unbiased for the Hessian diagonal; GNB is never negative, is unbiased "
         "for the Gauss-Newton diagonal but biased for the Hessian diagonal of a non-linear model, and costs "
         "about one gradient, while Hutchinson costs a small multiple of one.")

PROBE_COUNTS = (1, 4, 16)
Z_UNBIASED = 3.0      # z below this: no bias detected (z ~ 1 for an unbiased estimator)
Z_BIASED = 10.0       # z above this: bias clearly detected
#: draws per seed (Hutchinson at n < 16 and at n = 16 probes; GNB, which is cheap and whose bias test needs
#: many draws) and timing repeats, for quick and full runs
SETTINGS = {True: {"draws": 10, "draws_n16": 5, "gnb_draws": 600, "repeats": 5},
            False: {"draws": 200, "draws_n16": 200, "gnb_draws": 5000, "repeats": 41}}
GNB_COST_MAX = 2.0    # "about one gradient": at most this many gradients' wall time (transformer)
HUTCH_COST_MAX = 8.0  # "a small multiple": one-probe Hutchinson at most this many gradients (transformer)


# -- the two models ---------------------------------------------------------------------------------------------

class _Model:
    """A model: ``params`` (leaf float64 tensors), ``loss()`` and ``logits()`` closures, exact targets."""

    name: str
    params: list[torch.Tensor]

    def loss(self) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(), self.targets)

    def logits(self) -> torch.Tensor:
        raise NotImplementedError

    def flat_hessian(self) -> np.ndarray:
        """The full Hessian of ``loss`` in the flattened parameter order (for the variance prediction)."""
        raise NotImplementedError


class _Tanh(_Model):
    name = "tanh"

    def __init__(self):
        from verification.oracles.zoo import FLOAT, TanhNetwork

        self.zoo = net = TanhNetwork()
        self.theta = torch.tensor(net.start, dtype=torch.float64, requires_grad=True)
        self.params = [self.theta]
        self.x = torch.tensor(net.x, dtype=torch.float64)
        self.targets = torch.tensor(net.labels, dtype=torch.long)
        d, m, k = net.features, net.hidden, net.classes
        self._shape = (d, m, k)
        mu = net.mu
        self.h_diag = np.array(net.hessian_diagonal(net.start, FLOAT)) - mu          # the CE alone
        self.gn_diag = np.array(net.gauss_newton_diagonal(net.start, FLOAT))
        self._hessian = np.array(net.hessian(net.start, FLOAT)) - mu * np.eye(net.dim)

    def logits(self):
        d, m, k = self._shape
        w1 = self.theta[: d * m].reshape(d, m)
        w2 = self.theta[d * m:].reshape(m, k)
        return torch.tanh(self.x @ w1) @ w2

    def flat_hessian(self):
        return self._hessian

    def check(self) -> dict:
        """The vectorised copy against the zoo's own torch graph, and the library oracles against the zoo."""
        with torch.no_grad():
            zoo_logits = self.zoo.torch_logits(self.theta)()
            logits_diff = float((zoo_logits - self.logits()).abs().max())
        h = torch.cat([t.reshape(-1) for t in exact_diagonal(self.loss, self.params)]).numpy()
        gn = torch.cat([t.reshape(-1) for t in gnb_expectation(self.logits, self.params)]).numpy()
        return {"logits_vs_zoo_graph": logits_diff,
                "exact_diagonal_vs_closed_form": float(np.abs(h - self.h_diag).max()),
                "gnb_expectation_vs_closed_form": float(np.abs(gn - self.gn_diag).max())}


class _Transformer(_Model):
    """One pre-LN block (causal self-attention + tanh-GELU MLP), a final LayerNorm, an unembedding."""

    name = "transformer"
    VOCAB, SEQ, BATCH, D, HEADS, MLP = 8, 6, 3, 8, 2, 16

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        v, t, d, f = self.VOCAB, self.SEQ, self.D, self.MLP

        def w(*shape, scale):
            return (torch.randn(*shape, dtype=torch.float64, generator=g) * scale).requires_grad_()

        def ln_gain():
            return (1 + 0.1 * torch.randn(d, dtype=torch.float64, generator=g)).requires_grad_()

        self.named = {
            "embed": w(v, d, scale=1.0), "pos": w(t, d, scale=0.5),
            "ln1_g": ln_gain(), "ln1_b": w(d, scale=0.1),
            "wq": w(d, d, scale=d ** -0.5), "wk": w(d, d, scale=d ** -0.5), "wv": w(d, d, scale=d ** -0.5),
            "wo": w(d, d, scale=d ** -0.5),
            "ln2_g": ln_gain(), "ln2_b": w(d, scale=0.1),
            "w1": w(d, f, scale=d ** -0.5), "b1": w(f, scale=0.1), "w2": w(f, d, scale=f ** -0.5), "b2": w(d, scale=0.1),
            "lnf_g": ln_gain(), "lnf_b": w(d, scale=0.1),
            "unembed": w(d, v, scale=1.0),
        }
        self.params = list(self.named.values())
        tokens = torch.randint(0, v, (self.BATCH, t + 1), generator=g)
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
        self.mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        self.h_diag = torch.cat([x.reshape(-1) for x in exact_diagonal(self.loss, self.params)]).numpy()
        self.gn_diag = torch.cat([x.reshape(-1) for x in gnb_expectation(self.logits, self.params)]).numpy()

    @staticmethod
    def _ln(x, gain, bias):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * gain + bias

    def _logits_from(self, p: dict) -> torch.Tensor:
        b, t, d, nh = self.BATCH, self.SEQ, self.D, self.HEADS
        dh = d // nh
        x = p["embed"][self.inputs] + p["pos"]                                   # (B, T, d)
        h = self._ln(x, p["ln1_g"], p["ln1_b"])
        split = lambda y: y.reshape(b, t, nh, dh).transpose(1, 2)                # (B, heads, T, dh)
        q, k, v = split(h @ p["wq"]), split(h @ p["wk"]), split(h @ p["wv"])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        attn = torch.softmax(scores.masked_fill(self.mask, float("-inf")), dim=-1)
        x = x + (attn @ v).transpose(1, 2).reshape(b, t, d) @ p["wo"]
        h = self._ln(x, p["ln2_g"], p["ln2_b"])
        x = x + torch.nn.functional.gelu(h @ p["w1"] + p["b1"], approximate="tanh") @ p["w2"] + p["b2"]
        return (self._ln(x, p["lnf_g"], p["lnf_b"]) @ p["unembed"]).reshape(b * t, self.VOCAB)

    def logits(self):
        return self._logits_from(self.named)

    def flat_hessian(self):
        if getattr(self, "_hessian", None) is None:
            self._hessian = self._flat_hessian()
        return self._hessian

    def _flat_hessian(self):
        names = list(self.named)
        shapes = [self.named[n].shape for n in names]
        sizes = [self.named[n].numel() for n in names]
        flat0 = torch.cat([self.named[n].detach().reshape(-1) for n in names])

        def loss_of(flat):
            parts = torch.split(flat, sizes)
            p = {n: part.reshape(s) for n, part, s in zip(names, parts, shapes)}
            return torch.nn.functional.cross_entropy(self._logits_from(p), self.targets)

        return torch.autograd.functional.hessian(loss_of, flat0, vectorize=True).numpy()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)


# -- measurement ------------------------------------------------------------------------------------------------

def _flat(tensors) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()


def _stats(draws: np.ndarray, target: np.ndarray) -> dict:
    k = draws.shape[0]
    mean = draws.mean(0)
    var = draws.var(0, ddof=1)
    tnorm = float(np.linalg.norm(target))
    bias = float(np.linalg.norm(mean - target)) / tnorm
    se = math.sqrt(float(var.sum()) / k) / tnorm
    coord_se = np.sqrt(var / k)
    with np.errstate(divide="ignore", invalid="ignore"):
        coord_z = np.where(coord_se > 0, np.abs(mean - target) / coord_se, 0.0)
    return {"draws": k, "rel_bias": bias, "bias_se": se, "z": bias / se if se > 0 else float("inf"),
            "max_coord_z": float(coord_z.max()),
            "rel_var": float(var.mean()) / float((target ** 2).mean()),
            "neg_frac": float((draws < 0).mean()), "min_entry": float(draws.min())}


def _paired_times(fn, reference, repeats: int) -> tuple[float, float, float]:
    """Median wall time of ``fn``, of ``reference``, and median of the per-repeat ratios.

    The two are timed alternately, so load from other processes that drifts slowly cancels in the ratio.
    """
    fn(), reference()  # warm-up
    t_fn, t_ref = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        reference()
        mid = time.perf_counter()
        fn()
        t_ref.append(mid - start)
        t_fn.append(time.perf_counter() - mid)
    return statistics.median(t_fn), statistics.median(t_ref), statistics.median(a / b for a, b in zip(t_fn, t_ref))


def _measure_model(model: _Model, cfg: dict, seeds: int, base_seed: int, progress) -> list[dict]:
    hess = model.flat_hessian()
    h_diag = model.h_diag
    row_sq = (hess ** 2).sum(1)
    predicted = {"gaussian": row_sq + h_diag ** 2, "rademacher": row_sq - h_diag ** 2}
    mean_t2 = float((h_diag ** 2).mean())

    def grad_once():
        torch.autograd.grad(model.loss(), model.params)

    records = []
    configs = [("hutchinson", probe, n) for probe in ("gaussian", "rademacher") for n in PROBE_COUNTS] + [("gnb", None, 1)]
    for ci, (kind, probe, n) in enumerate(configs):
        label = f"hutchinson-{probe}" if kind == "hutchinson" else "gnb"
        if progress:
            progress(f"{model.name}: {label}, n={n}")
        draws = []
        for s in range(seeds):
            gen = torch.Generator().manual_seed(base_seed + 1000 * s + 17 * ci)
            count = cfg["gnb_draws"] if kind == "gnb" else cfg["draws_n16"] if n >= 16 else cfg["draws"]
            for _ in range(count):
                if kind == "hutchinson":
                    est = hutchinson(model.loss, model.params, samples=n, probe=probe, generator=gen)
                else:
                    est = gnb(model.logits, model.params, generator=gen)
                draws.append(_flat(est))
        draws = np.stack(draws)
        timing_gen = torch.Generator().manual_seed(12345)
        if kind == "hutchinson":
            estimate = lambda: hutchinson(model.loss, model.params, samples=n, probe=probe, generator=timing_gen)
        else:
            estimate = lambda: gnb(model.logits, model.params, generator=timing_gen)
        t_est, t_grad, cost = _paired_times(estimate, grad_once, cfg["repeats"])
        targets = [("diag(H)", h_diag)] + ([("diag(GN)", model.gn_diag)] if kind == "gnb" else [])
        for tname, target in targets:
            rec = {"model": model.name, "estimator": label, "probes": n, "target": tname, **_stats(draws, target),
                   "cost_ratio": cost, "t_estimate_s": t_est, "t_gradient_s": t_grad}
            rec["rel_var_predicted"] = (float(predicted[probe].mean()) / n / mean_t2) if kind == "hutchinson" else None
            records.append(rec)
    return records


def run(quick: bool = False, seeds: int | None = None, progress=None) -> Result:
    """Measure every estimator on both models; ``seeds`` independent draw streams are pooled (default 2)."""
    seeds = 2 if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} is not valid; accepted range: integers >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: threads only add contention and noise to the timings
    try:
        return _run(quick, seeds, progress)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, seeds: int, progress) -> Result:
    cfg = SETTINGS[bool(quick)]
    if progress:
        progress("building the models and the exact diagonals")
    tanh = _Tanh()
    checks = {"tanh": tanh.check()}
    transformer = _Transformer(seed=0)
    info = {"tanh": {"params": tanh.zoo.dim, "predictions": len(tanh.zoo.labels), "classes": tanh.zoo.classes},
            "transformer": {"params": transformer.n_params, "predictions": transformer.BATCH * transformer.SEQ,
                            "vocab": transformer.VOCAB, "d_model": transformer.D, "heads": transformer.HEADS,
                            "seq_len": transformer.SEQ, "batch": transformer.BATCH, "mlp": transformer.MLP}}
    for m in (tanh, transformer):
        info[m.name].update({
            "neg_frac_diag_h": float((m.h_diag < 0).mean()),
            "gn_vs_h_rel_diff": float(np.linalg.norm(m.gn_diag - m.h_diag) / np.linalg.norm(m.h_diag)),
            "diag_h_max_abs_diff_full_hessian": float(np.abs(np.diag(m.flat_hessian()) - m.h_diag).max())})
    records = []
    for i, m in enumerate((tanh, transformer)):
        records += _measure_model(m, cfg, seeds, base_seed=100 * (i + 1), progress=progress)

    columns = ["model", "estimator", "probes", "target", "draws", "rel_bias", "bias_se", "z",
               "rel_var", "rel_var_predicted", "neg_frac", "cost_x_grad"]
    rows = [[r["model"], r["estimator"], r["probes"], r["target"], r["draws"], r["rel_bias"], r["bias_se"], r["z"],
             r["rel_var"], "-" if r["rel_var_predicted"] is None else r["rel_var_predicted"], r["neg_frac"],
             r["cost_ratio"]] for r in records]

    hut = [r for r in records if r["estimator"].startswith("hutchinson")]
    gnb_h = [r for r in records if r["estimator"] == "gnb" and r["target"] == "diag(H)"]
    gnb_gn = [r for r in records if r["estimator"] == "gnb" and r["target"] == "diag(GN)"]
    hut1 = [r for r in hut if r["probes"] == 1]
    premises = {
        "hutchinson_unbiased": all(r["z"] < Z_UNBIASED for r in hut),
        "gnb_never_negative": all(r["neg_frac"] == 0.0 for r in gnb_h),
        "gnb_unbiased_for_gn": all(r["z"] < Z_UNBIASED for r in gnb_gn),
        "gnb_biased_for_h": all(r["z"] > Z_BIASED for r in gnb_h),
        # costs judged on the transformer: on the 24-parameter tanh net per-call overhead dominates
        "gnb_cost_about_one_gradient": all(r["cost_ratio"] <= GNB_COST_MAX for r in gnb_h if r["model"] == "transformer"),
        "hutchinson_cost_small_multiple": all(r["cost_ratio"] <= HUTCH_COST_MAX for r in hut1
                                              if r["model"] == "transformer"),
    }
    held = all(premises.values())
    cost_range = lambda rs: f"{min(r['cost_ratio'] for r in rs):.2g}-{max(r['cost_ratio'] for r in rs):.2g}x"
    summary = (
        f"Measured, no verdict; the paper's premises {'all hold' if held else 'do NOT all hold'} here"
        f"{'' if held else ' (failing: ' + ', '.join(k for k, v in premises.items() if not v) + ')'}: "
        f"Hutchinson is unbiased for diag(H) (z <= {max(r['z'] for r in hut):.2f} over both probes, "
        f"n = {', '.join(map(str, PROBE_COUNTS))} and both models; z ~ 1 is noise) and has negative entries "
        f"({min(r['neg_frac'] for r in hut):.0%}-{max(r['neg_frac'] for r in hut):.0%}); "
        f"GNB is never negative ({sum(r['draws'] for r in gnb_h)} estimates), unbiased for its expectation diag(GN) "
        f"(z <= {max(r['z'] for r in gnb_gn):.2f}) and biased for diag(H) on the non-linear models "
        + ", ".join(f"{r['model']} {r['rel_bias']:.3f} +- {r['bias_se']:.3f} (z = {r['z']:.0f})" for r in gnb_h)
        + f"; one estimate costs, in wall time on this machine, {cost_range(gnb_h)} a gradient for GNB and "
        f"{cost_range(hut1)} for one-probe Hutchinson (16 probes: {cost_range([r for r in hut if r['probes'] == 16])})."
    )
    data = {"records": records, "premises": premises, "models": info, "checks": checks,
            "settings": {"quick": quick, "seeds": seeds, "per_seed": dict(cfg),
                         "gnb_cost_max": GNB_COST_MAX, "hutchinson_cost_max": HUTCH_COST_MAX,
                         "probe_counts": list(PROBE_COUNTS), "z_unbiased": Z_UNBIASED, "z_biased": Z_BIASED,
                         "torch_threads": torch.get_num_threads()}}

    def draw(path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
        labels = [f"{r['model'][:5]} {r['estimator'].replace('hutchinson-', 'hut-')} n={r['probes']}"
                  f"{'' if r['estimator'] != 'gnb' else ' vs ' + r['target']}" for r in records]
        ypos = np.arange(len(records))
        colors = ["tab:red" if r["estimator"] == "gnb" else ("tab:blue" if "gauss" in r["estimator"] else "tab:green")
                  for r in records]
        ax = axes[0]
        ax.barh(ypos, [r["rel_bias"] for r in records], color=colors)
        ax.plot([r["bias_se"] for r in records], ypos, "k|", markersize=12, label="noise floor se (z = bar / mark)")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        ax.set_yticks(ypos, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("relative bias ||mean - target|| / ||target||")
        ax = axes[1]
        ax.barh(ypos, [r["rel_var"] for r in records], color=colors)
        pred = [(i, r["rel_var_predicted"]) for i, r in enumerate(records) if r["rel_var_predicted"] is not None]
        ax.plot([p for _, p in pred], [i for i, _ in pred], "k|", markersize=12, label="predicted from full H")
        ax.set_xscale("log")
        ax.set_yticks(ypos, [])
        ax.invert_yaxis()
        ax.set_xlabel("relative variance of one estimate")
        ax.legend(fontsize=7)
        ax = axes[2]
        ax.barh(ypos, [r["cost_ratio"] for r in records], color=colors)
        ax.set_xscale("log")
        ax.set_yticks(ypos, [])
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("cost of one estimate / one gradient (wall time, this machine)")
        fig.suptitle("Hessian-diagonal estimators: bias, variance, cost (blue Gaussian, green Rademacher, red GNB)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Result(NAME, CLAIM, columns, rows, summary, None, data, draw)
