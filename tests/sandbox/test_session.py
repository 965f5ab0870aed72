"""Stateful sessions: globals persist, a timed-out cell closes only its session, output keeps head+tail."""

from __future__ import annotations

import pytest

from rolegraph.environments.sandbox.base import Limits, Status
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.environments.sandbox.session import Session

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]


def test_globals_persist_across_cells(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session() as session:
        assert session.run_cell("x = 20\ndef g(y):\n    return x + y").status == Status.OK
        result = session.run_cell("g(22)")
        assert result.status == Status.OK and result.stdout == "42\n"
        failed = session.run_cell("1 / 0")
        assert failed.status == Status.ERROR and "ZeroDivisionError" in failed.stderr
        assert session.run_cell("print(x)").stdout == "20\n"  # an error does not lose state
    assert session.closed


def test_a_timed_out_cell_closes_only_its_session(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session() as stuck, sandbox_pool.session() as other:
        stuck.run_cell("a = 1")
        other.run_cell("b = 2")
        result = stuck.run_cell("while True:\n    pass", timeout_s=1)
        assert result.status == Status.TIMEOUT
        assert stuck.closed and "wall-clock" in (stuck.closed_reason or "")
        after = stuck.run_cell("print(a)")
        assert after.status == Status.SANDBOX_ERROR and "closed" in (after.error or "")
        assert other.run_cell("b").stdout == "2\n"


def test_output_is_truncated_keeping_head_and_tail(sandbox_pool: SandboxPool) -> None:
    limits = Limits(timeout_s=5, keep_output_bytes=200)
    with sandbox_pool.session(limits) as session:
        result = session.run_cell("print('HEAD' + 'x' * 10000 + 'TAIL')")
        assert result.status == Status.OK
        assert result.stdout.startswith("HEAD") and result.stdout.rstrip().endswith("TAIL")
        assert "bytes truncated" in result.stdout and len(result.stdout) < 400


async def test_async_session_with_preloaded_sympy() -> None:
    async with Session.open("bwrap", limits=Limits(timeout_s=10)) as session:
        await session.arun_cell("import sympy\nx = sympy.Symbol('x')")
        result = await session.arun_cell("sympy.factor(x**2 - 1)")
        assert result.stdout == "(x - 1)*(x + 1)\n"
    assert session.closed
