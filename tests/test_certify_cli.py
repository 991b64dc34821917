"""``sophia-ref certify`` as a stranger meets it: a module of their own beside them, other names, one bug.

Each wrong verdict users reported is a test here, run through the real command in a subprocess
from the folder that holds the user's module (no PYTHONPATH: the current directory must be on the
import path, as ``python -m`` has it). The implementation below is written for these tests only:
the paper's rule with the state names ``t``, ``exp_avg`` and ``hessian``, a ``rho`` keyword for
gamma and ``k`` for the refresh interval; class flags switch on one departure each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

MINE = textwrap.dedent('''
    import torch


    class Mine(torch.optim.Optimizer):
        """The paper's Sophia with its own names: state t, exp_avg, hessian; rho is gamma, k the interval."""

        eps_added = False        # the bug: gamma h + eps instead of max(gamma h, eps)
        h_by_refreshes = False   # h / (1 - b2^n), n the refreshes so far
        clamp_zero = False       # estimates clamped at 0 before the average
        state_dtype = torch.float64

        def __init__(self, params, lr=1e-3, betas=(0.96, 0.99), rho=0.01, eps=1e-12, weight_decay=0.0, k=10):
            super().__init__(params, dict(lr=lr, betas=betas, rho=rho, eps=eps, weight_decay=weight_decay, k=k))

        @torch.no_grad()
        def step(self, closure=None, hessian_estimate=None):
            i = -1
            for group in self.param_groups:
                (b1, b2), rho, eps = group["betas"], group["rho"], group["eps"]
                for p in group["params"]:
                    i += 1
                    if p.grad is None:
                        continue
                    s = self.state[p]
                    if not s:
                        s["t"] = 0
                        s["refreshes"] = 0
                        s["exp_avg"] = torch.zeros(p.shape, dtype=self.state_dtype)
                        s["hessian"] = torch.zeros(p.shape, dtype=self.state_dtype)
                    s["t"] += 1
                    g = p.grad.double()
                    m = b1 * s["exp_avg"].double() + (1 - b1) * g
                    h = s["hessian"].double()
                    if (s["t"] - 1) % group["k"] == 0:
                        hhat = hessian_estimate[i].double()
                        if self.clamp_zero:
                            hhat = hhat.clamp(min=0)
                        h = b2 * h + (1 - b2) * hhat
                        s["refreshes"] += 1
                    s["exp_avg"] = m.to(self.state_dtype)
                    s["hessian"] = h.to(self.state_dtype)
                    if self.h_by_refreshes and s["refreshes"] > 0:
                        h = h / (1 - b2 ** s["refreshes"])
                    d = rho * h + eps if self.eps_added else torch.clamp(rho * h, min=eps)
                    theta = p.double()
                    theta = theta - group["lr"] * group["weight_decay"] * theta \\
                        - group["lr"] * torch.clamp(m / d, -1, 1)
                    p.copy_(theta)


    class EpsAdded(Mine):
        eps_added = True


    class Custom(Mine):
        h_by_refreshes = True
        clamp_zero = True
        state_dtype = torch.float32


    class NoEstimate(torch.optim.Optimizer):
        """A step() with no way to hand it an estimate."""

        def __init__(self, params, lr=1e-3):
            super().__init__(params, dict(lr=lr))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.data.add_(p.grad.sign(), alpha=-group["lr"])
