"""Absolute Zero task triplets (program p, input i, output o), run safely.

On the host, programs and inputs are only parsed with `ast`; the input is never spliced into code. Inside the
sandbox the worker parses `f(<input>)` again, checks it is exactly one call, evaluates it, and returns repr()
of a value made only of plain literal types. The host literal-parses that repr and compares values *with their
types* (1 != 1.0 != True), so an object with a custom `__eq__` or `__repr__` can never score.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rolegraph.environments.policy import DEFAULT_POLICY, Policy
from rolegraph.environments.pyparse import literal_eval, parse_expression, parse_module
from rolegraph.environments.sandbox.base import ExecResult, Limits, Status
from rolegraph.environments.sandbox.pool import Job, SandboxPool

FUNC = "f"
DEFAULT_LIMITS = Limits(timeout_s=5.0, memory_mb=512, max_output_bytes=200_000, keep_output_bytes=4_000)


# --------------------------------------------------------------------------------------- host-side parsing


def check_program(code: str, policy: Policy = DEFAULT_POLICY, func: str = FUNC) -> str | None:
    """None when the program parses, defines `func` at top level and obeys the policy; else why not."""
    try:
        tree = parse_module(code)
    except (SyntaxError, ValueError) as exc:
        return f"program does not parse: {exc}"
    defines = any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == func for n in tree.body)
    if not defines:
        return f"program does not define {func}()"
    violations = policy.violations(tree)
    return f"program {', '.join(violations)}" if violations else None


def check_input(text: str, policy: Policy = DEFAULT_POLICY, func: str = FUNC) -> str | None:
    """None when `text` is exactly an argument list for `func(...)`; else why not.

    `f(<text>)` must parse to one Call of `f` spanning the whole source, so text that closes the call and adds
    code (`None) if False else (True`, `1)(2`, `1) # `) is rejected.
    """
    source = f"{func}({text})"
    try:
        tree = parse_expression(source)
    except (SyntaxError, ValueError) as exc:
        return f"input is not an argument list: {exc.__class__.__name__}"
    call = tree.body
    lines = source.split("\n")
    end = (len(lines), len(lines[-1].encode("utf-8")))
    if (
        not isinstance(call, ast.Call)
        or not isinstance(call.func, ast.Name)
        or call.func.id != func
        or (call.lineno, call.col_offset) != (1, 0)
        or (call.end_lineno, call.end_col_offset) != end
    ):
        return "input is not a plain argument list (it escapes the call expression)"
    violations = policy.violations(ast.Module(body=[ast.Expr(a) for a in call.args], type_ignores=[]))
    violations += policy.violations(
        ast.Module(body=[ast.Expr(k.value) for k in call.keywords], type_ignores=[])
    )
    return f"input {', '.join(sorted(set(violations)))}" if violations else None


def parse_literal(text: str | None) -> tuple[bool, Any]:
    """(True, value) when `text` is a Python literal, else (False, None). Safe on the host: no evaluation."""
    if text is None:
        return False, None
    try:
        return True, literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def typed_key(value: Any) -> Any:
    """A hashable form of a literal that keeps types apart: 1, 1.0 and True give three different keys."""
    kind = type(value)
    if kind in (list, tuple):
        return (kind.__name__, tuple(typed_key(v) for v in value))
    if kind in (set, frozenset):
        return (kind.__name__, frozenset(typed_key(v) for v in value))
    if kind is dict:
        return ("dict", frozenset((typed_key(k), typed_key(v)) for k, v in value.items()))
    if kind in (type(None), bool, int, float, complex, str, bytes):
        return (kind.__name__, value)
    raise TypeError(f"not a plain literal: {kind.__name__}")


def literals_equal(left: str | None, right: str | None) -> bool:
    """Both texts are literals with equal values and equal types all the way down."""
    ok_left, value_left = parse_literal(left)
    ok_right, value_right = parse_literal(right)
    if not (ok_left and ok_right):
        return False
    try:
        return bool(typed_key(value_left) == typed_key(value_right))
    except (TypeError, RecursionError):
        return False


AZR_POLICY = Policy(
    banned_modules=DEFAULT_POLICY.banned_modules
    | {"builtins", "gc", "ctypes", "inspect", "types", "io", "pathlib", "signal", "resource", "tempfile"},
    banned_names=DEFAULT_POLICY.banned_names
    | {
        "__builtins__",
        "globals",
        "locals",
        "vars",
        "getattr",
        "setattr",
        "delattr",
        "__loader__",
        "__spec__",
    },
)
"""The policy for self-proposed tasks (Absolute Zero): also no reflection a program could reach a banned
module or builtin through (`getattr(__builtins__, '__imp' + 'ort__')`), whatever the strings it builds."""


def module_patches(code: str) -> list[str]:
    """Assignments to (or deletions of) attributes of modules the program imports, e.g. `math.floor = g`.

    Each run is a fresh fork, so a patch cannot reach a later run; a task built on one is still not a task
    about its own program, so proposals that patch are invalid."""
    try:
        tree = parse_module(code)
    except (SyntaxError, ValueError):
        return []
    modules = {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    targets: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.Delete):
            targets += node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets.append(node.target)
    found = []
    for target in targets:
        base = target
        while isinstance(base, ast.Attribute | ast.Subscript):
            base = base.value
        if target is not base and isinstance(base, ast.Name) and base.id in modules:
            found.append(f"patches module {base.id}")
    return sorted(set(found))


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Validation:
    """A proposed (program, input): whether it is a valid task, and the output it produces."""

    valid: bool
    output: str | None = None
    deterministic: bool = False
    error: str | None = None
    infrastructure: bool = False
    """The sandbox itself failed: nothing is known about the proposal (its reward is None, not a penalty)."""


@dataclass
class Judgement:
    """A solver answer's score (0 or 1; induction: the fraction of held-out cases solved)."""

    score: float
    correct: bool
    error: str | None = None
    outputs: list[str | None] | None = None
    infrastructure: bool = False
    """The sandbox itself failed: the score says nothing about the answer (its reward is None, not 0)."""


