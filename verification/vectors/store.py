"""The on-disk format of a vector set, and its checks.

    DIR/manifest.json          format_version, the exporting tool's version, the cases, the SHA-256 of every file
    DIR/tolerance.json         the certification's tolerance model, per dtype
    DIR/SCHEMA.md              what every file holds
    DIR/standalone_check.py    the numpy-only checker
    DIR/<dialect>/<scenario>/case.json, *.npy

Arrays are ``.npy`` (little-endian float64, C order: they round-trip bit for bit); JSON is written with
sorted keys, so the same vectors are the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import numpy as np

from . import FORMAT_VERSION, VECTORS_VERSION
from .standalone_check import VectorError, _manifest

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "SCHEMA.md")
CHECKER = os.path.join(HERE, "standalone_check.py")


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype="<f8", order="C"), allow_pickle=False)  # (ascontiguousarray makes 0-d 1-d)
    return buffer.getvalue()


def write(root: str, cases: dict, extra: dict) -> dict:
    """Write ``cases`` ({"dialect/scenario": (metadata, {file: array})}) and the shared files into ``root``."""
    if os.path.exists(root) and os.listdir(root):
        raise ValueError(f"{root} is not empty: export into a new or empty directory")
    files: dict[str, bytes] = {"tolerance.json": _json(extra["tolerance"])}
    with open(SCHEMA, "rb") as f:
        files["SCHEMA.md"] = f.read()
    with open(CHECKER, "rb") as f:
        files["standalone_check.py"] = f.read()
    for case, (meta, arrays) in sorted(cases.items()):
        files[f"{case}/case.json"] = _json(meta)
        for name, array in sorted(arrays.items()):
            files[f"{case}/{name}"] = _npy(array)
    from sophia_ref import __version__

    manifest = dict(format_version=FORMAT_VERSION, vectors_version=VECTORS_VERSION,
                    exported_by=f"sophia-ref {__version__}", cases=sorted(cases),
                    files={name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())})
    files["manifest.json"] = _json(manifest)
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return manifest


def verify(root: str) -> dict:
    """The manifest, after checking the format version and every file's hash (VectorError names the file)."""
    return _manifest(root)


def copy_checker(dest: str) -> None:
    shutil.copy(CHECKER, dest)


__all__ = ["VectorError", "verify", "write"]
