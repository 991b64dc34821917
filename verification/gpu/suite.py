"""``sophia-ref gpu-check``: the GPU conformance suite, one table last.

a. kernel conformance (:mod:`.kernel_check`): ``sophia_ref.fast.Sophia`` on GPT-2 small's 148 parameter
   shapes (124M coordinates), fp32 and bf16, triton and foreach, teacher-forced against the float64
   reference computed on the same GPU, per tensor within the tolerance model;
b. a GPT-2 small run (:mod:`.train_check`): 200 steps, bf16 autocast, Sophia-G with a GNB refresh every 10
   steps, the fused optimizer against SophiaRef (float64 state) on the same gradients and sampled labels,
   its drift held to the bound derived from the tolerance model.

Exit status: 0 every check passed; 1 a check failed; 77 no CUDA device (nothing ran: the suite is
skipped, as automake and meson read 77). ``--device cpu --small`` runs the same code on a toy GPT-2 on the
CPU (the triton rows under ``TRITON_INTERPRET=1``), for development; it is not the suite.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

import torch

SKIPPED = 77
BACKENDS = ("triton", "foreach")
DTYPES = ("float32", "bfloat16")


def _versions() -> dict:
    out = {"torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"


def _triton_available(device: str) -> str | None:
    """Why the triton backend cannot run here, or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        return "on CPU the kernel runs only under TRITON_INTERPRET=1"
    return None


def run(device: str = "cuda", small: bool = False, steps: int | None = None, backends=BACKENDS, dtypes=DTYPES,
        train: bool = True, json_path: str | None = None, out=sys.stdout, err=sys.stderr) -> int:
    from .gpt2 import SMALL, TINY
    from .kernel_check import check_kernels
    from .train_check import train_check

    if device.startswith("cuda") and not torch.cuda.is_available():
        print("sophia-ref gpu-check: no CUDA device here, so nothing was checked (exit 77: skipped). Run it on a "
              "machine with an NVIDIA GPU; `--device cpu --small` runs the same code on a toy model on the CPU.",
              file=err)
        return SKIPPED
    cfg = TINY if small else SMALL
    steps = (30 if small else 200) if steps is None else steps
    began = time.perf_counter()
    rows, results = [], {"device": _device_name(device), "versions": _versions(), "date": time.strftime("%Y-%m-%d"),
                         "config": asdict(cfg), "kernel": [], "train": []}

    def say(text):
        print(f"[{time.perf_counter() - began:6.1f}s] {text}", file=err, flush=True)

    for backend in backends:
        why = _triton_available(device) if backend == "triton" else None
        for dtype in dtypes:
            label = f"a. kernel conformance, {backend}, {dtype}"
            if why:
                rows.append((label, "SKIPPED", why))
                continue
            report = check_kernels(backend, getattr(torch, dtype), device, cfg, progress=say)
            rows.append((label, "PASS" if report.passed else "FAIL", report.summary()))
            results["kernel"].append(dict(backend=backend, dtype=dtype, passed=report.passed,
                                          bit_identical=report.bit_identical, summary=report.summary(),
                                          checks=[asdict(c) for c in report.checks]))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if train:
        backend = "triton" if device.startswith("cuda") and _triton_available(device) is None else "foreach"
        batch, seq = (4, 32) if small else (8, cfg.context)
        report = train_check(backend, device, cfg, steps=steps, batch=batch, seq=seq, progress=say)
        label = f"b. GPT-2 {'(toy) ' if small else 'small '}run, {steps} steps, fast.Sophia ({backend}) vs SophiaRef"
        rows.append((label, "PASS" if report.passed else "FAIL", report.summary()))
        results["train"].append(dict(backend=backend, passed=report.passed, summary=report.summary(),
                                     explained=report.explained, records=[asdict(r) for r in report.records]))
    seconds = time.perf_counter() - began
    results["seconds"] = seconds
    failed = [r for r in rows if r[1] == "FAIL"]
    skipped = [r for r in rows if r[1] == "SKIPPED"]
    print(f"sophia-ref gpu-check on {results['device']} (torch {results['versions']['torch']}, triton "
          f"{results['versions']['triton']}), {results['date']}, {seconds:.0f} s"
          + (" -- toy configuration on the CPU, not the suite" if small or not device.startswith("cuda") else ""),
          file=out)
    print("| check | result | details |", file=out)
    print("|---|---|---|", file=out)
    for label, verdict, details in rows:
        print(f"| {label} | {verdict} | {details} |", file=out)
    summary = (f"{len(rows) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    print(summary, file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if failed:
        return 1
    if skipped and device.startswith("cuda"):
        return 1  # on a GPU every check must run: a skipped kernel check is not a pass
    return 0
