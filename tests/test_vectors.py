"""Test vectors: deterministic export, the committed reference set, the numpy-only checker (without torch or
sophia_ref), `sophia-ref vectors check`, and damaged sets refused with the file named."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import numpy_sophia
from sophia_ref import SophiaRef
from sophia_ref.dialects import DIALECTS
from verification.vectors import VECTORS_VERSION, check, export, standalone_check
from verification.vectors.standalone_check import VectorError

REFERENCE = os.path.join(os.path.dirname(export.__file__), "reference")
REGENERATE = "sophia-ref vectors export verification/vectors/reference --dialect paper --quick"


def _files(root):
    out = {}
    for base, _, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_export_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    export.export(str(a), ["paper", "official"], quick=True)
    export.export(str(b), ["paper", "official"], quick=True)
    assert _files(a) == _files(b)


def test_the_committed_reference_set_is_what_the_code_exports(tmp_path):
    fresh = tmp_path / "fresh"
    export.export(str(fresh), ["paper"], quick=True)
    committed, now = _files(REFERENCE), _files(fresh)
    assert json.loads(committed["manifest.json"])["vectors_version"] == VECTORS_VERSION, \
        f"VECTORS_VERSION changed: regenerate the committed set ({REGENERATE})"
    changed = sorted(k for k in set(committed) | set(now) if committed.get(k) != now.get(k))
    assert not changed, (f"the exported vectors changed ({changed[:5]}...): if the reference's answers changed on "
                         f"purpose, bump VECTORS_VERSION in verification/vectors/__init__.py and run {REGENERATE}")


def test_a_numpy_port_passes_and_a_wrong_one_is_located():
    report = standalone_check.check(REFERENCE, numpy_sophia.step, "paper")
    assert len(report) == 6 and not any(report.values()), report
    report = standalone_check.check(REFERENCE, numpy_sophia.step_without_clip, "paper")
    first = report["paper/random-tensors"]
    assert first.startswith("paper/random-tensors: tensor 0, step 1, parameters[") and "tolerance 16" in first


def test_the_shipped_checker_runs_without_torch_or_sophia_ref(tmp_path):
    shutil.copytree(REFERENCE, tmp_path / "set")
    tests = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.modules['torch'] = None; sys.modules['sophia_ref'] = None; "
            f"sys.path[:0] = [{str(tmp_path / 'set')!r}, {tests!r}]; import standalone_check, numpy_sophia; "
            f"sys.exit(standalone_check.main([{str(tmp_path / 'set')!r}, 'numpy_sophia:step']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok   paper/") == 6
    with open(REFERENCE + "/standalone_check.py") as f:
        assert len(f.read().splitlines()) < 150


def _damaged(tmp_path, how):
    root = tmp_path / "set"
    shutil.copytree(REFERENCE, root)
    target = root / "paper" / "random-tensors" / "grad_0.npy"
    manifest = json.loads((root / "manifest.json").read_text())
    if how == "missing":
        target.unlink()
    elif how == "edited":
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    elif how == "newer":
        manifest["format_version"] = 99
    elif how == "truncated":  # truncated and re-hashed, as a careless copy tool might: the array itself is bad
        import hashlib

        target.write_bytes(target.read_bytes()[:100])
        manifest["files"]["paper/random-tensors/grad_0.npy"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("how, message", [
    ("missing", r"random-tensors/grad_0.npy: missing \(listed in the manifest\)"),
    ("edited", r"random-tensors/grad_0.npy: SHA-256 does not match the manifest"),
    ("newer", "format version 99 is newer than this checker's 1"),
    ("truncated", r"random-tensors/grad_0.npy: unreadable array"),
])
def test_damaged_sets_are_refused_with_the_file_named(tmp_path, how, message):
    root = _damaged(tmp_path, how)
    with pytest.raises(VectorError, match=message):
        standalone_check.check(str(root), numpy_sophia.step, "paper")
    verdict, lines = check.run(str(root), "sophia_ref:SophiaRef", "paper")
    assert verdict == "error" and "the vectors are unusable" in lines[0]  # never a pass on partial data


def _cli(*args):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "sophia_ref.cli", "vectors", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_check_cli_verdicts(tmp_path):
    run = _cli("check", REFERENCE, "--impl", "sophia_ref:SophiaRef")
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "conforms: 6 of 6 paper cases within tolerance"
    run = _cli("check", REFERENCE, "--impl", "independent_sophia:NoClip", "--json", str(tmp_path / "certs"))
    assert run.returncode == 1 and "fails:" in run.stdout.splitlines()[-2]
    [cert] = [json.loads(p.read_text()) for p in (tmp_path / "certs").iterdir()]
    from dataclasses import fields

    from verification.conformance.judge import Certificate

    assert set(cert) == {f.name for f in fields(Certificate)}  # certify's certificate, field for field
    assert cert["verdict"] == "fails" and cert["conforms"] is False and cert["metrics"]["cases_run"] == 6
    assert cert["metrics"]["cases_failed"] >= 1 and all(f.startswith(("FAIL", "fails")) for f in cert["findings"])
    run = _cli("check", REFERENCE, "--impl", "no_such_module:X")
    assert run.returncode == 1 and "error: cannot import no_such_module:X" in run.stdout
    run = _cli("export", str(tmp_path / "x"), "--dialect", "nope")
    assert run.returncode == 2 and "unknown dialect 'nope'" in run.stderr
    run = _cli("export", REFERENCE)
    assert run.returncode == 2 and "is not empty" in run.stderr


# every preset's vectors are the reference's own answers: SophiaRef built in that dialect conforms to them
@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d != "paper"])
def test_each_dialect_s_vectors_are_reproduced_by_the_reference_in_that_dialect(tmp_path, dialect):
    export.export(str(tmp_path / "set"), [dialect], quick=True)
    step = check.torch_step(functools.partial(SophiaRef, dialect=dialect))
    report = standalone_check.check(str(tmp_path / "set"), step, dialect)
    assert len(report) == 6 and not any(report.values()), report
    try:  # the paper's rule on this dialect's vectors: outside tolerance, or it refuses the data outright
        wrong = standalone_check.check(str(tmp_path / "set"), check.torch_step(SophiaRef), dialect)
    except check.ImplementationError:
        return
    assert any(wrong.values())


def _optax_step():
    """optax.contrib.sophia as a port outside torch sees it: numpy in, numpy out, JAX in float64 on the CPU;
    the vector's estimate is given to sophia through its hessian_diagonal_fn extra argument."""
    jax = pytest.importorskip("jax", reason="needs jax and optax (pip install 'sophia-ref[public]')")
    pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax
    import optax.contrib

    def supplied():
        def init_fn(params):
            return optax.EmptyState()

        def update_fn(updates, state, params=None, hessian_diagonal=None, **extra):
            return hessian_diagonal, state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def step(state, theta, grad, hhat, hyper):
        if state is None:
            tx = optax.contrib.sophia(learning_rate=hyper["lr"], b1=hyper["beta1"], b2=hyper["beta2"],
                                      eps=hyper["eps"], weight_decay=hyper["weight_decay"], gamma=hyper["gamma"],
                                      update_interval=hyper["hessian_interval"], hessian_diagonal_fn=supplied())
            params = jnp.asarray(theta, dtype=jnp.float64)
            state = {"tx": tx, "opt": tx.init(params)}
        params = jnp.asarray(theta, dtype=jnp.float64)
        estimate = jnp.zeros_like(params) if hhat is None else jnp.asarray(hhat, dtype=jnp.float64)
        updates, opt = state["tx"].update(jnp.asarray(grad, dtype=jnp.float64), state["opt"], params,
                                          hessian_diagonal=estimate)
        inner = opt[0]  # chain(scale_by_sophia, add_decayed_weights, scale_by_learning_rate)
        return (dict(state, opt=opt, m=np.asarray(inner.mu), h=np.asarray(inner.nu)),
                np.asarray(optax.apply_updates(params, updates)))

    return step


