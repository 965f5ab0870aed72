"""Environment nodes of YAML specs: the built-in kinds, what each reads and gives, and how each runs.

- `sandbox.run`: code (stdin) → stdout, stderr, status, exit_code, ok
- `code.tests`: code, then tests + entry_point (HumanEval; prompt: the stub) or cases (stdin/stdout records)
  → passed, failed (counts), first_failure, all_passed, status
- `math.verify`: answer, reference → correct, answer
- `triplet.validate`: program, input → valid, output, deterministic, error
- `triplet.judge` (params.mode: deduction, abduction or induction): program, output, predicted, cases
  → score, correct, error
- `python` (target: `module:function`): the function's parameters → the keys of the dict it returns (any
  other value: `value`)

Model text only ever runs inside the sandbox: on the host, code is parsed with `ast` and nothing else. A
`python` target is trusted user code that runs on the host; model text reaches it only as data (arguments).
A failure of the infrastructure (the sandbox could not run, math-verify timed out) is a typed error whose kind
is `infrastructure`: the node's outputs are then unknown, never a failure the model earned.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import inspect
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolegraph.environments.math_verify import verify_within
from rolegraph.environments.sandbox.base import ExecResult, Limits, Status
from rolegraph.errors import ConfigError, SandboxError

SandboxProvider = Callable[[], Awaitable[Any]]
"""Returns the SandboxPool env nodes run code in (started on first use by whoever owns it)."""
SANDBOX_HINT = "check the backend with `rolegraph sandbox doctor`"


@dataclass(frozen=True)
class EnvCall:
    """One environment call: the node's mapped inputs, its static `params`, and where sandboxes come from."""

    args: dict[str, Any]
    params: dict[str, Any]
    sandbox: SandboxProvider
    function: Callable[..., Any] | None = None


@dataclass(frozen=True)
class EnvKind:
    """A built-in environment kind: its inputs and outputs (for validation and drawing) and its runner."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    outputs: tuple[str, ...]
    primary: str
    """The output a string `output:` mapping takes."""
    run: Callable[[EnvCall], Awaitable[dict[str, Any]]]
    description: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.required + self.optional


# --- helpers ----------------------------------------------------------------------------------------------
def extract_code(text: Any) -> str:
    """The last fenced code block of a model's text (an unclosed fence counts), else the whole text."""
    from rolegraph.trainers.code_rollouts import extract_code as extract

    return extract(str(text or ""))


def _limits(params: dict[str, Any], default: Limits) -> Limits:
    timeout = params.get("timeout_s")
    return default if timeout is None else default.with_(timeout_s=float(timeout))


def _checked(result: ExecResult) -> ExecResult:
    """The result, unless the sandbox itself failed: that is an infrastructure error, not the program's."""
    if result.status == Status.SANDBOX_ERROR:
        raise SandboxError(f"the sandbox could not run the code: {result.error}", SANDBOX_HINT)
    return result