class TripletRunner:
    """Validate proposals and judge deduction / abduction / induction answers on a sandbox pool."""

    def __init__(
        self,
        pool: SandboxPool,
        *,
        policy: Policy = DEFAULT_POLICY,
        limits: Limits = DEFAULT_LIMITS,
        determinism_runs: int = 2,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.limits = limits
        self.determinism_runs = max(1, determinism_runs)

    def _call_job(self, code: str, input_text: str, *, perturb: bool = False) -> Job:
        extra = {"perturb": True} if perturb else {}
        return Job(op="call", code=code, input=input_text, func=FUNC, limits=self.limits, extra=extra)

    # ----------------------------------------------------------------------------------------- proposals

    def validate(self, code: str, input_text: str) -> Validation:
        return self.validate_many([(code, input_text)])[0]

    async def avalidate(self, code: str, input_text: str) -> Validation:
        return await asyncio.to_thread(self.validate, code, input_text)

    def validate_many(
        self,
        items: Sequence[tuple[str, str]],
        *,
        width: int | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Validation]:
        """Validate many (program, input) pairs; the batch's sandbox runs go through the pool in parallel."""
        validations: list[Validation | None] = [None] * len(items)
        jobs: list[Job] = []
        owners: list[int] = []
        for index, (code, input_text) in enumerate(items):
            error = check_program(code, self.policy) or check_input(input_text, self.policy)
            if error:
                validations[index] = Validation(valid=False, error=error)
                if on_done:
                    on_done(index)
                continue
            for run in range(self.determinism_runs):
                # Fresh forks of one fork server are alike down to memory addresses; the later runs shift
                # them, or output showing id() or a default repr would pass as deterministic.
                jobs.append(self._call_job(code, input_text, perturb=run > 0))
                owners.append(index)
        pending = {i: self.determinism_runs for i in set(owners)}

        def progress(job_index: int, _result: ExecResult) -> None:
            owner = owners[job_index]
            pending[owner] -= 1
            if pending[owner] == 0 and on_done:
                on_done(owner)

        results = self.pool.map(jobs, width=width, on_done=progress)
        grouped: dict[int, list[ExecResult]] = {}
        for owner, result in zip(owners, results, strict=True):
            grouped.setdefault(owner, []).append(result)
        for owner, runs in grouped.items():
            validations[owner] = _validation_from_runs(runs)
        return [v if v is not None else Validation(valid=False, error="not run") for v in validations]

    async def avalidate_many(self, items: Sequence[tuple[str, str]]) -> list[Validation]:
        return await asyncio.to_thread(self.validate_many, items)

    # ------------------------------------------------------------------------------------------- judging

    def judge_deduction(self, gold_output: str, predicted_output: str) -> Judgement:
        """Deduction: the predicted output must equal the gold output as a typed literal."""
        ok, _ = parse_literal(predicted_output)
        if not ok:
            return Judgement(0.0, False, "predicted output is not a literal")
        correct = literals_equal(gold_output, predicted_output)
        return Judgement(float(correct), correct)

    def judge_abduction(self, code: str, gold_output: str, predicted_input: str) -> Judgement:
        """Abduction: f(predicted_input) is run in the sandbox and must give the gold output."""
        error = check_input(predicted_input, self.policy)
        if error:
            return Judgement(0.0, False, error)
        result = self.pool.execute(self._call_job(code, predicted_input))
        if not result.ok:
            failed = result.status == Status.SANDBOX_ERROR
            return Judgement(0.0, False, result.error or str(result.status), [None], infrastructure=failed)
        correct = literals_equal(gold_output, result.value)
        return Judgement(float(correct), correct, None, [result.value])

    def judge_induction(self, predicted_code: str, cases: Sequence[tuple[str, str]]) -> Judgement:
        """Induction: the predicted program is run on held-out inputs; score is the fraction reproduced."""
        if not cases:
            return Judgement(0.0, False, "no held-out cases")
        error = check_program(predicted_code, self.policy)
        if error:
            return Judgement(0.0, False, error)
        bad_inputs = [check_input(i, self.policy) for i, _ in cases]
        jobs = [self._call_job(predicted_code, i) for i, _ in cases]
        results = self.pool.map(jobs)
        outputs = [r.value if r.ok else None for r in results]
        solved = [
            bad is None and r.ok and literals_equal(gold, r.value)
            for bad, r, (_, gold) in zip(bad_inputs, results, cases, strict=True)
        ]
        score = sum(solved) / len(cases)
        failed = any(r.status == Status.SANDBOX_ERROR for r in results)
        return Judgement(score, all(solved), None, outputs, infrastructure=failed)

    async def ajudge_abduction(self, code: str, gold_output: str, predicted_input: str) -> Judgement:
        return await asyncio.to_thread(self.judge_abduction, code, gold_output, predicted_input)

    async def ajudge_induction(self, predicted_code: str, cases: Sequence[tuple[str, str]]) -> Judgement:
        return await asyncio.to_thread(self.judge_induction, predicted_code, cases)


def _validation_from_runs(runs: list[ExecResult]) -> Validation:
    first = runs[0]
    if any(r.status == Status.SANDBOX_ERROR for r in runs):
        failed = next(r for r in runs if r.status == Status.SANDBOX_ERROR)
        return Validation(valid=False, error=failed.error or "the sandbox failed", infrastructure=True)
    if not first.ok or first.value is None:
        return Validation(valid=False, error=first.error or f"program run ended with {first.status}")
    if not parse_literal(first.value)[0]:
        return Validation(valid=False, output=first.value, error="output is not a literal value")
    deterministic = all(r.ok and r.value == first.value for r in runs[1:])
    return Validation(
        valid=deterministic,
        output=first.value,
        deterministic=deterministic,
        error=None if deterministic else "output differs between runs (not deterministic)",
    )
