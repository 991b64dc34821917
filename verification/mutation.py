"""``sophia-ref mutation``: a small mutation tester, standard library only.

It changes one token of one line of a target file at a time (a *mutant*), runs the
tests that cover that file, and counts the mutant as *killed* when a test fails
(or the run exceeds its timeout) and as a *survivor* when every test passes.
The score is ``killed / (total - equivalent)``; survivors are listed with the
original and the mutated line. See docs/MUTATION.md.

Mutations are found on the AST and applied to the source text, so comments,
docstrings, string constants, f-strings, type annotations and message-only
statements (``raise``, ``print``, logging and ``warnings.warn`` calls, ``assert``
messages) are never touched. A line containing ``pragma: no mutate`` is skipped.

A mutant is written in place. The original bytes are kept in memory and in a
journal under the temporary directory, restored after every mutant (also on
Ctrl-C, SIGTERM and exceptions) and verified byte for byte; a run that was killed
outright is repaired by the next run (or ``--restore``).
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TESTS: dict[str, tuple[str, ...]] = {
    "sophia_ref/rule.py": ("tests/test_mutants_rule.py", "tests/test_rule_properties.py", "tests/test_optim.py",
                           "tests/test_dialects.py", "tests/test_step_oracle.py"),
    "sophia_ref/dialects.py": ("tests/test_mutants_dialects.py", "tests/test_dialects.py", "tests/test_detect.py",
                               "tests/test_adapters.py"),
    "sophia_ref/estimators.py": ("tests/test_mutants_estimators.py", "tests/test_estimators.py",
                                 "tests/test_estimator_oracles.py", "tests/test_estimator_power.py"),
    "verification/conformance/judge.py": ("tests/test_mutants_judge.py", "tests/test_conformance.py",
                                          "tests/test_conformance_precision.py", "tests/test_judge*.py"),
}
DEFAULT_TARGETS = tuple(DEFAULT_TESTS)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EQUIVALENTS = "verification/mutation_equivalents.txt"
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
NO_MUTATE = "pragma: no mutate"

_COMPARE_SWAP = {"Lt": "LtE", "LtE": "Lt", "Gt": "GtE", "GtE": "Gt", "Eq": "NotEq", "NotEq": "Eq",
                 "In": "NotIn", "NotIn": "In", "Is": "IsNot", "IsNot": "Is"}
_BINOP_SWAP = {"Add": "Sub", "Sub": "Add", "Mult": "Div", "Div": "Mult", "FloorDiv": "Mult", "Pow": "Mult",
               "Mod": "FloorDiv", "BitAnd": "BitOr", "BitOr": "BitAnd"}
_SYMBOL = {"Lt": "<", "LtE": "<=", "Gt": ">", "GtE": ">=", "Eq": "==", "NotEq": "!=", "In": "in",
           "NotIn": "not in", "Is": "is", "IsNot": "is not", "Add": "+", "Sub": "-", "Mult": "*", "Div": "/",
           "FloorDiv": "//", "Pow": "**", "Mod": "%", "BitAnd": "&", "BitOr": "|", "And": "and", "Or": "or"}
_MINMAX = {"max": "min", "min": "max", "maximum": "minimum", "minimum": "maximum", "amax": "amin", "amin": "amax",
           "clamp_min": "clamp_max", "clamp_max": "clamp_min", "clamp_min_": "clamp_max_", "clamp_max_": "clamp_min_"}
_METHOD_SWAP = {"add": "sub", "sub": "add", "add_": "sub_", "sub_": "add_", "mul": "div", "div": "mul",
                "mul_": "div_", "div_": "mul_"}                  # tensor arithmetic written as method calls
_MESSAGE_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "critical", "log", "write"}


def _lines(source: str) -> list[str]:
    """The lines of ``source`` with their ends, split at ``\\n`` only (as the tokenizer counts them)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", source)


