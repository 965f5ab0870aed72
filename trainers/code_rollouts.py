"""Code problems for self-play: the prompt the policy sees, the program a rollout becomes, and its verdict.

A rollout's code is only ever parsed on the host (`ast`); it runs in a sandbox, through
`rolegraph.environments.code_tests`: HumanEval-style problems (`prompt`, `test`, `entry_point`) against their
`check(candidate)` tests, Codeforces-style ones (`problem`, `tests` of stdin/stdout) against every case.
"""

from __future__ import annotations

import ast
import asyncio
import re
from dataclasses import dataclass
from typing import Any

from rolegraph.agents.parsers import parse_text
from rolegraph.agents.role import Role
from rolegraph.environments.pyparse import parse_module
from rolegraph.environments.sandbox.base import Status
from rolegraph.errors import SandboxError

SANDBOX_HINT = "check the backend with `rolegraph sandbox doctor`, or pick another with --sandbox"

CODE_TEMPLATE = """<!-- system -->
You are an expert Python programmer.
<!-- user -->
{{task}}

Reply with the complete Python code in one ```python code block.
"""
"""Prompt for code problems. The policy role's binding (model, sampling) is used; only the text differs."""

UNIT_TASK = "Complete the following Python function.\n\n```python\n{prompt}```"
STDIO_TASK = "{problem}\n\nRead the input from stdin and print the answer to stdout."

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CodeSpec:
    """How a code problem is checked: unit tests of `entry_point`, or stdin/stdout cases."""

    tests: str | None = None
    entry_point: str | None = None
    stub: str = ""
    """The HumanEval `prompt` (signature + docstring) a completion may continue."""
    stdio: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        return "unit" if self.tests is not None else "stdio"


def code_role(name: str) -> Role:
    """The role used to render and parse code prompts, under the policy role's name."""
    return Role(name=name, template=CODE_TEMPLATE, parser=parse_text, description="writes Python code")


def code_spec(row: dict[str, Any]) -> CodeSpec | None:
    """The code checks a problem row carries (None for a math problem)."""
    if row.get("test") and row.get("entry_point") and row.get("prompt"):
        return CodeSpec(tests=str(row["test"]), entry_point=str(row["entry_point"]), stub=str(row["prompt"]))
    tests = row.get("tests")
    if isinstance(tests, list) and tests and all(isinstance(t, dict) and "input" in t for t in tests):
        return CodeSpec(stdio=tuple((str(t["input"]), str(t.get("output", ""))) for t in tests))
    return None


def task_text(problem: str, spec: CodeSpec) -> str:
    """The `task` the code prompt shows."""
    if spec.kind == "unit":
        return UNIT_TASK.format(prompt=spec.stub)
    return STDIO_TASK.format(problem=problem)


def extract_code(text: str) -> str:
    """The last fenced code block of a completion (an unclosed fence counts), else the whole text."""
    blocks = _FENCE.findall(text)
    return (blocks[-1] if blocks else text).strip("\n")


def parses(code: str) -> bool:
    """Whether `code` is valid Python (parsed with `ast` only; never run on the host)."""
    try:
        parse_module(code)
    except (SyntaxError, ValueError):
        return False
    return True


def defines(code: str, name: str) -> bool:
    """Whether `code` defines a top-level function `name`."""
    try:
        tree = parse_module(code)
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body
    )


def program_for(spec: CodeSpec, completion: str) -> str | None:
    """The program a rollout is tested as, or None when it is not valid Python.

    A unit-test rollout that defines the entry point runs after the stub (its imports stay available and its
    definition wins); otherwise the code is taken as the body that continues the stub.
    """
    code = extract_code(completion)
    if spec.kind == "stdio":
        return code if code.strip() and parses(code) else None
    assert spec.entry_point is not None
    if defines(code, spec.entry_point):
        program = (
            f"{spec.stub}\n    pass\n\n{code}\n" if not parses(spec.stub) else f"{spec.stub}\n\n{code}\n"
        )
    else:
        program = spec.stub + code + "\n"
    return program if parses(program) else None


@dataclass(frozen=True)
class CodeVerdict:
    """Whether a rollout passed, and the sandbox status (or `syntax_error` when it never ran)."""

    passed: bool
    status: str


async def verify_code(sandbox: Any, spec: CodeSpec, completion: str) -> CodeVerdict:
    """Run a rollout's program against the problem's tests on a sandbox pool (`SandboxPool`).

    A SandboxError means the sandbox could not give a verdict (an infrastructure failure, not the rollout's).
    """
    from rolegraph.environments.code_tests import CodeTester, StdioCase, UnitTestCase

    program = program_for(spec, completion)
    if program is None:
        return CodeVerdict(False, "syntax_error")
    tester = CodeTester(sandbox)
    if spec.kind == "unit":
        assert spec.tests is not None and spec.entry_point is not None
        results = [await tester.arun(UnitTestCase(program, spec.tests, spec.entry_point))]
    else:
        cases = [StdioCase(stdin, expected) for stdin, expected in spec.stdio]
        results = await asyncio.to_thread(tester.run_stdio, program, cases)
    broken = next((r for r in results if r.status == Status.SANDBOX_ERROR), None)
    if broken is not None:
        # A verdict the sandbox could not give must not become a "failed" rollout in a DPO pair.
        raise SandboxError(f"the sandbox failed while testing a rollout: {broken.error}", SANDBOX_HINT)
    failed = next((r for r in results if not r.passed), None)
    return CodeVerdict(failed is None, str((failed or results[0]).status) if results else "no_tests")
