"""``sophia-ref certify``: resolve implementations, run the conformance battery, print the matrix, write certificates.

An implementation is named as ``module:object`` (an :class:`~verification.adapters.base.Adapter`
subclass, a ``torch.optim.Optimizer`` subclass following the SophiaRef convention, or a
factory returning one) or by one of the short names in :data:`KNOWN`. Nothing a user names
can crash the run: an import error, a constructor that rejects the hyperparameters, an
implementation that raises or returns NaN mid-run, each becomes a failed certificate with a
plain-language finding, and the run goes on with the others.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
from dataclasses import asdict
from typing import Callable

import torch

from sophia_ref.dialects import get_dialect

from .adapters.base import Adapter
from .conformance import Certificate, battery, certify
from .conformance.resolve import KNOWN, Unavailable, installed_public, resolve
from .progress import Progress

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

def failed_certificate(spec: str, why: str, dialect: str | None, dtype: str, device: str) -> Certificate:
    from sophia_ref import __version__

    return Certificate(spec, "?", dialect or "?", dtype, device, 0, False, {}, [why], __version__)


def run_all(specs: list[str], dialect: str | None, quick: bool, dtype_name: str, device: str,
            progress_factory: Callable[[int, str], Progress] | None = None) -> list[Certificate]:
    certificates = []
    for spec in specs:
        detected_notes: list[str] = []
        try:
            adapter = resolve(spec)
            if dialect not in (None, "auto"):
                adapter.dialect = dialect
            claimed = type(adapter).dialect if isinstance(type(adapter).dialect, str) else adapter.dialect
            if dialect == "auto":
                preset, detected_notes = detect_dialect(adapter)
            else:
                preset = get_dialect(adapter.dialect or "paper")
        except (Unavailable, ValueError) as error:
            certificates.append(failed_certificate(spec, str(error), dialect, dtype_name, device))
            continue
        progress = progress_factory(len(battery(quick)), f"certify {spec}") if progress_factory else None

        def on_scenario(name: str) -> None:
            if progress:
                progress.update(name)
                progress.advance()

        cert = certify(adapter, preset, quick=quick, dtype=DTYPES[dtype_name], device=device, on_scenario=on_scenario)
        cert.implementation = spec if spec not in KNOWN else adapter.name
        cert.findings = detected_notes + cert.findings
        cert.metrics["claimed_dialect"] = claimed
        cert.metrics["dialect_matched"] = None if claimed is None else claimed == cert.dialect
        if progress:
            progress.close()
        certificates.append(cert)
    return certificates


def detect_dialect(adapter: Adapter):
    """``--dialect auto``: the preset the implementation's behaviour matches, or a custom dialect made of the
    knobs it showed; raises ValueError (a failed certificate) when a knob could not be determined."""
    from sophia_ref.dialects import Dialect

    from .conformance.detect import detect

    claimed = adapter.dialect
    found = detect(adapter)
    summary = "; ".join(found.describe().splitlines()[:3])
    notes = [f"dialect detected by behaviour ({found.probes} probes): {summary}"] + [f"note: {n}" for n in found.notes]
    if claimed and found.matches and claimed not in found.matches:
        notes.append(f"the adapter claims dialect {claimed!r}, but the behaviour matches {', '.join(found.matches)}")
    if found.preset:
        # presets that behave identically (paper_v1 and pytorch_optimizer) are told apart by the claim
        adapter.dialect = claimed if claimed in found.matches else found.preset
        return get_dialect(adapter.dialect), notes
    knobs = found.knobs
    if knobs is None:
        raise ValueError("dialect detection could not determine every knob: " + found.describe().replace("\n", "; "))
    defaults = dict(get_dialect("paper").defaults)
    if found.eps is not None:
        defaults["eps"] = found.eps
    custom = Dialect("custom", knobs, defaults, "unknown", "knob values detected from behaviour; no preset matches")
    notes.append(f"no preset matches; certified against the detected knobs {knobs}")
    return custom, notes


def _properties(cert: Certificate) -> dict[str, str]:
    """The matrix row: the dialect's properties, which conformance verified when the certificate holds."""
    known = cert.conforms and cert.dialect not in ("?", "custom")
    if not known:
        return dict(clip="?", negh="?", eps="?", bias="?", refresh="?", batch="?")
    preset = get_dialect(cert.dialect)
    k = preset.knobs
    return dict(clip="yes" if k.clip_bounded else "no (h < 0)", negh="yes" if k.clip_bounded else "no: ascent",
                eps=f"{preset.defaults['eps']:g} {'in max' if k.eps_placement == 'max' else 'added'}",
                bias="yes" if k.bias_correction else "no",
                refresh={"immediate": "(t-1)%k, at once", "next_step": "(t-1)%k, next step",
                         "caller": "caller"}[k.refresh],
                batch="in estimate" if k.batch_factor == "estimate" else "at step")


