"""``sophia-ref vectors check DIR --impl module:object``: a torch implementation against a vector set.

The implementation is built per case and tensor in the convention of ``SophiaRef`` (``cls(params, lr=,
betas=, gamma=, eps=, weight_decay=, hessian_interval=)``, ``step(hessian_estimate=[...])``, m and h in
``state[p]``; rho-form implementations read gamma as rho) and driven through the standalone checker's
path, free-running, float64. The verdict uses certify's words: ``conforms`` (every case of the dialect
within tolerance), ``fails`` (a case outside it, or the implementation raised), ``error`` (the vectors are
damaged, or nothing could be built): never a pass on partial data.
"""

from __future__ import annotations

import importlib
import inspect

import torch

from .standalone_check import VectorError, check


def resolve(spec: str):
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--impl {spec!r}: expected module:object")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _keywords(cls) -> set[str]:
    try:
        target = cls.func if hasattr(cls, "func") else cls  # functools.partial
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return set()


class ImplementationError(Exception):
    """The implementation under test raised (building it or stepping it): a finding about it, not the harness."""


def torch_step(cls, dtype=torch.float64, seen: dict | None = None):
    """The standalone checker's ``step`` for a SophiaRef-convention torch optimizer class. Its m and h are
    compared where its state names them ``m`` and ``h``; under other names only the parameters are (``seen``,
    if given, records ``state_compared``)."""
    def step(state, theta, grad, hhat, hyper):
        if state is None:
            p = torch.nn.Parameter(torch.tensor(theta, dtype=dtype))
            kwargs = dict(lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), gamma=hyper["gamma"],
                          eps=hyper["eps"], weight_decay=hyper["weight_decay"],
                          hessian_interval=hyper["hessian_interval"])
            accepted = _keywords(cls)
            if hyper["knobs"]["form"] == "rho" and "rho" in accepted:  # the rho form's threshold, as the case means
                kwargs["rho"] = kwargs.pop("gamma")
            if "batch_size" in accepted:
                kwargs["batch_size"] = hyper["batch_size"]
            try:
                state = {"p": p, "opt": cls([p], **kwargs)}
            except Exception as error:
                raise ImplementationError(f"building it failed: {type(error).__name__}: {error}") from error
        p, opt = state["p"], state["opt"]
        p.grad = torch.tensor(grad, dtype=dtype)
        try:
            opt.step(hessian_estimate=None if hhat is None else [torch.tensor(hhat, dtype=dtype)])
        except Exception as error:
            raise ImplementationError(f"step {hyper['t']} raised {type(error).__name__}: {error}") from error
        slot = opt.state.get(p, {})
        out = {k: v for k, v in state.items() if k in ("p", "opt")}
        for key in ("m", "h"):
            if isinstance(slot.get(key), torch.Tensor):
                out[key] = slot[key].double().numpy()
        if seen is not None:
            seen["state_compared"] = seen.get("state_compared", True) and "m" in out and "h" in out
        return out, p.detach().double().numpy()
    # inputs arrive in float64 and are rounded to ``dtype`` as the parameter, gradient and estimate are built
    return step


def _version_of(impl: str) -> str:
    from importlib import metadata

    top = impl.partition(":")[0].split(".")[0]
    try:
        return metadata.version(top.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def certificate(impl: str, dialect: str, verdict: str, lines: list[str], report: dict | None, root: str):
    """The outcome as certify's :class:`~verification.conformance.judge.Certificate` (the same JSON fields)."""
    from sophia_ref import __version__

    from ..conformance.judge import Certificate

    report = report or {}
    failed = [f for f in report.values() if f]
    metrics = dict(vector_set=root, cases_run=len(report), cases_failed=len(failed),
                   tolerance_ulps_per_step=16.0, tier="free-running")
    return Certificate(implementation=impl, version=_version_of(impl), dialect=dialect, dtype="float64",
                       device="cpu", seed=0, conforms=verdict == "conforms", metrics=metrics,
                       findings=[line for line in lines if not line.startswith("ok ")],
                       tool_version=__version__, verdict=verdict, claimed_dialect=dialect,
                       matches_claim="yes" if verdict == "conforms" else
                       ("not measured (the vectors could not be used)" if verdict == "error" else "no (see findings)"))


DTYPES = {"float64": torch.float64, "float32": torch.float32}


def run(root: str, impl: str, dialect: str = "paper", json_dir: str | None = None,
        dtype: str = "float64") -> tuple[str, list[str]]:
    """(verdict, lines); with ``json_dir``, also one JSON certificate there, as ``certify --json`` writes. In
    float32 the implementation's parameters and state are float32 and the tolerance counts float32 ulps."""
    verdict, lines, report = _run(root, impl, dialect, dtype)
    if json_dir:
        from ..conformance.report import write_certificates

        cert = certificate(impl, dialect, verdict, lines, report, root)
        cert.dtype = dtype
        [path] = write_certificates([cert], json_dir)
        lines.append(f"certificate: {path}")
    return verdict, lines


def _run(root, impl, dialect, dtype="float64"):
    try:
        cls = resolve(impl)
    except Exception as error:
        return "error", [f"error: cannot import {impl}: {type(error).__name__}: {error}"], None
    try:
        import numpy as np

        seen: dict = {}
        report = check(root, torch_step(cls, DTYPES[dtype], seen), dialect, dtype=np.dtype(dtype).type)
    except VectorError as error:
        return "error", [f"error: the vectors are unusable: {error}"], None
    except ImplementationError as error:  # the implementation raised: a finding about it
        return "fails", [f"fails: {impl}: {error}"], None
    except Exception as error:  # anything else is the harness's own failure: never blamed on the implementation
        return "error", [f"error: the check itself failed: {type(error).__name__}: {error}"], None
    lines = [f"FAIL {f}" if f else f"ok   {case}" for case, f in report.items()]
    if not seen.get("state_compared", True):
        lines.append("note: its state has no tensors named 'm' and 'h', so only the parameters were compared")
    failed = [f for f in report.values() if f]
    verdict = "fails" if failed else "conforms"
    lines.append(f"{verdict}: {len(report) - len(failed)} of {len(report)} {dialect} cases within tolerance")
    return verdict, lines, report
