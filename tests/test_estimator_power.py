"""Hutchinson's estimate is unbiased, with a test that has the power to see a probe 2% off in scale.

A probe scaled by s gives s^2 u (H u): a 1.02 probe is a 4.04% bias. The problem is a quadratic
with N = 150,000 coordinates in pairs, H = blocks [[a, r a], [r a, a]] (a in [0.5, 1.5], equal
within a pair), so every coordinate has H_ii = a_i and the statistic

    S = (1/N) sum_i hhat_i / a_i

has mean s^2: 1 for a correct probe, 1.0404 for a 1.02 one. The test accepts |S - 1| <= c,
c = 0.0202, halfway. Sample sizes, for a false alarm below 1e-6 and a miss below 1e-6:

- Gaussian, r = 0 (diagonal): hhat_i / a_i = u_i^2, so N S ~ chi^2(N). Chernoff bounds for
  chi^2(N)/N give P(S >= 1 + c) <= exp(-N/2 (c - ln(1 + c))) and
  P(S <= 1 - c) <= exp(-N/2 (-c - ln(1 - c))); each <= 5e-7 needs N >= 144,140. Under the
  1.02 probe S / 1.0404 ~ chi^2(N)/N and a miss is S < 1.0202, i.e. chi^2(N)/N < 0.98058:
  <= 1e-6 needs N >= 144,697. (The exact chi^2 tails give 7.6e-7 and 8.5e-7 already at
  N = 120,000; at N = 150,000 they are 3e-8 and 4e-8.)
- Rademacher, r = 1: u_i^2 = 1, so hhat_i / a_i = 1 + u_i u_j (j the pair's other
  coordinate) and S = 1 + W, W the mean of M = N/2 = 75,000 independent signs. Hoeffding:
  P(|W| > c) <= 2 exp(-M c^2 / 2) = 4.4e-7 (needs M >= 71,100); a miss needs
  1.0404 (1 + W) < 1.0202, W < -0.019416: <= exp(-M 0.019416^2 / 2) = 7.2e-7 (M >= 73,300).
  (On a diagonal H the Rademacher estimate is exact and any N would do; the coupling makes
  the test carry its own noise.)

The seeds are fixed, so each run is one draw of that experiment.
"""

from __future__ import annotations

import torch

from sophia_ref import hutchinson

N = 150_000
C = 0.0202


def mean_ratio(probe: str, coupling: float, seed: int) -> float:
    """S = mean of hhat_i / H_ii for the paired quadratic of the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    a = (0.5 + torch.rand(N // 2, dtype=torch.float64, generator=gen)).repeat_interleave(2)
    x = torch.randn(N, dtype=torch.float64, generator=gen).requires_grad_()
    loss = lambda: 0.5 * (a * x * x).sum() + coupling * (a[0::2] * x[0::2] * x[1::2]).sum()
    # the probes are drawn the same way in every HVP mode; double backward avoids forward mode's one-time set-up
    hhat = hutchinson(loss, [x], probe=probe, generator=gen, mode="double_backward")[0]
    return float((hhat / a).mean())


def test_gaussian_probes_are_unbiased_to_within_two_percent_of_scale():
    s = mean_ratio("gaussian", coupling=0.0, seed=11)
    assert abs(s - 1.0) <= C, s


def test_rademacher_probes_are_unbiased_to_within_two_percent_of_scale():
    s = mean_ratio("rademacher", coupling=1.0, seed=12)
    assert abs(s - 1.0) <= C, s
