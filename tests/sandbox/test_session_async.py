"""Session.arun_cell on the event loop (no thread): cells of two sessions interleave, a cancelled cell does
not confuse the next one, and timeouts and a dead sandbox still give their typed results."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from rolegraph.environments.sandbox.base import Limits, Status
from rolegraph.environments.sandbox.pool import SandboxPool

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]


async def test_two_sessions_cells_interleave_on_one_loop(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session() as slow, sandbox_pool.session() as fast:
        finished: list[str] = []

        async def slow_cell() -> str:
            result = await slow.arun_cell("import time\ntime.sleep(1.0)\nprint('slow')")
            finished.append("slow")
            return result.stdout

        async def fast_cells() -> list[str]:
            outputs = [(await fast.arun_cell(f"print({i} * 2)")).stdout for i in range(5)]
            finished.append("fast")
            return outputs

        started = time.monotonic()
        slow_out, fast_out = await asyncio.gather(slow_cell(), fast_cells())
        assert slow_out == "slow\n"
        assert fast_out == [f"{i * 2}\n" for i in range(5)]
        assert finished == ["fast", "slow"]  # the fast session's cells ran while the slow cell ran
        assert time.monotonic() - started < 3.0


async def test_a_cancelled_cell_does_not_answer_the_next_one(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session() as session:
        await session.arun_cell("n = 1")
        late_cell = "import time\ntime.sleep(0.5)\nn = 2\nprint('late')"
        pending = asyncio.ensure_future(session.arun_cell(late_cell))
        await asyncio.sleep(0.1)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        result = await session.arun_cell("print(n)")  # the late reply of the cancelled cell is dropped
        assert result.status == Status.OK and result.stdout == "2\n"
        assert not session.closed


async def test_async_cell_timeout_closes_the_session(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session() as session:
        result = await session.arun_cell("while True:\n    pass", timeout_s=1)
        assert result.status == Status.TIMEOUT
        assert session.closed
        after = await session.arun_cell("print(1)")
        assert after.status == Status.SANDBOX_ERROR


async def test_a_dead_sandbox_gives_a_sandbox_error(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session(Limits(timeout_s=5)) as session:
        assert (await session.arun_cell("print(1)")).stdout == "1\n"
        assert session.worker.sandbox_pid is not None
        os.kill(session.worker.sandbox_pid, 9)  # the sandbox's PID 1: its whole PID namespace dies
        result = await session.arun_cell("print(2)")
        assert result.status == Status.SANDBOX_ERROR
        assert session.closed and "stopped answering" in (session.closed_reason or "")