class StrictPool:
    """A SandboxPool whose executions raise SandboxError when the sandbox itself failed, so that the checks
    built on it (code tests, triplets) never turn an infrastructure failure into a wrong answer."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.limits = pool.limits

    def execute(self, job: Any) -> ExecResult:
        return _checked(self.pool.execute(job))

    def map(self, jobs: Any, **options: Any) -> list[ExecResult]:
        return [_checked(result) for result in self.pool.map(jobs, **options)]

    async def arun(self, code: str, **options: Any) -> ExecResult:
        return _checked(await self.pool.arun(code, **options))


async def _pool(call: EnvCall) -> Any:
    return StrictPool(await call.sandbox())


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


# --- sandbox.run ------------------------------------------------------------------------------------------
async def _sandbox_run(call: EnvCall) -> dict[str, Any]:
    pool = await _pool(call)
    code = extract_code(call.args["code"])
    stdin = call.args.get("stdin")
    limits = _limits(call.params, pool.limits)
    result = await pool.arun(code, stdin=None if stdin is None else str(stdin), limits=limits)
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "status": str(result.status),
        "exit_code": result.exit_code,
        "ok": result.ok and result.exit_code in (0, None),
    }


# --- code.tests -------------------------------------------------------------------------------------------
def counting_tests(tests: str) -> str | None:
    """HumanEval tests whose `check(candidate)` runs every `assert` and then fails naming the first failure.

    Parsed and rewritten with `ast` on the host (the tests are data, never run here); None when the tests do
    not define `check` as a list of plain statements (they then run as they are).
    """
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not any(isinstance(n, ast.Assert) for n in check.body):
        return None
    body: list[ast.stmt] = ast.parse("__rg = [0, 0, None]").body
    for statement in check.body:
        if not isinstance(statement, ast.Assert):
            body.append(statement)
            continue
        label = (ast.get_source_segment(tests, statement.test) or ast.unparse(statement.test))[:300]
        wrapped = ast.parse(
            "try:\n    assert True\nexcept Exception as __e:\n    __rg[1] += 1\n"
            f"    __rg[2] = __rg[2] or ({label!r} + ' -> ' + type(__e).__name__"
            " + (': ' + str(__e))[:200] * bool(str(__e)))\n"
            "else:\n    __rg[0] += 1\n"
        ).body[0]
        assert isinstance(wrapped, ast.Try)
        wrapped.body[0] = ast.Assert(test=statement.test, msg=None)
        body.append(wrapped)
    body += ast.parse(
        "print(f'rolegraph-tests: passed={__rg[0]} failed={__rg[1]}', file=__import__('sys').stderr)\n"
        "if __rg[1]:\n    raise AssertionError(__rg[2])\n"
    ).body
    check.body = body
    return ast.unparse(ast.fix_missing_locations(tree))


def _counts(stderr: str) -> tuple[int, int] | None:
    for line in reversed(stderr.splitlines()):
        if line.startswith("rolegraph-tests: passed="):
            try:
                passed, failed = (int(part.split("=")[1]) for part in line.split()[1:3])
            except (ValueError, IndexError):
                return None
            return passed, failed
    return None


async def _code_tests(call: EnvCall) -> dict[str, Any]:
    from rolegraph.environments.code_tests import DEFAULT_LIMITS, CodeTester, StdioCase, UnitTestCase
    from rolegraph.trainers.code_rollouts import CodeSpec, program_for

    pool = await _pool(call)
    tester = CodeTester(pool, limits=_limits(call.params, DEFAULT_LIMITS))
    args = call.args
    cases = args.get("cases")
    if cases is not None:
        if not isinstance(cases, list) or not all(isinstance(c, dict) and "input" in c for c in cases):
            raise ConfigError(
                "code.tests: `cases` must be a list of {input, output} records", "fix the inputs data"
            )
        stdio = tuple((str(c["input"]), str(c.get("output", ""))) for c in cases)
        program = program_for(CodeSpec(stdio=stdio), str(args["code"] or ""))
        if program is None:
            return _not_run(len(stdio))
        results = await asyncio.to_thread(tester.run_stdio, program, [StdioCase(i, o) for i, o in stdio])
        failures = [(i, r) for i, r in enumerate(results) if not r.passed]
        first = None
        if failures:
            index, result = failures[0]
            got = (result.detail.stdout if result.detail else "").strip()[:200]
            stdin, expected = (text.strip()[:200] for text in stdio[index])
            first = f"case {index + 1}: {result.error or 'wrong answer'} "
            first += f"(input {stdin!r}, expected {expected!r}, got {got!r})"
        passed = len(results) - len(failures)
        return {
            "passed": passed,
            "failed": len(failures),
            "first_failure": first,
            "all_passed": not failures,
            "status": str(results[failures[0][0]].status if failures else Status.OK),
        }
    tests, entry_point = args.get("tests"), args.get("entry_point")
    if not tests or not entry_point:
        raise ConfigError(
            "code.tests needs `tests` and `entry_point` (HumanEval) or `cases` (stdin/stdout)",
            "map those inputs in the node",
        )
    spec = CodeSpec(tests=str(tests), entry_point=str(entry_point), stub=str(args.get("prompt") or ""))
    program = program_for(spec, str(args["code"] or ""))
    if program is None:
        return _not_run(1)
    counting = counting_tests(str(tests))
    result = await tester.arun(UnitTestCase(program, counting or str(tests), str(entry_point)))
    stderr = result.detail.stderr if result.detail is not None else ""
    counts = _counts(stderr) if counting else None
    if result.passed:
        passed, failed = counts if counts else (1, 0)
        return {
            "passed": passed,
            "failed": 0 if counts is None else failed,
            "first_failure": None,
            "all_passed": True,
            "status": str(result.status),
        }
    passed, failed = counts if counts and counts[1] else (0, 1)
    return {
        "passed": passed,
        "failed": failed,
        "first_failure": _last_line(stderr) or result.error or str(result.status),
        "all_passed": False,
        "status": str(result.status),
    }


def _not_run(count: int) -> dict[str, Any]:
    return {
        "passed": 0,
        "failed": count,
        "first_failure": "the code is not valid Python (or defines nothing to test)",
        "all_passed": False,
        "status": "syntax_error",
    }


# --- math.verify ------------------------------------------------------------------------------------------
async def _math_verify(call: EnvCall) -> dict[str, Any]:
    from rolegraph.environments.math_verify import verify

    answer, reference = call.args["answer"], call.args["reference"]
    answer = None if answer is None else str(answer)
    correct = await verify_within(lambda: verify(answer, None if reference is None else str(reference)))
    return {"correct": bool(correct), "answer": answer}


# --- triplets ---------------------------------------------------------------------------------------------
async def _triplet_validate(call: EnvCall) -> dict[str, Any]:
    from rolegraph.environments.triplets import TripletRunner

    runner = TripletRunner(await _pool(call))
    code = extract_code(call.args["program"])
    validation = await runner.avalidate(code, str(call.args["input"] or ""))
    return {
        "valid": validation.valid,
        "output": validation.output,
        "deterministic": validation.deterministic,
        "error": validation.error,
    }


TRIPLET_MODES = ("deduction", "abduction", "induction")


async def _triplet_judge(call: EnvCall) -> dict[str, Any]:
    from rolegraph.environments.triplets import TripletRunner

    mode = call.params.get("mode") or call.args.get("mode")
    if mode not in TRIPLET_MODES:
        raise ConfigError(
            f"triplet.judge: unknown mode {mode!r}", f"set params.mode to one of {TRIPLET_MODES}"
        )
    runner = TripletRunner(await _pool(call))
    args = call.args
    predicted = str(args.get("predicted") or "")
    if mode == "deduction":
        judgement = runner.judge_deduction(str(args.get("output") or ""), predicted)
    elif mode == "abduction":
        code = extract_code(args.get("program"))
        judgement = await runner.ajudge_abduction(code, str(args.get("output") or ""), predicted)
    else:
        cases = [(str(c["input"]), str(c["output"])) for c in args.get("cases") or []]
        judgement = await runner.ajudge_induction(extract_code(predicted), cases)
    return {"score": judgement.score, "correct": judgement.correct, "error": judgement.error}


# --- python -----------------------------------------------------------------------------------------------
_loaded: dict[Path, Any] = {}
_load_lock = threading.Lock()


def resolve_target(target: str, base: Path | None) -> Callable[..., Any]:
    """The function `module:function` (or `file.py:function`, relative to the spec) names.

    Raises ConfigError with what failed: the format, the import, or the attribute.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"python target '{target}' is not `module:function`", "write e.g. mypkg.checks:score"
        )
    try:
        if module_name.endswith(".py"):
            module = _load_file((base or Path.cwd()) / module_name)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"python target '{target}' does not import ({type(exc).__name__}: {exc})",
            "install the package or fix the module path",
        ) from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise ConfigError(
            f"python target '{target}': {module_name} has no function '{attribute}'", "fix the function name"
        )
    return function