''')


def certify(tmp_path, *args):
    (tmp_path / "mine.py").write_text(MINE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "sophia_ref.cli", "certify", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def certificate(tmp_path, name):
    with open(tmp_path / "out" / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def test_a_correct_port_with_its_own_state_names_conforms(tmp_path):
    """State t / exp_avg / hessian, keywords rho and k: found by behaviour, not blamed on the port."""
    code, out = certify(tmp_path, "mine:Mine", "--dialect", "paper", "--quick", "--json", "out")
    assert code == 0, out
    cert = certificate(tmp_path, "mine_Mine")
    assert cert["verdict"] == "conforms" and cert["conforms"] is True and cert["matches_claim"] == "yes"
    assert "KeyError" not in out
    assert all(r["passed"] for r in cert["results"]), [r for r in cert["results"] if not r["passed"]]
    assert all(set(r["bound"]) == {"parameters", "m", "h"} for r in cert["results"])


def test_a_port_that_adds_eps_departs_under_auto(tmp_path):
    """The reported false pass: eps added to gamma h was 'custom ... conforms' with exit 0."""
    code, out = certify(tmp_path, "mine:EpsAdded", "--dialect", "auto", "--quick", "--json", "out")
    assert code == 1, out
    cert = certificate(tmp_path, "mine_EpsAdded")
    assert cert["verdict"] == "departs" and cert["conforms"] is False
    assert cert["detected_knobs"]["eps_placement"] == "add"
    [departure] = [d for d in cert["departures"] if d["severity"] == "semantic"]
    assert departure["knob"] == "eps_placement" and departure["value"] == "add" and departure["paper"] == "max"
    assert departure["evidence"]
    assert cert["cross_check"]["consistent"] is True
    assert "semantic: eps_placement = 'add' (paper: 'max')" in out


def test_a_port_that_adds_eps_fails_its_claim_with_the_cause_named(tmp_path):
    code, out = certify(tmp_path, "mine:EpsAdded", "--dialect", "paper", "--quick", "--json", "out")
    assert code == 1, out
    cert = certificate(tmp_path, "mine_EpsAdded")
    assert cert["verdict"] == "fails" and cert["matches_claim"].startswith("no")
    semantic = [f for f in cert["findings"] if f.startswith("semantic:")]
    residual = [f for f in cert["findings"] if f.startswith("residual:")]
    assert semantic and "eps_placement" in semantic[0]
    assert residual and len(residual) <= 3  # one line per quantity, not one per scenario
    assert cert["findings"].index(semantic[0]) < cert["findings"].index(residual[0])  # ranked


def test_a_deliberately_custom_dialect_can_be_certified(tmp_path):
    code, out = certify(tmp_path, "mine:EpsAdded", "--dialect", "paper,eps_placement=add", "--quick",
                        "--json", "out")
    assert code == 0, out
    cert = certificate(tmp_path, "mine_EpsAdded")
    assert cert["verdict"] == "conforms" and cert["dialect"] == "paper,eps_placement=add"


def test_departures_the_old_knobs_could_not_express_are_named_and_ranked(tmp_path):
    """h bias-corrected by refreshes, estimates clamped at zero, float32 state: one line per cause."""
    code, out = certify(tmp_path, "mine:Custom", "--dialect", "auto", "--quick", "--json", "out")
    assert code == 1, out
    cert = certificate(tmp_path, "mine_Custom")
    assert cert["verdict"] == "departs", cert["findings"]
    by_knob = {d["knob"]: d for d in cert["departures"]}
    assert by_knob["h_bias_correction"]["value"] == "refreshes"
    assert by_knob["estimate_clamp"]["value"] == "zero"
    assert by_knob["state_dtype"]["value"] == "float32" and by_knob["state_dtype"]["severity"] == "precision"
    kinds = [f.split(":", 1)[0] for f in cert["findings"]]
    order = [k for k in ("departs", "semantic", "residual", "precision", "rounding") if k in kinds]
    assert [k for k in kinds if k in order] == sorted((k for k in kinds if k in order), key=order.index)
    assert len(cert["findings"]) < 15


def test_an_api_that_does_not_fit_gets_one_finding_with_the_adapter_to_write(tmp_path):
    code, out = certify(tmp_path, "mine:NoEstimate", "--quick", "--json", "out")
    assert code == 1, out
    cert = certificate(tmp_path, "mine_NoEstimate")
    assert cert["verdict"] == "error" and cert["matches_claim"].startswith("not measured")
    assert len(cert["findings"]) == 1 and "class " in cert["findings"][0] and "Adapter" in cert["findings"][0]
    assert out.count("TypeError") <= 1


def test_the_adapter_template_is_printed_and_is_python(tmp_path):
    code, out = certify(tmp_path, "--adapter-template")
    assert code == 0, out
    compile(out, "adapter_template.py", "exec")


def test_a_module_that_is_not_there_says_how_to_fix_it(tmp_path):
    code, out = certify(tmp_path, "notmine:Mine", "--quick")
    assert code == 1
    assert "cannot import module 'notmine'" in out and "current directory" in out
    assert "verdict" not in out.lower() or "error" in out


@pytest.mark.parametrize("args, message", [
    (["--dialect", "papr"], "unknown dialect 'papr'"),
    (["--dialect", "paper,bias_corection=true"], "is not knob=value"),
    (["--dialect", "paper,bias_correction=maybe"], "expected true or false"),
    (["--dialect", "paper,refresh=sometimes"], "refresh='sometimes' is not valid"),
    (["offical"], "neither module:object nor a short name"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_usage_errors_exit_2_before_anything_runs(tmp_path, args, message):
    code, out = certify(tmp_path, *args)
    assert code == 2, out
    assert message in out and "certify sophia-ref" not in out  # no progress: nothing ran


def test_help_lists_the_presets_auto_and_the_short_names(tmp_path):
    from sophia_ref.dialects import DIALECTS
    from verification.conformance.resolve import KNOWN

    code, out = certify(tmp_path, "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "auto" in flat and all(name in flat for name in DIALECTS) and all(name in flat for name in KNOWN)