# a port outside torch, through the standalone path: optax's Sophia (JAX, float64) on the optax dialect's vectors
def test_optax_through_the_standalone_checker(tmp_path):
    step = _optax_step()
    export.export(str(tmp_path / "set"), ["optax"], quick=True)
    report = standalone_check.check(str(tmp_path / "set"), step, "optax")
    assert len(report) == 6 and not any(report.values()), report
    export.export(str(tmp_path / "paper"), ["paper"], quick=True)
    wrong = standalone_check.check(str(tmp_path / "paper"), step, "paper")  # optax is not the paper's rule
    assert any(wrong.values())


# the default set: every preset x the battery and the 13 zoo trajectories, under 5 MB; the numpy port passes all
# of paper's, the ill-conditioned quadratics (kappa = 1e8) and the non-convex problems included
def test_the_default_set(tmp_path):
    manifest = export.export(str(tmp_path / "set"))
    size = sum(os.path.getsize(os.path.join(b, f)) for b, _, fs in os.walk(tmp_path / "set") for f in fs)
    assert size < 5 * 2**20 and len(manifest["cases"]) == len(DIALECTS) * 25
    report = standalone_check.check(str(tmp_path / "set"), numpy_sophia.step, "paper")
    zoo = [c for c in report if "/zoo-" in c]
    assert len(zoo) == 14 and not any(report.values()), report


