"""The win rate as a monitor: do the Sophia runs that keep it in the advised band do well?

The official README advises keeping the win rate (the fraction of coordinates whose step is not
clipped) between 0.1 and 0.5. A run *keeps it in the band* when its mean win rate after warm-up
lies in [0.1, 0.5]; it *does well* when it did not diverge and its final held-out excess is within
``GOOD_WITHIN`` = 0.05 nats of the best Sophia run of the same experiment (the same tolerance the
stability experiment uses for the usable lr range). The monitor is informative when in-band runs do
well markedly more often than out-of-band ones; it is counted, not fitted.
"""

from __future__ import annotations

import math

BAND = (0.1, 0.5)
GOOD_WITHIN = 0.05


def win_rate_monitor(runs: list[dict]) -> dict:
    """Counts over ``runs`` (dicts with ``win_rate_mean``, ``final_excess``, ``diverged``) and one sentence."""
    scored = [r for r in runs if r.get("win_rate_mean") is not None]
    finals = [r["final_excess"] for r in scored if not r["diverged"] and math.isfinite(r["final_excess"])]
    if not finals:
        return dict(runs=len(scored), summary="win rate as a monitor: no Sophia run finished, nothing to count")
    best = min(finals)

    def good(r):
        return not r["diverged"] and r["final_excess"] <= best + GOOD_WITHIN

    inside = [r for r in scored if BAND[0] <= r["win_rate_mean"] <= BAND[1]]
    below = [r for r in scored if r["win_rate_mean"] < BAND[0]]
    above = [r for r in scored if r["win_rate_mean"] > BAND[1]]
    counts = {name: dict(runs=len(group), good=sum(map(good, group)))
              for name, group in (("inside", inside), ("below", below), ("above", above))}
    outside = dict(runs=len(below) + len(above), good=counts["below"]["good"] + counts["above"]["good"])
    share = lambda c: c["good"] / c["runs"] if c["runs"] else None  # noqa: E731
    p_in, p_out = share(counts["inside"]), share(outside)
    if p_in is None or p_out is None:
        where = "inside" if p_out is None else "outside"
        verdict = f"undecided: every run's win rate is {where} the band"
    elif p_in > p_out:
        verdict = "in-band runs do well more often"
    elif p_in < p_out:
        verdict = "in-band runs do well less often: the band does not pick the good runs"
    else:
        verdict = "no difference"
    fmt = lambda c: f"{c['good']}/{c['runs']}"  # noqa: E731
    summary = (f"win rate as a monitor over {len(scored)} Sophia runs: doing well (within {GOOD_WITHIN} nats of the "
               f"best) {fmt(counts['inside'])} with the win rate in 0.1-0.5, {fmt(counts['below'])} below, "
               f"{fmt(counts['above'])} above ({verdict})")
    return dict(runs=len(scored), best_final=best, band=list(BAND), good_within=GOOD_WITHIN, counts=counts,
                outside=outside, share_good_inside=p_in, share_good_outside=p_out, verdict=verdict, summary=summary)