def _load_file(path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"python target file {path} does not exist", "fix the path (relative to the spec)")
    with _load_lock:
        if path not in _loaded:
            name = f"rolegraph_spec_env_{abs(hash(str(path)))}_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"python target file {path} cannot be loaded", "name a .py file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            _loaded[path] = module
        return _loaded[path]


def signature_problem(function: Callable[..., Any], args: list[str]) -> str | None:
    """Why `function(**{a: ... for a in args})` could not be called, or None."""
    try:
        inspect.signature(function).bind(**dict.fromkeys(args))
    except TypeError as exc:
        return str(exc)
    except ValueError:  # no signature (a builtin): let the call decide
        return None
    return None


async def _python(call: EnvCall) -> dict[str, Any]:
    assert call.function is not None
    kwargs = {**call.params, **call.args}
    if inspect.iscoroutinefunction(call.function):
        value = await call.function(**kwargs)
    else:
        value = await asyncio.to_thread(call.function, **kwargs)
    return dict(value) if isinstance(value, dict) else {"value": value}


KINDS: dict[str, EnvKind] = {
    kind.name: kind
    for kind in (
        EnvKind(
            "sandbox.run",
            ("code",),
            ("stdin",),
            ("stdout", "stderr", "status", "exit_code", "ok"),
            "stdout",
            _sandbox_run,
            "runs code in the sandbox",
        ),
        EnvKind(
            "code.tests",
            ("code",),
            ("tests", "entry_point", "prompt", "cases"),
            ("passed", "failed", "first_failure", "all_passed", "status"),
            "all_passed",
            _code_tests,
            "runs HumanEval or stdin/stdout tests in the sandbox",
        ),
        EnvKind(
            "math.verify",
            ("answer", "reference"),
            (),
            ("correct", "answer"),
            "correct",
            _math_verify,
            "checks an answer against a reference with math-verify",
        ),
        EnvKind(
            "triplet.validate",
            ("program", "input"),
            (),
            ("valid", "output", "deterministic", "error"),
            "valid",
            _triplet_validate,
            "validates an Absolute Zero (program, input) proposal in the sandbox",
        ),
        EnvKind(
            "triplet.judge",
            (),
            ("mode", "program", "input", "output", "predicted", "cases"),
            ("score", "correct", "error"),
            "correct",
            _triplet_judge,
            "judges a deduction, abduction or induction answer (Absolute Zero)",
        ),
        EnvKind("python", (), (), (), "value", _python, "calls a trusted Python function on the host"),
    )
}
"""Built-in environment kinds by name."""


# --- the sandbox pool a spec's env nodes share -------------------------------------------------------------
class LazySandbox:
    """Starts a SandboxPool on first use (in a thread) and closes it when collected or at exit."""

    def __init__(self, backend: str = "auto", size: int = 2) -> None:
        self.backend = backend
        self.size = size
        self._pool: Any = None
        self._lock = threading.Lock()

    async def __call__(self) -> Any:
        if self._pool is None:
            await asyncio.to_thread(self._start)
        return self._pool

    def _start(self) -> None:
        with self._lock:
            if self._pool is None:
                from rolegraph.environments.sandbox.pool import SandboxPool

                pool = SandboxPool(self.backend, size=self.size)
                weakref.finalize(self, pool.close)
                self._pool = pool