def _rows(certificates: list[Certificate]) -> list[tuple[str, ...]]:
    rows = []
    for c in certificates:
        p = _properties(c)
        tf, fr = c.metrics.get("teacher_forced_max_ulps"), c.metrics.get("free_running_max_ulps")
        err = "-" if tf is None else f"{tf:.3g} / {fr:.3g} ulp"
        if tf is not None and c.metrics.get("naive_teacher_forced_max_ulps") is not None:
            err += (f" (naive float32: {c.metrics['naive_teacher_forced_max_ulps']:.3g} / "
                    f"{c.metrics['naive_free_running_max_ulps']:.3g})")
        matched = c.metrics.get("dialect_matched")
        claim = "-" if matched is None else ("yes" if matched else f"no (claims {c.metrics['claimed_dialect']})")
        rows.append((c.implementation, c.version, c.dialect, claim, p["clip"], p["negh"], p["eps"], p["bias"],
                     p["refresh"], p["batch"], err, "conforms" if c.conforms else "FAILS"))
    return rows


HEADER = ("implementation", "version", "dialect", "matches its claim", "clip bound", "negative-h safe", "eps",
          "bias corr.", "refresh", "B factor", "max error (teacher-forced / free)", "verdict")


def markdown(certificates: list[Certificate], command: str) -> str:
    """The matrix as a Markdown table, with the date, the versions and the command that made it."""
    import datetime
    import platform

    from sophia_ref import __version__

    cell = lambda text: str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in _rows(certificates)]
    stamp = (f"Generated by `{command}` on {datetime.date.today().isoformat()} with sophia-ref {__version__}, "
             f"torch {torch.__version__}, Python {platform.python_version()}.")
    return "\n".join([stamp, ""] + lines)


def update_readme(path: str, text: str) -> None:
    """Replace the block between the conformance-matrix markers of ``path`` with ``text``."""
    start, end = "<!-- conformance-matrix: generated by sophia-ref certify --readme -->", "<!-- end conformance-matrix -->"
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if start not in content or end not in content:
        raise ValueError(f"{path} has no conformance-matrix markers ({start} ... {end})")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n{text}\n{end}{tail}")


def matrix(certificates: list[Certificate]) -> str:
    rows = [HEADER] + _rows(certificates)
    header = HEADER
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    line = lambda r: " | ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip()
    out = [line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    for c in certificates:
        if c.findings:
            out += ["", f"{c.implementation}:"] + [f"  - {f}" for f in c.findings]
    return "\n".join(out)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_certificates(certificates: list[Certificate], directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for c in certificates:
        data = asdict(c)
        data["results"] = [asdict(r) for r in c.results]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", c.implementation).strip("_") or "implementation"
        path = os.path.join(directory, f"{stem}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_json_safe(data), f, indent=2)
        paths.append(path)
    return paths


def main(impls: list[str], dialect: str | None, dtype: str, device: str, json_dir: str | None, quick: bool,
         readme: str | None = None) -> int:
    if device != "cpu" and not torch.cuda.is_available():
        print(f"sophia-ref certify: --device {device}: no CUDA device is available here")
        return 2
    specs = impls or installed_public()
    certificates = run_all(specs, dialect, quick, dtype, device, lambda n, label: Progress(n, label))
    print(matrix(certificates))
    if json_dir:
        for path in write_certificates(certificates, json_dir):
            print(f"wrote {path}")
    if readme:
        command = " ".join(["sophia-ref certify", *impls, *([f"--dialect {dialect}"] if dialect else []),
                            *(["--quick"] if quick else []),
                            *([f"--dtype {dtype}"] if dtype != "float64" else []), f"--readme {readme}"])
        update_readme(readme, markdown(certificates, command))
        print(f"updated the conformance matrix in {readme}")
    failed = [c for c in certificates if not c.conforms]
    print(f"\n{len(certificates) - len(failed)} of {len(certificates)} implementations conform")
    return 1 if failed else 0
