"""Run a program against unit tests (HumanEval style) or stdin/stdout cases (Codeforces style) in a sandbox.

A unit-test run passes only when the worker saw `check(<entry point>)` return: a program that exits early with
status 0 (`sys.exit(0)`, `os._exit(0)`) does not pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rolegraph.environments.sandbox.base import ExecResult, Limits, Status
from rolegraph.environments.sandbox.pool import Job, SandboxPool

DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_mb=512, max_output_bytes=500_000, keep_output_bytes=8_000)


@dataclass(frozen=True)
class UnitTestCase:
    """A program (e.g. prompt + completion) and tests that define `check(candidate)`."""

    program: str
    tests: str
    entry_point: str


@dataclass(frozen=True)
class StdioCase:
    stdin: str
    expected_stdout: str


@dataclass
class CodeTestResult:
    passed: bool
    status: Status
    error: str | None = None
    duration_s: float = 0.0
    detail: ExecResult | None = None


def humaneval_case(problem: dict[str, str], completion: str | None = None) -> UnitTestCase:
    """A HumanEval record as a test case; `completion` defaults to the canonical solution."""
    body = problem["canonical_solution"] if completion is None else completion
    return UnitTestCase(problem["prompt"] + body, problem["test"], problem["entry_point"])


def stdout_matches(actual: str, expected: str) -> bool:
    """Token-wise comparison, as competitive-programming judges do (whitespace-insensitive)."""
    return actual.split() == expected.split()


class CodeTester:
    """Runs code against tests on a sandbox pool (sync and async)."""

    def __init__(self, pool: SandboxPool, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.pool = pool
        self.limits = limits

    def _job(self, case: UnitTestCase) -> Job:
        return Job(
            op="tests", code=case.program, tests=case.tests, entry_point=case.entry_point, limits=self.limits
        )

    def run(self, case: UnitTestCase) -> CodeTestResult:
        return _unit_result(self.pool.execute(self._job(case)))

    async def arun(self, case: UnitTestCase) -> CodeTestResult:
        return await asyncio.to_thread(self.run, case)

    def run_many(
        self,
        cases: Sequence[UnitTestCase],
        *,
        width: int | None = None,
        on_done: Callable[[int, ExecResult], None] | None = None,
    ) -> list[CodeTestResult]:
        results = self.pool.map([self._job(c) for c in cases], width=width, on_done=on_done)
        return [_unit_result(r) for r in results]

    def run_stdio(self, program: str, cases: Sequence[StdioCase]) -> list[CodeTestResult]:
        """Run the program once per case with its stdin; a case passes when stdout matches token-wise."""
        jobs = [Job(op="exec", code=program, stdin=c.stdin, limits=self.limits) for c in cases]
        out = []
        for case, result in zip(cases, self.pool.map(jobs), strict=True):
            passed = result.ok and stdout_matches(result.stdout, case.expected_stdout)
            error = result.error if not result.ok else (None if passed else "wrong answer")
            out.append(CodeTestResult(passed, result.status, error, result.duration_s, result))
        return out


def _unit_result(result: ExecResult) -> CodeTestResult:
    passed = result.ok and result.passed
    error = result.error if not passed else None
    if not passed and result.ok:
        error = "tests did not run to completion"
    return CodeTestResult(passed, result.status, error, result.duration_s, result)
