"""Stage 1, resolving: an IMPL string and a dialect string become an adapter and a dialect to judge by.

An implementation is named as ``module:object`` or by one of the short names in :data:`KNOWN`.
``module:object`` may be an :class:`~verification.adapters.base.Adapter` subclass or instance,
a ``torch.optim.Optimizer`` subclass, or a factory returning an optimizer. The current
directory is on the import path first, as ``python -m`` has it, so ``certify mymod:Cls`` works
beside ``mymod.py``.

A dialect is ``auto`` (detect it by behaviour), a preset name (:data:`sophia_ref.dialects.DIALECTS`)
or a preset with knob overrides, ``PRESET[,knob=value...]`` (``paper,bias_correction=true``):
a deliberately custom dialect. :func:`parse_dialect` is strict, so a typo is a usage error
before anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from importlib import metadata

from sophia_ref.dialects import DIALECTS, Dialect, get_dialect
from sophia_ref.rule import Knobs

from ..adapters.base import Adapter

#: short names of the implementations the project knows how to drive: name -> (adapter, distribution to look for)
KNOWN: dict[str, tuple[str, str | None]] = {
    "sophia-ref": ("verification.conformance.resolve:sophia_ref_adapter", None),
    "fast-foreach": ("verification.conformance.resolve:fast_foreach_adapter", None),
    "official": ("verification.adapters.official:OfficialAdapter", "sophia-opt"),
    "sophia-optimizer": ("verification.adapters.sophia_optimizer:SophiaOptimizerAdapter", "sophia-optimizer"),
    "pytorch-optimizer": ("verification.adapters.pytorch_optimizer:PytorchOptimizerAdapter", "pytorch-optimizer"),
    "optax": ("verification.adapters.optax_adapter:OptaxAdapter", "optax"),
    "fast-triton": ("verification.conformance.resolve:fast_triton_adapter", "triton"),
}
#: short names certified by name only, not by default: fast-triton needs CUDA or TRITON_INTERPRET=1
BY_NAME_ONLY = ("fast-triton",)
AUTO = "auto"


class Unavailable(Exception):
    """The implementation cannot be loaded or built (missing package, bad name): an error, never a pass."""


def sophia_ref_adapter() -> Adapter:
    from sophia_ref import SophiaRef, __version__

    from ..adapters.convention import ConventionAdapter

    return ConventionAdapter(SophiaRef, "sophia_ref.SophiaRef", __version__, dialect="paper")


def _fast_adapter(backend: str) -> Adapter:
    from sophia_ref import __version__
    from sophia_ref.fast import Sophia

    from ..adapters.convention import ConventionAdapter

    return ConventionAdapter(Sophia, f"sophia_ref.fast.Sophia ({backend})", __version__, dialect="paper",
                             extra={"backend": backend})


def fast_foreach_adapter() -> Adapter:
    return _fast_adapter("foreach")


def fast_triton_adapter() -> Adapter:
    return _fast_adapter("triton")


# -- dialects ----------------------------------------------------------------------------------------------------

_KNOB_FIELDS = {f.name: f for f in dataclasses.fields(Knobs)}


def _knob_value(name: str, text: str):
    default = _KNOB_FIELDS[name].default
    if isinstance(default, bool):
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"knob {name}={text!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"knob {name}={text!r}: expected an integer") from None
    return text


def parse_dialect(text: str) -> Dialect | None:
    """``auto`` -> None; ``PRESET`` -> the preset; ``PRESET,knob=value,...`` -> a custom dialect named so.

    Raises ValueError with the accepted values for an unknown preset, knob or knob value.
    """
    if text == AUTO:
        return None
    name, *overrides = [part.strip() for part in text.split(",")]
    if name not in DIALECTS:
        raise ValueError(f"unknown dialect {name!r}; accepted: {AUTO}, {', '.join(DIALECTS)}, "
                         "or PRESET,knob=value,...")
    preset = get_dialect(name)
    if not overrides:
        return preset
    changes = {}
    for item in overrides:
        knob, sep, value = item.partition("=")
        knob = knob.strip()
        if not sep or knob not in _KNOB_FIELDS:
            raise ValueError(f"{item!r} in dialect {text!r} is not knob=value; knobs: {', '.join(_KNOB_FIELDS)}")
        changes[knob] = _knob_value(knob, value.strip())
    knobs = dataclasses.replace(preset.knobs, **changes)  # Knobs validates each value, naming the accepted ones
    spelled = ",".join([name] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items()])
    return Dialect(spelled, knobs, preset.defaults, preset.estimator,
                   f"{preset.name} with {', '.join(f'{k}={v!r}' for k, v in changes.items())} (custom)",
                   tuple(preset.departures) + tuple(f"{k} = {v!r} (custom)" for k, v in changes.items()))


def is_preset(dialect: Dialect) -> bool:
    """Whether ``dialect`` is one of the named presets, unchanged."""
    return DIALECTS.get(dialect.name) == dialect


# -- implementations ---------------------------------------------------------------------------------------------


def _load(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise Unavailable(f"{spec!r} is not of the form module:object (or one of {', '.join(KNOWN)})")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` has it: `certify mymod:Cls` beside mymod.py
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        hint = ""
        if error.name == module_name.split(".")[0]:
            hint = (f" (looked in the current directory {cwd} and on sys.path; run from the folder that holds "
                    f"{module_name.split('.')[0]}.py or its package, or add that folder to PYTHONPATH)")
        raise Unavailable(f"cannot import module {module_name!r}: {error}{hint}") from None
    except Exception as error:
        raise Unavailable(f"cannot import module {module_name!r}: {type(error).__name__}: {error}") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise Unavailable(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def _version_of(spec: str) -> str:
    module_name = spec.split(":")[0]
    try:
        return metadata.version(module_name.split(".")[0])
    except metadata.PackageNotFoundError:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        return str(getattr(module, "__version__", "?"))


def resolve(spec: str) -> Adapter:
    """The adapter for ``spec``; raises :class:`Unavailable` with a plain message."""
    from ..adapters.convention import ConventionAdapter

    target = KNOWN[spec][0] if spec in KNOWN else spec
    obj = _load(target)
    try:
        if inspect.isclass(obj) and issubclass(obj, Adapter):
            return obj()
        if isinstance(obj, Adapter):
            return obj
        if spec in KNOWN and callable(obj):
            return obj()
    except ImportError as error:  # an adapter whose package is missing
        raise Unavailable(str(error)) from None
    if callable(obj):  # an Optimizer subclass or a factory: its API is discovered by behaviour
        return ConventionAdapter(obj, spec, _version_of(spec))
    raise Unavailable(f"{spec!r} is a {type(obj).__name__}, not an optimizer class, factory or Adapter")


def installed_public() -> list[str]:
    """The short names whose packages are installed here (the project's own implementation first)."""
    names = []
    for name, (_, distribution) in KNOWN.items():
        if name in BY_NAME_ONLY:
            continue
        if distribution is not None:
            try:
                metadata.version(distribution)  # installed; whether it imports is the certificate's business
            except metadata.PackageNotFoundError:
                continue
        names.append(name)
    return names
