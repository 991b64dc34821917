"""The ``sophia-ref`` command: every tool of the project is one of its subcommands."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.steps < 1:
        raise SystemExit("sophia-ref demo: --steps must be at least 1")
    trajectories = demo.run(tuple(args.start), args.steps, args.lr, args.gamma, args.sign_lr)
    print(f"L(x, y) = 8 (x-1)^2 (1.3x^2 + 2x + 1) + (y-4)^2 / 2 from ({args.start[0]}, {args.start[1]}); "
          f"Sophia: lr={args.lr}, gamma={args.gamma}, b1=b2=0, exact Hessian diagonal every step; "
          f"SignGD: lr={args.sign_lr}\n")
    print(demo.format_table(trajectories))
    return 0


def _dialects(args: argparse.Namespace) -> int:
    from .dialects import get_dialect, table, terminal_table

    if args.name:
        print("\n\n".join(get_dialect(name).describe() for name in args.name))
    elif args.markdown:
        print(table())
    else:
        print(terminal_table())
        print("\nρ is the clip threshold of the rho (v1) form; `sophia-ref dialects NAME` describes one preset; "
              "--markdown prints the table for a README.")
    return 0


def _mutation(args: argparse.Namespace) -> int:
    from verification import mutation

    return mutation.run(args)


def _verify(args: argparse.Namespace) -> int:
    try:
        from verification import run
    except ImportError as error:  # the verification package ships with sophia-ref; say so if it is missing
        raise SystemExit(f"sophia-ref verify: the verification package is not importable ({error})")
    return run.main(quick=args.quick, json_path=args.json, only=args.only, verbose=args.verbose)


def _certify(args: argparse.Namespace) -> int:
    from verification import certify

    if args.adapter_template:
        from verification.conformance.discover import adapter_template

        print(adapter_template())
        return 0
    auto = args.dialect == "auto"
    dialect = None if args.dialect is None or auto else args.dialect_parsed
    return certify.main(args.impl, dialect, auto, args.dtype, args.device, args.json, args.quick, args.readme,
                        dialect_text=args.dialect)


def _gpu_check(args: argparse.Namespace) -> int:
    from verification.gpu import suite

    if not args.device.startswith("cuda") and not args.small:
        print("sophia-ref gpu-check: error: --device cpu runs only the toy configuration: add --small", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 1:
        print(f"sophia-ref gpu-check: error: --steps {args.steps}: expected at least 1", file=sys.stderr)
        return 2
    return suite.run(args.device, small=args.small, steps=args.steps, backends=args.backends or suite.BACKENDS,
                     dtypes=args.dtypes or suite.DTYPES, train=not args.no_train, json_path=args.json)


def _vectors(args: argparse.Namespace) -> int:
    from verification.vectors import check, export
    from verification.vectors.standalone_check import VectorError

    if args.action == "export":
        from sophia_ref.dialects import DIALECTS

        unknown = [d for d in args.dialect or [] if d not in DIALECTS]
        if unknown:
            print(f"sophia-ref vectors: error: unknown dialect {unknown[0]!r}; presets: {', '.join(DIALECTS)}",
                  file=sys.stderr)
            return 2
        try:
            manifest = export.export(args.dir, args.dialect, quick=args.quick)
        except ValueError as error:
            print(f"sophia-ref vectors: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {len(manifest['cases'])} cases, {len(manifest['files'])} files into {args.dir} "
              f"(format {manifest['format_version']}, vectors version {manifest['vectors_version']})")
        return 0
    if not args.impl:
        print("sophia-ref vectors: error: check needs --impl module:object", file=sys.stderr)
        return 2
    verdict, lines = check.run(args.dir, args.impl, args.dialect[0] if args.dialect else "paper", json_dir=args.json,
                               dtype=args.dtype)
    print("\n".join(lines))
    return 0 if verdict == "conforms" else 1


def _dialect_type(text: str) -> str:
    """argparse type of --dialect: checked before anything runs (an unknown preset or knob is exit 2)."""
    from verification.conformance.resolve import parse_dialect

    try:
        parse_dialect(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _theory(args: argparse.Namespace) -> int:
    from theory import run

    if args.name == "report":
        return run.report(args.quick, args.out)
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds} is not valid; accepted range: integers >= 1")
    try:
        run.load(args.name)
    except ImportError as error:
        raise SystemExit(f"sophia-ref theory: experiment {args.name!r} is not available here ({error})")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("sophia-ref theory: --plot needs matplotlib: pip install 'sophia-ref[plot]'")
    return run.main(args.name, args.quick, args.seeds, args.plot, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sophia-ref",
        description="A numerics-verified float64 reference of the Sophia optimizer (arXiv 2305.14342).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the reference on the paper's 2-D problem: Sophia vs Newton vs SignGD",
        description="Deterministic trajectories on the paper's 2-D problem (SPEC section 3): Newton runs to the "
                    "saddle (0, 4), SignGD bounces and crawls, Sophia reaches the minimizer (1, 4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--start", nargs=2, type=float, default=[0.3, 1.0], metavar=("X", "Y"),
                      help="start point; -0.366 < X < 0.596 has negative curvature in x")
    demo.add_argument("--steps", type=int, default=30, help="number of steps")
    demo.add_argument("--lr", type=float, default=0.5, help="Sophia's eta")
    demo.add_argument("--gamma", type=float, default=0.5, help="Sophia's gamma (eta = gamma clips Newton at eta)")
    demo.add_argument("--sign-lr", type=float, default=0.1, help="SignGD's step size")
    demo.set_defaults(run=_demo)

    dialects = commands.add_parser(
        "dialects", help="list the named dialects of the rule (or describe some)",
        description="The presets of the one rule: where each public implementation departs from the paper.")
    dialects.add_argument("name", nargs="*", help="describe these presets (default: print the table of all)")
    dialects.add_argument("--markdown", action="store_true", help="print the table as Markdown (as in the README)")
    dialects.set_defaults(run=_dialects)

    verify = commands.add_parser(
        "verify", help="check the reference against exact rationals, mpmath and scipy",
        description="Runs every oracle check (one step vs exact rationals; estimators vs closed forms; "
                    "trajectories vs mpmath at 50 digits; minimizers vs scipy) and prints a table of "
                    "problem, check, worst error, bound and result. Exit status 1 if any check fails.")
    verify.add_argument("--quick", action="store_true", help="the short run (about 15 s on two cores)")
    verify.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    verify.add_argument("--only", metavar="TEXT", help="run only the checks whose name contains TEXT")
    verify.add_argument("--verbose", action="store_true", help="print the notes behind every row")
    verify.set_defaults(run=_verify)

    from sophia_ref.dialects import DIALECTS
    from verification.conformance.resolve import KNOWN

    certify = commands.add_parser(
        "certify", help="run implementations in lock-step with the reference and say which dialect they compute",
        description="Certifies each IMPL against the float64 reference: resolves it, discovers its API and state, "
                    "detects its dialect by behaviour, runs a battery of scenarios teacher-forced (one step at a "
                    "time from the reference's state) and free-running, and prints the conformance matrix with "
                    "ranked findings. Exit status 0 only if every implementation conforms: computes the dialect "
                    "it claims (--dialect D, or its adapter's claim, else paper), or under --dialect auto a named "
                    "preset. Verdicts: conforms, departs (knobs that match no preset, or not its claim), outside "
                    "the knobs (no knob setting reproduces it), fails, error (nothing could be certified).",
        epilog=f"IMPL: module:object (an Adapter subclass, or a torch.optim.Optimizer subclass or factory; the "
               f"current directory is on the import path) or a short name: {', '.join(KNOWN)}. With no IMPL: "
               f"sophia-ref's own implementation and every public one installed. "
               f"Dialects: auto, {', '.join(DIALECTS)}, or PRESET,knob=value,... "
               f"(e.g. paper,bias_correction=true; `sophia-ref dialects` lists the presets and knobs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    certify.add_argument("impl", nargs="*", metavar="IMPL", help="implementations to certify")
    certify.add_argument("--dialect", default=None, metavar="D", type=_dialect_type,
                         help="the dialect to hold them to: auto (detect it), a preset, or PRESET,knob=value,...; "
                              "default: the one each claims, else paper")
    certify.add_argument("--dtype", default="float64", choices=["float64", "float32", "bfloat16", "float16"],
                         help="parameter dtype")
    certify.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the implementation")
    certify.add_argument("--json", metavar="DIR", help="write one JSON certificate per implementation into DIR")
    certify.add_argument("--quick", action="store_true", help="a shorter battery")
    certify.add_argument("--readme", metavar="PATH",
                         help="also write the matrix (with the date and versions) between the conformance-matrix "
                              "markers of PATH")
    certify.add_argument("--adapter-template", action="store_true",
                         help="print the skeleton of an Adapter for an optimizer whose API does not fit, and exit")
    certify.set_defaults(run=_certify)

    gpu = commands.add_parser(
        "gpu-check", help="the GPU conformance suite: fused kernels on GPT-2 small shapes and a 200-step GPT-2 run",
        description="a. kernel conformance: sophia_ref.fast.Sophia (triton and foreach backends, fp32 and bf16 "
                    "parameters) on GPT-2 small's 148 parameter shapes, teacher-forced against the float64 "
                    "reference on the same GPU, per tensor within the tolerance model; b. a GPT-2 small run (bf16 "
                    "autocast, Sophia-G, GNB refresh every 10 steps) of the fused optimizer against SophiaRef "
                    "(float64 state) on the same gradients and sampled labels, its drift held to the bound derived "
                    "from the tolerance model. Prints one table last. About 5 minutes on one H100/H200.",
        epilog="Exit status: 0 all passed, 1 a check failed (or could not run on a GPU), 77 no CUDA device "
               "(skipped, nothing checked).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gpu.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (cpu needs --small)")
    gpu.add_argument("--small", action="store_true",
                     help="a toy GPT-2 (2 layers, width 64) instead of GPT-2 small: for development, not the suite")
    gpu.add_argument("--steps", type=int, default=None, help="steps of the GPT-2 run (default: 200; 30 with --small)")
    gpu.add_argument("--backend", action="append", choices=["triton", "foreach"], dest="backends",
                     help="kernel checks for this backend only (repeatable; default: both)")
    gpu.add_argument("--dtype", action="append", choices=["float32", "bfloat16"], dest="dtypes",
                     help="kernel checks in this parameter dtype only (repeatable; default: both)")
    gpu.add_argument("--no-train", action="store_true", help="skip the GPT-2 run (b)")
    gpu.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    gpu.set_defaults(run=_gpu_check)

    vectors = commands.add_parser(
        "vectors", help="export the reference's answers as test vectors, or check an implementation against them",
        description="export DIR: for each dialect preset and scenario of the certification battery, the inputs and "
                    "every step's expected parameters, m and h in float64 (.npy), JSON metadata, a schema, a "
                    "manifest of SHA-256 hashes and a numpy-only checker (standalone_check.py). check DIR --impl "
                    "module:object: a torch optimizer in SophiaRef's convention, a certify Adapter, or one of "
                    "certify's short names (official, sophia-optimizer, pytorch-optimizer, optax, fast-foreach), "
                    "against the vectors of one dialect.",
        epilog="Exit status: export 0, or 2 on bad arguments or a non-empty DIR; check 0 conforms, 1 fails or error.")
    vectors.add_argument("action", choices=["export", "check"])
    vectors.add_argument("dir", metavar="DIR")
    vectors.add_argument("--dialect", action="append", metavar="D",
                         help="export: only these presets (repeatable; default all); check: the dialect (default paper)")
    vectors.add_argument("--quick", action="store_true", help="export: the quick battery's scenarios only")
    vectors.add_argument("--impl", metavar="MODULE:OBJECT", help="check: the implementation")
    vectors.add_argument("--json", metavar="DIR", help="check: also write a JSON certificate (certify's fields) into DIR")
    vectors.add_argument("--dtype", default="float64", choices=["float64", "float32", "bfloat16"],
                         help="check: the implementation's parameter dtype; the tolerance counts its ulps")
    vectors.set_defaults(run=_vectors)

    from verification import mutation

    mutate = commands.add_parser(
        "mutation", help="mutation testing: change one line of the code at a time and see a test fail",
        description="Mutates sophia_ref/rule.py, dialects.py, estimators.py and the verdict logic "
                    "(verification/conformance/judge.py) one line at a time, runs the tests that cover each, and "
                    "prints the survivors and the score (killed / (total - equivalent)). Run it in a checkout; "
                    "docs/MUTATION.md explains the output and the equivalents file.")
    mutation.add_arguments(mutate)
    mutate.set_defaults(run=_mutation)

    from theory.run import EXPERIMENTS

    theory = commands.add_parser(
        "theory", help="run a theory experiment (table and figure), or all of them into docs/THEORY.md",
        description="Seeded experiments that test the paper's claims: " + ", ".join(EXPERIMENTS) + ". "
                    "`sophia-ref theory report` runs them all and writes the results page.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    theory.add_argument("name", choices=[*EXPERIMENTS, "report"], help="the experiment, or report")
    theory.add_argument("--quick", action="store_true", help="the short configuration (used by the tests)")
    theory.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    theory.add_argument("--plot", metavar="PATH", help="write the figure (PNG) to PATH")
    theory.add_argument("--json", metavar="PATH", help="write the data as JSON to PATH")
    theory.add_argument("--out", default="docs/THEORY.md", help="report: the results page to write")
    theory.set_defaults(run=_theory)
    return parser


def _check_certify_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors of certify (exit 2) before anything runs: an IMPL that is neither module:object nor a
    short name; the dialect parsed once here."""
    from verification.conformance.resolve import KNOWN, parse_dialect

    for impl in args.impl:
        if impl not in KNOWN and (":" not in impl or not all(impl.partition(":")[::2])):
            parser.error(f"certify: IMPL {impl!r} is neither module:object nor a short name "
                         f"({', '.join(KNOWN)})")
    args.dialect_parsed = None if args.dialect in (None, "auto") else parse_dialect(args.dialect)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "certify":
        _check_certify_args(parser, args)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ValueError as error:  # bad hyperparameters: a one-line message, not a traceback
        print(f"sophia-ref {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
