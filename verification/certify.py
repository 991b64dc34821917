"""``sophia-ref certify``: the pipeline (:mod:`verification.conformance`) for each IMPL, then the matrix.

Nothing a user names can crash the run or pass by default: an import error, a constructor that
rejects the hyperparameters, an API that does not fit, an implementation that raises or returns
NaN mid-run, each becomes a certificate with the verdict ``error`` or ``fails`` and a
plain-language finding, and the run goes on with the others. The exit status is 0 only when every
certificate says ``conforms``; usage errors (an unknown dialect, short name or flag) are argparse
errors (exit 2) before anything runs.
"""

from __future__ import annotations

import torch

from .conformance import battery
from .conformance.judge import Certificate
from .conformance.pipeline import certify_spec
from .conformance.report import markdown, matrix, update_readme, write_certificates
from .conformance.resolve import installed_public
from .progress import Progress

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_all(specs: list[str], dialect, auto: bool, quick: bool, dtype_name: str, device: str,
            progress: bool = True) -> list[Certificate]:
    certificates = []
    for spec in specs:
        bar = Progress(len(battery(quick)), f"certify {spec}") if progress else None

        def on_scenario(name: str) -> None:
            if bar:
                bar.update(name)
                bar.advance()

        certificates.append(certify_spec(spec, dialect, auto=auto, quick=quick, dtype=DTYPES[dtype_name],
                                         device=device, on_scenario=on_scenario))
        if bar:
            bar.close()
    return certificates


def main(impls: list[str], dialect, auto: bool, dtype: str, device: str, json_dir: str | None, quick: bool,
         readme: str | None = None, dialect_text: str | None = None) -> int:
    if device != "cpu" and not torch.cuda.is_available():
        print(f"sophia-ref certify: --device {device}: no CUDA device is available here")
        return 2
    specs = impls or installed_public()
    certificates = run_all(specs, dialect, auto, quick, dtype, device)
    print(matrix(certificates))
    if json_dir:
        for path in write_certificates(certificates, json_dir):
            print(f"wrote {path}")
    if readme:
        command = " ".join(["sophia-ref certify", *impls, *([f"--dialect {dialect_text}"] if dialect_text else []),
                            *(["--quick"] if quick else []),
                            *([f"--dtype {dtype}"] if dtype != "float64" else []), f"--readme {readme}"])
        update_readme(readme, markdown(certificates, command))
        print(f"updated the conformance matrix in {readme}")
    passed = [c for c in certificates if c.verdict == "conforms"]
    print(f"\n{len(passed)} of {len(certificates)} implementations conform"
          + ("" if len(passed) == len(certificates) else
             f"; not conforming: {', '.join(f'{c.implementation} ({c.verdict})' for c in certificates if c.verdict != 'conforms')}"))
    return 0 if len(passed) == len(certificates) and certificates else 1