@dataclass(frozen=True)
class Mutant:
    """One single-token change: ``line`` (1-based), ``col`` .. ``end_col`` (0-based characters) -> ``replacement``."""

    id: str
    path: str            # relative to the root, posix
    line: int
    col: int
    end_col: int
    replacement: str
    operator: str
    original: str        # the original line, without its newline
    mutated: str         # the mutated line

    def apply(self, source: str) -> str:
        lines = _lines(source)
        text = lines[self.line - 1]
        lines[self.line - 1] = text[:self.col] + self.replacement + text[self.end_col:]
        return "".join(lines)


@dataclass
class Result:
    mutant: Mutant
    status: str          # killed | timeout | survived | equivalent
    seconds: float = 0.0
    reason: str = ""     # the equivalence reason, or the tail of the failing test output
    returncode: int | None = None


# -- finding mutants ---------------------------------------------------------------------------------------------


class _Finder(ast.NodeVisitor):
    def __init__(self, source: str):
        self.lines = [line.rstrip("\r\n") for line in _lines(source)]
        self.bytes = [line.encode("utf-8") for line in self.lines]
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                       if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                                         tokenize.DEDENT, tokenize.ENDMARKER)]
        self.found: list[tuple[int, int, int, str, str]] = []   # line, col, end_col, replacement, label
        self._returns_none: list[bool] = []

    # positions: the AST counts UTF-8 bytes, tokenize counts characters
    def _char(self, line: int, byte_col: int) -> int:
        return len(self.bytes[line - 1][:byte_col].decode("utf-8", errors="replace"))

    def _start(self, node) -> tuple[int, int]:
        return node.lineno, self._char(node.lineno, node.col_offset)

    def _end(self, node) -> tuple[int, int]:
        return node.end_lineno, self._char(node.end_lineno, node.end_col_offset)

    def _gap(self, after: tuple[int, int], before: tuple[int, int]):
        """The operator tokens between two operands (parentheses left out)."""
        return [t for t in self.tokens if t.start >= after and t.end <= before and t.string not in ("(", ")")]

    def _add(self, line: int, col: int, end_col: int, replacement: str, label: str) -> None:
        if NO_MUTATE not in self.lines[line - 1]:
            self.found.append((line, col, end_col, replacement, label))

    def _add_span(self, tokens, replacement: str, label: str) -> None:
        if tokens and tokens[0].start[0] == tokens[-1].end[0]:
            self._add(tokens[0].start[0], tokens[0].start[1], tokens[-1].end[1], replacement, label)

    # -- what is never mutated
    def generic_visit(self, node):
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "type_comment"):
                continue                                          # type annotations
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def visit_JoinedStr(self, node):                              # f-strings
        pass

    def visit_Raise(self, node):                                  # error messages
        pass

    def visit_Assert(self, node):                                 # the condition, not the message
        self.visit(node.test)

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in _MESSAGE_CALLS:                            # print / logging / warnings / stream.write
                return
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        returns = node.returns
        self._returns_none.append(isinstance(returns, ast.Constant) and returns.value is None)
        try:
            self.generic_visit(node)
        finally:
            self._returns_none.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- operators
    def visit_Compare(self, node):
        prev = node.left
        for op, right in zip(node.ops, node.comparators):
            name = type(op).__name__
            new = _COMPARE_SWAP.get(name)
            if new:
                self._add_span(self._gap(self._end(prev), self._start(right)), _SYMBOL[new], f"{name}->{new}")
            prev = right
        self.generic_visit(node)

    @classmethod
    def _is_text(cls, node) -> bool:
        """Whether ``node`` builds a message: a string, an f-string, ``"sep".join(...)`` / ``"...".format(...)``,
        or a sum or conditional of those."""
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return cls._is_text(node.func.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            return cls._is_text(node.left) or cls._is_text(node.right)
        if isinstance(node, ast.IfExp):
            return cls._is_text(node.body) or cls._is_text(node.orelse)
        return False

    def visit_BinOp(self, node):
        if self._is_text(node):                                   # string building: a message, not worth mutating
            return
        name = type(node.op).__name__
        new = _BINOP_SWAP.get(name)
        if new:
            self._add_span(self._gap(self._end(node.left), self._start(node.right)), _SYMBOL[new], f"{name}->{new}")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        name = type(node.op).__name__
        new = _BINOP_SWAP.get(name)
        if new and not self._is_text(node.value):
            self._add_span(self._gap(self._end(node.target), self._start(node.value)), _SYMBOL[new] + "=",
                           f"Aug{name}->Aug{new}")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        name = type(node.op).__name__
        new = "Or" if name == "And" else "And"
        for left, right in zip(node.values, node.values[1:]):
            self._add_span(self._gap(self._end(left), self._start(right)), _SYMBOL[new], f"{name}->{new}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        line, col = self._start(node)
        if isinstance(node.op, ast.USub):
            self._add(line, col, col + 1, "", "DelUSub")
        elif isinstance(node.op, ast.Not):
            oline, ocol = self._start(node.operand)
            gap = self._gap((line, col), (oline, ocol))             # 'not' (parentheses left out)
            if oline == line and gap and gap[0].string == "not":
                end = gap[0].end[1]
                while end < len(self.lines[line - 1]) and self.lines[line - 1][end] == " ":
                    end += 1
                self._add(line, col, end, "", "DelNot")
        self.generic_visit(node)

    # -- constants, names, returns
    def visit_Constant(self, node):
        value = node.value
        if node.lineno != node.end_lineno:
            return
        line, col = self._start(node)
        _, end = self._end(node)
        if isinstance(value, bool):
            self._add(line, col, end, str(not value), f"{value}->{not value}")
        elif isinstance(value, int):
            new = 1 if value == 0 else 0 if value == 1 else value + 1
            self._add(line, col, end, str(new), f"{value}->{new}")
        elif isinstance(value, float):
            news = [value * 1.02, value + 1.0] if value != 0.0 else [1.0]
            for new in dict.fromkeys(repr(v) for v in news if v != value):
                self._add(line, col, end, new, f"{value!r}->{new}")

    def visit_Name(self, node):
        new = _MINMAX.get(node.id)
        if new and node.id in ("max", "min"):                      # the builtins (attributes and keywords below)
            line, col = self._start(node)
            self._add(line, col, col + len(node.id), new, f"{node.id}->{new}")

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and self._is_text(func.value):   # "sep".join(...), "...".format(...)
            return
        if isinstance(func, ast.Attribute):                      # torch.max(...), x.clamp_min(...), x.add_(...)
            new = _MINMAX.get(func.attr) or _METHOD_SWAP.get(func.attr)
            if new:
                line, end = self._end(func)
                self._add(line, end - len(func.attr), end, new, f"{func.attr}->{new}")
        self.generic_visit(node)

    def visit_keyword(self, node):
        new = _MINMAX.get(node.arg or "")
        if new and node.arg in ("max", "min"):                    # clamp(min=...) / clamp(max=...)
            line, col = self._start(node)
            self._add(line, col, col + len(node.arg), new, f"kw:{node.arg}->{new}")
        self.generic_visit(node)

    def visit_Return(self, node):
        value = node.value
        cheap = (value is not None and not (isinstance(value, ast.Constant) and value.value is None)
                 and value.lineno == value.end_lineno == node.lineno
                 and not (self._returns_none and self._returns_none[-1]))
        if cheap:
            line, col = self._start(value)
            _, end = self._end(value)
            self._add(line, col, end, "None", "Return->None")
        self.generic_visit(node)


def find_mutants(source: str, path: str) -> list[Mutant]:
    """Every mutant of ``source``, in file order; ``path`` (relative, posix) names them."""
    finder = _Finder(source)
    finder.visit(ast.parse(source, filename=path))
    lines = [line.rstrip("\r\n") for line in _lines(source)]
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for line, col, end_col, replacement, label in sorted(set(finder.found)):
        text = lines[line - 1]
        if text[col:end_col] == replacement:
            continue
        ident = f"{path}:{line}:{col + 1}:{label}"
        if ident in seen:
            continue
        mutant = Mutant(ident, path, line, col, end_col, replacement, label, text,
                        text[:col] + replacement + text[end_col:])
        try:
            compile(mutant.apply(source), path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue
        seen.add(ident)
        mutants.append(mutant)
    return mutants


# -- restoring files ---------------------------------------------------------------------------------------------


def _journal_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"sophia-ref-mutation-{uid}"


class Guard:
    """Holds one target's original bytes; writes mutants and puts the original back, verified."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        self.original = self.path.read_bytes()
        self.mutant: bytes | None = None
        key = hashlib.sha1(str(self.path).encode()).hexdigest()[:16]
        self.journal = _journal_dir() / key

    def _clear_pyc(self) -> None:
        cache = self.path.parent / "__pycache__"
        for pyc in cache.glob(f"{self.path.stem}.*.pyc"):
            try:
                pyc.unlink()
            except OSError:
                pass

    def write(self, data: bytes) -> None:
        if self.path.read_bytes() != self.original:
            raise RuntimeError(f"{self.path} changed during the run (edited by someone else?): stopping")
        self.journal.mkdir(parents=True, exist_ok=True)
        (self.journal / "path").write_text(str(self.path))
        (self.journal / "original").write_bytes(self.original)
        (self.journal / "mutant").write_bytes(data)
        (self.journal / "pid").write_text(str(os.getpid()))
        self.mutant = data
        self.path.write_bytes(data)
        self._clear_pyc()   # a same-size mutant written within the same second could reuse the original's .pyc

    def restore(self) -> None:
        if self.mutant is None:
            return
        current = self.path.read_bytes()
        if current not in (self.mutant, self.original):
            self.mutant = None
            raise RuntimeError(f"{self.path} was rewritten by someone else while a mutant was in place: "
                               f"left as it is; the original is in {self.journal / 'original'}")
        for _ in range(3):
            self.path.write_bytes(self.original)
            if self.path.read_bytes() == self.original:
                break
        else:
            raise RuntimeError(f"could not restore {self.path}; the original is in {self.journal / 'original'}")
        self._clear_pyc()
        self.mutant = None
        for name in ("mutant", "pid", "path", "original"):
            try:
                (self.journal / name).unlink()
            except OSError:
                pass
        try:
            self.journal.rmdir()
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(force: bool = False, out=sys.stderr) -> int:
    """Repair files left mutated by a run that was killed outright. Returns the number of problems left."""
    problems = 0
    root = _journal_dir()
    if not root.is_dir():
        return 0
    for entry in sorted(root.iterdir()):
        try:
            path = Path((entry / "path").read_text())
            original = (entry / "original").read_bytes()
            mutant = (entry / "mutant").read_bytes()
            pid = int((entry / "pid").read_text() or 0)
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and _pid_alive(pid):
            print(f"mutation: another run (pid {pid}) has a mutant of {path} in place", file=out)
            problems += 1
            continue
        current = path.read_bytes() if path.exists() else None
        if current is None:
            print(f"mutation: {path} (mutated by an interrupted run) no longer exists; forgetting it", file=out)
            for name in ("mutant", "pid", "path", "original"):
                (entry / name).unlink(missing_ok=True)
            entry.rmdir()
        elif current == original or current == mutant or force:
            if current != original:
                path.write_bytes(original)
                print(f"mutation: restored {path} left mutated by an interrupted run", file=out)
            for name in ("mutant", "pid", "path", "original"):
                (entry / name).unlink(missing_ok=True)
            entry.rmdir()
        else:
            print(f"mutation: {path} differs from both the original and the mutant of an interrupted run; "
                  f"the original is in {entry / 'original'} (use --restore to put it back)", file=out)
            problems += 1
    return problems


class _Terminated(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


# -- running tests -----------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CI="true", PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_tests(root: Path, tests: list[str], timeout: float | None) -> tuple[str, int | None, float, str]:
    """``(status, returncode, seconds, output tail)``; status is passed | failed | timeout."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, *PYTEST, *tests], cwd=root, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "passed" if rc in (0, 5) else "failed"      # 5: nothing collected, so nothing failed
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait()
        log.seek(0)
        tail = log.read().decode("utf-8", errors="replace").splitlines()[-15:]
    return status, rc, time.monotonic() - start, "\n".join(tail)


# -- the command -------------------------------------------------------------------------------------------------


def read_equivalents(path: Path) -> dict[str, str]:
    """``ID  # reason`` per line; blank lines and lines starting with ``#`` are ignored."""
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    for raw in path.read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        ident, _, reason = text.partition("#")
        found[ident.strip()] = reason.strip() or "(no reason given)"
    return found


def _rel(root: Path, target: str) -> str:
    path = Path(target)
    path = path if path.is_absolute() else (root / path)
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _tests_for(root: Path, targets: list[str], specs: list[str]) -> dict[str, list[str]]:
    """The test files of each target: ``--tests TARGET=T1,T2`` for one target, ``--tests T1,T2`` for all."""
    mapping: dict[str, list[str]] = {t: list(DEFAULT_TESTS.get(t, ())) for t in targets}
    overridden: set[str] = set()
    for spec in specs:
        target, sep, files = spec.rpartition("=") if "=" in spec else ("", "", spec)
        names = [f for f in files.replace(",", " ").split() if f]
        chosen = [_rel(root, target)] if sep else targets
        for t in chosen:
            if t not in mapping:
                raise SystemExit(f"mutation: --tests names {t}, which is not a target")
            if t not in overridden:
                mapping[t] = []
                overridden.add(t)
            mapping[t] += names
    resolved: dict[str, list[str]] = {}
    for t, patterns in mapping.items():
        files: list[str] = []
        for pattern in patterns:
            hits = sorted(glob.glob(pattern, root_dir=root)) if any(c in pattern for c in "*?[") else (
                [pattern] if (root / pattern).exists() else [])
            files += [h for h in hits if h not in files]
        if not files:
            raise SystemExit(f"mutation: no test files for {t}: give --tests {t}=tests/test_x.py")
        resolved[t] = files
    return resolved


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``sophia-ref mutation``, added to ``parser``."""
    parser.add_argument("--target", action="append", metavar="FILE",
                        help="a file to mutate, relative to --root (repeatable; default: "
                             + ", ".join(DEFAULT_TARGETS) + ")")
    parser.add_argument("--tests", action="append", default=[], metavar="[TARGET=]FILES",
                        help="test files (comma-separated, globs allowed) for TARGET, or for every target without "
                             "'TARGET='; repeatable; replaces the default mapping for that target")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit, running nothing")
    parser.add_argument("--line", type=int, action="append", metavar="N", help="only the mutants on line N (repeatable)")
    parser.add_argument("--only", action="append", metavar="ID", help="only the mutant with this ID (repeatable)")
    parser.add_argument("--max", type=int, metavar="N", help="run a deterministic sample of N mutants (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max sample (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once; only 1 (mutants share the file)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds per mutant before it counts as killed by timeout "
                             "(default: 3 x the unmutated run + 10)")
    parser.add_argument("--equivalent", metavar="FILE",
                        help=f"mutant IDs judged equivalent, one per line with '# reason' (default: {DEFAULT_EQUIVALENTS})")
    parser.add_argument("--json", metavar="PATH", help="write every result as JSON to PATH")
    parser.add_argument("--root", default=str(PROJECT_ROOT),
                        help="project root: where the tests run and relative paths start (default: this checkout)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated test run (then give --timeout)")
    parser.add_argument("--fail-under", type=float, metavar="SCORE",
                        help="exit with status 1 when the score (0..1) is below SCORE")
    parser.add_argument("--restore", action="store_true",
                        help="put back files left mutated by a run that was killed, then exit")
    return parser


def build_parser(prog: str = "sophia-ref mutation") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Mutation testing of the reference: mutate one token of one line at a time, run the "
                               "covering tests, list the mutants no test kills (docs/MUTATION.md).")
    return add_arguments(parser)


def _select(mutants: list[Mutant], args) -> list[Mutant]:
    if args.only:
        wanted = set(args.only)
        unknown = wanted - {m.id for m in mutants}
        if unknown:
            raise SystemExit(f"mutation: no such mutant: {', '.join(sorted(unknown))} (see --list)")
        mutants = [m for m in mutants if m.id in wanted]
    if args.line:
        mutants = [m for m in mutants if m.line in set(args.line)]
    if args.max is not None and args.max < len(mutants):
        chosen = set(random.Random(args.seed).sample(range(len(mutants)), max(args.max, 0)))
        mutants = [m for i, m in enumerate(mutants) if i in chosen]
    return mutants


def _summary(results: list[Result]) -> dict[str, int]:
    count = {s: sum(r.status == s for r in results) for s in ("killed", "timeout", "survived", "equivalent")}
    count["total"] = len(results)
    count["killed_all"] = count["killed"] + count["timeout"]
    return count


def _score(count: dict[str, int]) -> float | None:
    denominator = count["total"] - count["equivalent"]
    return count["killed_all"] / denominator if denominator else None


def _report(results: list[Result], out) -> None:
    count = _summary(results)
    survivors = [r for r in results if r.status == "survived"]
    equivalents = [r for r in results if r.status == "equivalent"]
    if survivors:
        print(f"Survivors ({len(survivors)}):", file=out)
        width = max(len(r.mutant.id) for r in survivors)
        for r in survivors:
            print(f"  {r.mutant.id:<{width}}  - {r.mutant.original.strip()}", file=out)
            print(f"  {'':<{width}}  + {r.mutant.mutated.strip()}", file=out)
    if equivalents:
        print(f"Equivalent, not counted ({len(equivalents)}):", file=out)
        for r in equivalents:
            print(f"  {r.mutant.id}  # {r.reason}", file=out)
    score = _score(count)
    shown = "n/a" if score is None else f"{score:.1%}"
    print(f"Score: {count['killed_all']} killed ({count['timeout']} by timeout) / "
          f"({count['total']} total - {count['equivalent']} equivalent) = {shown}; "
          f"{count['survived']} survived", file=out)


def run(args: argparse.Namespace) -> int:
    """Run ``sophia-ref mutation`` with parsed ``args``; returns the exit status."""
    out, err = sys.stdout, sys.stderr
    if args.jobs != 1:
        print("mutation: --jobs must be 1: every mutant of a file is written to that same file", file=err)
        return 2
    if args.restore:
        return 1 if recover(force=True) else 0
    root = Path(args.root).resolve()
    targets = [_rel(root, t) for t in (args.target or DEFAULT_TARGETS)]
    for t in targets:
        if not (root / t).is_file():
            print(f"mutation: no such target: {t}", file=err)
            return 2
    mutants: list[Mutant] = []
    originals: dict[str, bytes] = {}
    for t in targets:
        originals[t] = (root / t).read_bytes()
        mutants += find_mutants(originals[t].decode("utf-8"), t)
    try:
        chosen = _select(mutants, args)
    except SystemExit as exc:
        print(exc, file=err)
        return 2
    equivalent_file = Path(args.equivalent) if args.equivalent else root / DEFAULT_EQUIVALENTS
    if args.equivalent and not equivalent_file.is_file():
        print(f"mutation: no such equivalents file: {equivalent_file}", file=err)
        return 2
    equivalents = read_equivalents(equivalent_file)

    if args.list:
        for m in chosen:
            mark = f"  [equivalent: {equivalents[m.id]}]" if m.id in equivalents else ""
            print(f"{m.id}{mark}\n    - {m.original.strip()}\n    + {m.mutated.strip()}", file=out)
        for t in targets:
            print(f"{t}: {sum(m.path == t for m in chosen)} mutants", file=err)
        return 0

    try:
        tests = _tests_for(root, sorted({m.path for m in chosen}), args.tests)
    except SystemExit as exc:
        print(exc, file=err)
        return 2
    if recover():
        print("mutation: stopping: fix the files above first (or --restore)", file=err)
        return 2

    timeouts: dict[str, float] = {}
    baselines: dict[str, float] = {}
    for t in tests:
        if args.no_baseline:
            if args.timeout is None:
                print("mutation: --no-baseline needs --timeout", file=err)
                return 2
            continue
        print(f"mutation: unmutated run of {t}'s tests: {' '.join(tests[t])}", file=err)
        status, rc, seconds, tail = run_tests(root, tests[t], None)
        if status != "passed":
            print(f"mutation: the tests of {t} fail without any mutant (exit {rc}); fix them first:\n{tail}", file=err)
            return 2
        baselines[t] = seconds
        print(f"mutation:   passed in {seconds:.1f} s", file=err)
    for t in tests:
        timeouts[t] = args.timeout if args.timeout is not None else 3 * baselines[t] + 10

    results: list[Result] = []
    interrupted = False
    previous = signal.getsignal(signal.SIGTERM)
    in_main = True
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                                           # not the main thread
        in_main = False
    guards: dict[str, Guard] = {}
    try:
        for i, m in enumerate(chosen, 1):
            if m.id in equivalents:
                results.append(Result(m, "equivalent", reason=equivalents[m.id]))
                print(f"[{i}/{len(chosen)}] {m.id}: equivalent, not run", file=err)
                continue
            guard = guards.get(m.path) or guards.setdefault(m.path, Guard(root / m.path))
            if guard.original != originals[m.path]:
                raise RuntimeError(f"{m.path} changed since its mutants were listed (edited by someone else?): stopping")
            source = guard.original.decode("utf-8")
            try:
                guard.write(m.apply(source).encode("utf-8"))
                status, rc, seconds, tail = run_tests(root, tests[m.path], timeouts[m.path])
            finally:
                guard.restore()
            status = {"passed": "survived", "failed": "killed"}.get(status, status)
            results.append(Result(m, status, seconds, "" if status == "survived" else tail, rc))
            count = _summary(results)
            score = _score(count)
            print(f"[{i}/{len(chosen)}] {m.id}: {status} ({seconds:.1f} s); score "
                  f"{count['killed_all']}/{count['total'] - count['equivalent']}"
                  + ("" if score is None else f" = {score:.0%}"), file=err)
    except (KeyboardInterrupt, _Terminated):
        interrupted = True
        print("mutation: interrupted; the files are restored; partial results follow", file=err)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        for guard in guards.values():
            guard.restore()
            if guard.path.read_bytes() != guard.original:
                raise RuntimeError(f"{guard.path} is not the original after the run")

    _report(results, out)
    count = _summary(results)
    if args.json:
        data = dict(root=str(root), targets=targets, tests=tests, baseline_seconds=baselines,
                    timeout_seconds=timeouts, interrupted=interrupted, score=_score(count), **count,
                    mutants=[dict(asdict(r.mutant), status=r.status, seconds=round(r.seconds, 3),
                                  returncode=r.returncode, reason=r.reason) for r in results])
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if interrupted:
        return 130
    score = _score(count)
    if args.fail_under is not None and score is not None and score < args.fail_under:
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
