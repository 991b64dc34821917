"""Check a Sophia port against sophia-ref test vectors with numpy alone (no torch, no sophia_ref).

    from standalone_check import check
    report = check("vectors/", step, dialect="paper")      # step(state, theta, grad, hhat, hyper) -> (state, theta)

``step`` gets float64 numpy arrays: ``theta`` and ``grad`` of one tensor, ``hhat`` (its Hessian-diagonal
estimate, or None on steps without a refresh), ``state`` (None on the first step, else whatever your step
returned last; return m and h under keys "m" and "h" to have them checked too) and ``hyper`` (a dict: lr,
beta1, beta2, gamma, eps, weight_decay, hessian_interval, batch_size, the dialect's knobs, and "t", the step).
Each case runs free-running from its initial parameters; the first parameter (or m, h) coordinate further
from the reference than the tolerance (16 ulps per step at operand scale, the float64 bound of
sophia-ref's certification, counted in the ulps of the port's dtype: ``check(..., dtype=np.float32)``, or ``"bfloat16"``) is
reported. Exit status of ``python standalone_check.py DIR MODULE:FUNCTION``:
0 every case within tolerance, 1 a case outside it, 2 the vectors are damaged (a missing file, a hash
mismatch, a newer format version).
"""

import hashlib
import importlib
import json
import os
import sys

import numpy as np

FORMAT_VERSION = 1
ULPS_PER_STEP = 16.0


class VectorError(Exception):
    """The vector set itself is unusable: nothing is reported as passing."""


def _manifest(root):
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        raise VectorError(f"{path}: missing (not a vector set?)")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise VectorError(f"{path}: format version {manifest['format_version']} is newer than this checker's "
                          f"{FORMAT_VERSION}: use the standalone_check.py shipped with the vectors")
    for name, digest in manifest["files"].items():
        file = os.path.join(root, name)
        if not os.path.exists(file):
            raise VectorError(f"{file}: missing (listed in the manifest)")
        with open(file, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                raise VectorError(f"{file}: SHA-256 does not match the manifest (damaged or edited)")
    return manifest


def _load(root, name):
    try:
        return np.load(os.path.join(root, name), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise VectorError(f"{os.path.join(root, name)}: unreadable array ({error})") from error


def _ulps(got, want, scale, dtype=np.float64):
    if dtype == "bfloat16":  # bfloat16 (no numpy type) keeps float32's exponent and 7 of its 23 fraction bits
        spacing = np.spacing(np.maximum(np.abs(scale), np.finfo(np.float32).tiny).astype(np.float32)) * 2.0 ** 16
    else:
        spacing = np.spacing(np.maximum(np.abs(scale), np.finfo(dtype).tiny).astype(dtype))
    spacing = spacing.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a far-off port overflows to inf ulps: still a failure
        return np.abs(np.asarray(got, dtype=np.float64) - want) / spacing


def check_case(root, case, step, dtype=np.float64):
    """None if the port stays within tolerance on this case, else a sentence naming the first failure. ``dtype``:
    the port's working precision (np.float64, np.float32 or "bfloat16"), whose ulps the tolerance counts."""
    with open(os.path.join(root, case, "case.json")) as f:
        meta = json.load(f)
    steps, refresh = meta["steps"], meta["refresh_steps"]
    for i, tensor in enumerate(meta["tensors"]):
        load = lambda what: _load(root, f"{case}/{what}_{i}.npy")  # noqa: E731
        theta, grads, want = load("theta0"), load("grad"), load("theta")
        hhats, m_want, h_want = load("hhat"), load("m"), load("h")
        state = None
        for t in range(1, steps + 1):
            hyper = dict(meta["hyper"], **tensor.get("overrides", {}), knobs=meta["knobs"], t=t)
            hhat = hhats[refresh.index(t)] if t in refresh else None
            state, theta = step(state, theta.copy(), grads[t - 1].copy(), None if hhat is None else hhat.copy(), hyper)
            bound = ULPS_PER_STEP * t
            checks = [("parameters", theta, want[t - 1], np.maximum(np.abs(want[t - 1]), hyper["lr"]))]
            if isinstance(state, dict) and "m" in state:
                checks.append(("m", state["m"], m_want[t - 1], np.maximum(np.abs(m_want[t - 1]), np.abs(grads[t - 1]))))
            if isinstance(state, dict) and "h" in state:
                checks.append(("h", state["h"], h_want[t - 1], np.abs(h_want[t - 1])))
            for what, got, ref, scale in checks:
                got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
                err = _ulps(got, ref, scale, dtype)
                if not np.all(err <= bound):  # NaN fails too
                    j = int(np.argmax(np.where(np.isnan(err), np.inf, err)))
                    return (f"{case}: tensor {i}, step {t}, {what}[{j}]: got {float(got.reshape(-1)[j])!r}, expected "
                            f"{float(ref.reshape(-1)[j])!r} ({float(err.reshape(-1)[j]):.3g} ulps, tolerance {bound:g})")
    return None


def check(root, step, dialect=None, dtype=np.float64):
    """``{case: None or failure}`` for every case (of ``dialect``, if given). Raises VectorError on damage."""
    manifest = _manifest(root)
    cases = [c for c in manifest["cases"] if dialect is None or c.split("/")[0] == dialect]
    if not cases:
        raise VectorError(f"{root}: no case for dialect {dialect!r}")
    return {case: check_case(root, case, step, dtype) for case in cases}


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__)
        return 2
    module, _, name = argv[1].partition(":")
    step = getattr(importlib.import_module(module), name)
    try:
        report = check(argv[0], step, argv[2] if len(argv) == 3 else None)
    except VectorError as error:
        print(f"error: {error}")
        return 2
    for case, failure in report.items():
        print(f"{'FAIL' if failure else 'ok  '} {case}" + (f": {failure}" if failure else ""))
    return 1 if any(report.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
