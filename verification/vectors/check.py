"""``sophia-ref vectors check DIR --impl module:object``: a torch implementation against a vector set.

Two ways in, chosen by what ``--impl`` names:

- a plain optimizer class or factory in the convention of ``SophiaRef`` (``cls(params, lr=, betas=, gamma=,
  eps=, weight_decay=, hessian_interval=)``, ``step(hessian_estimate=[...])``, m and h in ``state[p]``;
  rho-form implementations read gamma as rho): built per case and tensor and stepped directly;
- an :class:`~verification.adapters.base.Adapter` (a class or an instance), or one of certify's short names
  (``official``, ``sophia-optimizer``, ``pytorch-optimizer``, ``optax``, ``fast-foreach``, ...): driven
  through the adapter protocol that ``certify`` uses, so any port certify can drive can be checked against
  the vectors. GNB-shaped adapters get ``ghat = sqrt(hhat / B)`` (``sqrt(hhat)`` where B lives at step time).

Either way it runs free-running through the standalone checker's path, in float64, float32 or bfloat16
(inputs rounded to that dtype; the tolerance counts its ulps). The verdict uses certify's words:
``conforms`` (every case of the dialect ran and is within tolerance), ``fails`` (a case outside it, or the
implementation raised), ``error`` (the vectors are damaged, nothing could be built, or some case could not
be run by this implementation, e.g. it fixes a hyperparameter the case sets otherwise): never a pass on
partial data.
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


class CaseNotRunnable(Exception):
    """This implementation cannot take this case's inputs as given (a hyperparameter it fixes, an estimate its
    API cannot express): the case is not run, and the check cannot conform."""


def _hyperparameters(hyper: dict):
    from ..adapters.base import Hyperparameters

    return Hyperparameters(lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"], gamma=hyper["gamma"],
                           eps=hyper["eps"], weight_decay=hyper["weight_decay"],
                           hessian_interval=hyper["hessian_interval"], batch_size=hyper["batch_size"])


def adapter_step(adapter, dtype=torch.float64):
    """The standalone checker's ``step`` for a certify :class:`~verification.adapters.base.Adapter`: built on the
    first step of each case and tensor, stepped with the case's gradient and estimate, its ``parameters()`` and
    ``state()`` (the dialect's m and h) read back in float64."""
    import numpy as np

    from ..adapters.base import Refresh

    def step(state, theta, grad, hhat, hyper):
        if state is None:
            h = _hyperparameters(hyper)
            fixed = {k: v for k, v in (getattr(adapter, "fixed", None) or {}).items() if getattr(h, k, v) != v}
            if fixed:
                raise CaseNotRunnable("it fixes " + ", ".join(f"{k} = {v!r} (the case has {getattr(h, k)!r})"
                                                              for k, v in fixed.items()))
            try:
                adapter.groups = None
                adapter.build([torch.tensor(theta, dtype=torch.float64)], h, dtype, "cpu")
            except Exception as error:
                raise ImplementationError(f"building it failed: {type(error).__name__}: {error}") from error
        refresh = None
        if hhat is not None:
            batch = float(hyper["batch_size"])
            per = batch if hyper["knobs"]["batch_factor"] == "estimate" else 1.0
            ghat = np.sqrt(hhat / per) if np.all(hhat >= 0) else None
            if ghat is None and not adapter.accepts_any_estimate:
                raise CaseNotRunnable("its API takes only GNB-shaped estimates (squares of a gradient) and this "
                                      "case's estimate is signed")
            refresh = Refresh(hhat=[torch.tensor(hhat)], ghat=None if ghat is None else [torch.tensor(ghat)],
                              batch=batch)
        try:
            adapter.step([torch.tensor(grad, dtype=torch.float64)], refresh)
            [params] = adapter.parameters()
            _, [m], [h] = adapter.state()
        except Exception as error:
            raise ImplementationError(f"step {hyper['t']} raised {type(error).__name__}: {error}") from error
        return {"adapter": adapter, "m": m.double().numpy(), "h": h.double().numpy()}, params.double().numpy()
    return step


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


def certificate(impl: str, dialect: str, verdict: str, lines: list[str], report: dict | None, root: str,
                not_run: dict | None = None):
    """The outcome as certify's :class:`~verification.conformance.judge.Certificate` (the same JSON fields)."""
    from sophia_ref import __version__

    from ..conformance.judge import Certificate

    report = report or {}
    failed = [f for f in report.values() if f]
    metrics = dict(vector_set=root, cases_run=len(report), cases_failed=len(failed), cases_not_run=len(not_run or {}),
                   tolerance_ulps_per_step=16.0, tier="free-running")
    return Certificate(implementation=impl, version=_version_of(impl), dialect=dialect, dtype="float64",
                       device="cpu", seed=0, conforms=verdict == "conforms", metrics=metrics,
                       findings=[line for line in lines if not line.startswith("ok ")],
                       tool_version=__version__, verdict=verdict, claimed_dialect=dialect,
                       matches_claim="yes" if verdict == "conforms" else
                       ("not measured (the vectors could not be used)" if verdict == "error" else "no (see findings)"))


DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def run(root: str, impl: str, dialect: str = "paper", json_dir: str | None = None,
        dtype: str = "float64") -> tuple[str, list[str]]:
    """(verdict, lines); with ``json_dir``, also one JSON certificate there, as ``certify --json`` writes. In
    float32 or bfloat16 the implementation's parameters (and the inputs it is given) are of that dtype and the
    tolerance counts its ulps."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; accepted values: {', '.join(DTYPES)}")
    verdict, lines, report, not_run = _run(root, impl, dialect, dtype)
    if json_dir:
        from ..conformance.report import write_certificates

        cert = certificate(impl, dialect, verdict, lines, report, root, not_run)
        cert.dtype = dtype
        [path] = write_certificates([cert], json_dir)
        lines.append(f"certificate: {path}")
    return verdict, lines


def _step_function(impl: str, dtype: str, seen: dict):
    """The standalone checker's ``step`` for ``impl``: through certify's adapter protocol when it names an Adapter
    or one of certify's short names, else in the SophiaRef convention. Raises on an import failure."""
    from ..adapters.base import Adapter
    from ..conformance.resolve import KNOWN
    from ..conformance.resolve import resolve as resolve_adapter

    if impl in KNOWN:
        return adapter_step(resolve_adapter(impl), DTYPES[dtype]), "adapter"
    obj = resolve(impl)
    if isinstance(obj, Adapter) or (inspect.isclass(obj) and issubclass(obj, Adapter)):
        return adapter_step(obj if isinstance(obj, Adapter) else obj(), DTYPES[dtype]), "adapter"
    return torch_step(obj, DTYPES[dtype], seen), "convention"


def _run(root, impl, dialect, dtype="float64"):
    import numpy as np

    from .standalone_check import _manifest, check_case

    try:
        step, _ = _step_function(impl, dtype, seen := {})
    except Exception as error:
        return "error", [f"error: cannot import {impl}: {type(error).__name__}: {error}"], None, None
    ulps_of = "bfloat16" if dtype == "bfloat16" else np.dtype(dtype).type
    report, not_run = {}, {}
    try:
        manifest = _manifest(root)
        cases = [c for c in manifest["cases"] if c.split("/")[0] == dialect]
        if not cases:
            raise VectorError(f"{root}: no case for dialect {dialect!r}")
        for case in cases:
            try:
                report[case] = check_case(root, case, step, ulps_of)
            except CaseNotRunnable as why:
                not_run[case] = str(why)
            except ImplementationError as error:  # the implementation raised: a finding about it
                report[case] = f"{case}: {impl}: {error}"
    except VectorError as error:
        return "error", [f"error: the vectors are unusable: {error}"], None, None
    except Exception as error:  # anything else is the harness's own failure: never blamed on the implementation
        return "error", [f"error: the check itself failed: {type(error).__name__}: {error}"], None, None
    lines = [f"FAIL {f}" if f else f"ok   {case}" for case, f in report.items()]
    lines += [f"NOT RUN {case}: {why}" for case, why in not_run.items()]
    if not seen.get("state_compared", True):
        lines.append("note: its state has no tensors named 'm' and 'h', so only the parameters were compared")
    failed = [f for f in report.values() if f]
    if failed:
        verdict = "fails"
        lines.append(f"fails: {len(report) - len(failed)} of {len(report)} {dialect} cases run within tolerance"
                     + (f" ({len(not_run)} not run)" if not_run else ""))
    elif not_run:
        verdict = "error"
        lines.append(f"error: {len(not_run)} of {len(cases)} {dialect} cases could not be run by {impl} (see NOT RUN "
                     f"above), so nothing is certified; the {len(report)} that ran are within tolerance")
    else:
        verdict = "conforms"
        lines.append(f"conforms: {len(report)} of {len(report)} {dialect} cases within tolerance")
    return verdict, lines, report, not_run