# the exact-rational oracle's values: each step of the reference is within the verified bound of the exact step
# from the same state (sophia-ref verify: 2 ulps at operand scale by analysis, up to 3.5 measured; 4 here)
def test_exact_rational_values_agree_with_the_reference_steps():
    for base, _, names in os.walk(REFERENCE):
        for name in names:
            if not name.startswith("exact_theta_"):
                continue
            exact = np.load(os.path.join(base, name))
            got = np.load(os.path.join(base, name.replace("exact_theta", "theta")))
            start = np.load(os.path.join(base, name.replace("exact_theta", "theta0")))
            lr = json.load(open(os.path.join(base, "case.json")))["hyper"]["lr"]
            previous = np.concatenate([start[None], got[:-1]]) if got.size else got
            scale = np.maximum(np.maximum(np.abs(previous), np.abs(got)), lr)
            assert np.all(np.abs(exact - got) <= 4 * np.spacing(scale)), os.path.join(base, name)


# --dtype float32: the float32 production optimizer is held to 16 float32 ulps per step of the float64 answers
def test_check_in_float32():
    verdict, lines = check.run(REFERENCE, "sophia_ref.fast:Sophia", "paper", dtype="float32")
    assert verdict == "conforms", lines
    verdict, lines = check.run(REFERENCE, "independent_sophia:NoClip", "paper", dtype="float32")
    assert verdict == "fails", lines


class OtherNames(torch.optim.Optimizer):
    """A port the harness has never seen: its own state names (t, exp_avg, hess), a minimal constructor."""

    def __init__(self, params, lr, betas, gamma, eps, weight_decay, hessian_interval, decay_after=False):
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay))
        self.decay_after = decay_after

    @torch.no_grad()
    def step(self, hessian_estimate=None):
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                s = self.state[p]
                if not s:
                    s.update(t=0, exp_avg=torch.zeros_like(p), hess=torch.zeros_like(p))
                b1, b2 = group["betas"]
                s["exp_avg"].mul_(b1).add_(p.grad * (1 - b1))
                if hessian_estimate is not None:
                    s["hess"].mul_(b2).add_(hessian_estimate[i] * (1 - b2))
                u = (s["exp_avg"] / torch.clamp(group["gamma"] * s["hess"], min=group["eps"])).clamp(-1, 1)
                lr, wd = group["lr"], group["weight_decay"]
                if self.decay_after:  # the subtle bug: decay the already-stepped parameters
                    p.add_(u, alpha=-lr).mul_(1 - lr * wd)
                else:
                    p.mul_(1 - lr * wd).add_(u, alpha=-lr)


class DecayAfter(OtherNames):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, decay_after=True, **kwargs)


# a stranger's port: other state names are not blamed on it (only its parameters are compared, and it says so);
# one subtle bug is located
def test_a_port_with_other_state_names():
    verdict, lines = check.run(REFERENCE, "test_vectors:OtherNames", "paper")
    assert verdict == "conforms", lines
    assert "only the parameters were compared" in lines[-2]
    verdict, lines = check.run(REFERENCE, "test_vectors:DecayAfter", "paper")
    assert verdict == "fails" and lines[0].startswith("FAIL paper/")
    assert ", step 1, parameters[" in "\n".join(lines)


# -- through certify's adapter protocol -------------------------------------------------------------------------

class StrangerAdapter:
    """A certify Adapter for a port with its own API: ``Port(tensors, eta, b1, b2, g, floor, decay)``, a ``tick``
    method that takes the sampled-label gradient (``bias_free_gnb=True``: the subtle bug, it forgets the batch
    factor B in B ghat^2) or a whole estimate, and its state in attributes ``mom`` and ``curv``."""

    def __new__(cls, *args, **kwargs):  # built lazily so the module imports without the adapters package
        from verification.adapters.base import Adapter

        class Port:
            def __init__(self, tensors, eta, b1, b2, g, floor, decay, k, forget_b):
                self.x, self.eta, self.b1, self.b2, self.g, self.floor, self.decay, self.k = tensors, eta, b1, b2, g, \
                    floor, decay, k
                self.mom, self.curv, self.forget_b = [torch.zeros_like(t) for t in tensors], \
                    [torch.zeros_like(t) for t in tensors], forget_b

            def tick(self, grads, estimate=None, sampled=None, batch=1.0):
                if sampled is not None:
                    estimate = [s * s * (1.0 if self.forget_b else batch) for s in sampled]
                for x, gr, mo, cu, i in zip(self.x, grads, self.mom, self.curv, range(len(grads))):
                    mo.mul_(self.b1).add_(gr, alpha=1 - self.b1)
                    if estimate is not None:
                        cu.mul_(self.b2).add_(estimate[i], alpha=1 - self.b2)
                    x.mul_(1 - self.eta * self.decay)
                    x.sub_(self.eta * (mo / torch.clamp(self.g * cu, min=self.floor)).clamp(-1, 1))

        class _Stranger(Adapter):
            name, version, dialect = "stranger", "0", "paper"
            accepts_any_estimate = kwargs.get("any_estimate", True)
            forget_b = kwargs.get("forget_b", False)

            def build(self, params, hyper, dtype, device):
                self.tensors = [p.detach().to(dtype).clone() for p in params]
                self.port = Port(self.tensors, hyper.lr, hyper.beta1, hyper.beta2, hyper.gamma, hyper.eps,
                                 hyper.weight_decay, hyper.hessian_interval, self.forget_b)
                self.t, self.dtype = 0, dtype

            def step(self, grads, refresh):
                grads = [g.to(self.dtype) for g in grads]
                if refresh is None:
                    self.port.tick(grads)
                elif not self.accepts_any_estimate:
                    self.port.tick(grads, sampled=[g.to(self.dtype) for g in refresh.ghat], batch=refresh.batch)
                else:
                    self.port.tick(grads, estimate=[h.to(self.dtype) for h in refresh.hhat])
                self.t += 1

            def parameters(self):
                return [t.double() for t in self.tensors]

            def state(self):
                return self.t, [m.double() for m in self.port.mom], [h.double() for h in self.port.curv]

            def load(self, params, step, m, h):
                raise NotImplementedError

        return _Stranger()


STRANGER = StrangerAdapter()
STRANGER_FORGETS_B = StrangerAdapter(forget_b=True)
GNB_ONLY = StrangerAdapter(any_estimate=False)
GNB_ONLY_FORGETS_B = StrangerAdapter(any_estimate=False, forget_b=True)


# a port certify drives through an Adapter of its own is checked against the vectors through that adapter: its m and h
# are compared too; a GNB-only API gets ghat = sqrt(hhat / B) and is not run (never passed) on signed estimates; the
# subtle bug (B forgotten in B ghat^2) is located in h
def test_check_through_an_adapter():
    verdict, lines = check.run(REFERENCE, "test_vectors:STRANGER", "paper")
    assert verdict == "conforms" and lines[-1] == "conforms: 6 of 6 paper cases within tolerance", lines
    verdict, lines = check.run(REFERENCE, "test_vectors:GNB_ONLY", "paper")
    assert verdict == "error", lines  # one case has a signed estimate: not run, so nothing is certified
    assert [line for line in lines if line.startswith("NOT RUN")] == [
        "NOT RUN paper/negative-h-signed-estimates: its API takes only GNB-shaped estimates (squares of a gradient) "
        "and this case's estimate is signed"]
    assert "1 of 6 paper cases could not be run" in lines[-1]
    verdict, lines = check.run(REFERENCE, "test_vectors:GNB_ONLY_FORGETS_B", "paper")
    assert verdict == "fails" and "h[" in "\n".join(lines), lines
    verdict, lines = check.run(REFERENCE, "test_vectors:STRANGER_FORGETS_B", "paper")
    assert verdict == "conforms", lines  # with whole estimates the forgotten B never enters


# certify's short names reach the public ports' adapters; a port that fixes a hyperparameter the vectors set otherwise
# is not run (and so not certified), with the value named
@pytest.mark.parametrize("impl, dialect", [("pytorch-optimizer", "pytorch_optimizer"), ("official", "official")])
def test_check_public_ports_by_short_name(tmp_path, impl, dialect):
    from verification.conformance.resolve import KNOWN

    distribution = KNOWN[impl][1]
    pytest.importorskip(distribution.replace("-", "_"), reason=f"{distribution} is not installed")
    export.export(str(tmp_path / "set"), [dialect], quick=True)
    verdict, lines = check.run(str(tmp_path / "set"), impl, dialect, json_dir=str(tmp_path / "certs"))
    if impl == "official":  # sophia-opt hard-codes eps = 1e-15; the battery's cases use 1e-12
        assert verdict == "error" and "it fixes eps = 1e-15 (the case has 1e-12)" in lines[0], lines
        [cert] = [json.loads(p.read_text()) for p in (tmp_path / "certs").iterdir()]
        assert cert["conforms"] is False and cert["metrics"]["cases_not_run"] == 6
    else:
        assert verdict == "conforms", lines


def test_bfloat16_ulps_and_check():
    assert standalone_check._ulps(np.array([1 + 2.0 ** -7]), np.array([1.0]), np.array([1.0]), "bfloat16") == 1
    assert standalone_check._ulps(np.array([3.0 + 2.0 ** -6]), np.array([3.0]), np.array([3.0]), "bfloat16") == 1
    verdict, lines = check.run(REFERENCE, "sophia_ref.fast:Sophia", "paper", dtype="bfloat16")
    assert verdict == "conforms", lines
    verdict, lines = check.run(REFERENCE, "independent_sophia:NoClip", "paper", dtype="bfloat16")
    assert verdict == "fails", lines
    with pytest.raises(ValueError, match="dtype 'float16' is not supported; accepted values: float64, float32"):
        check.run(REFERENCE, "sophia_ref:SophiaRef", "paper", dtype="float16")
