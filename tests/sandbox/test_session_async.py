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


def _fds_on(target: str) -> list[str]:
    """This process's fds open on `target` (e.g. 'pipe:[123]' or a FIFO's path)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                found.append(fd)
        except OSError:
            pass
    return found


async def test_the_loop_keeps_watching_between_cells_and_stops_when_the_session_closes(
    sandbox_pool: SandboxPool,
) -> None:
    with sandbox_pool.session() as session:
        await session.arun_cell("n = 1")
        watched = session.worker._watch
        assert watched is not None and watched[0] is asyncio.get_running_loop()
        pipe = os.readlink(f"/proc/self/fd/{watched[1]}")
        assert len(_fds_on(pipe)) == 2  # the worker's reply pipe and the loop's duplicate of it
        for i in range(3):
            assert (await session.arun_cell(f"n += {i}\nprint(n)")).stdout == f"{1 + sum(range(i + 1))}\n"
        assert session.worker._watch is watched  # one watch for every cell, not one per cell
        # the sync path, from a thread, on the same session: its reply is its own
        assert (await asyncio.to_thread(session.run_cell, "print(n * 10)")).stdout == "40\n"
        assert (await session.arun_cell("print(n + 1)")).stdout == "5\n"
    await asyncio.sleep(0.05)
    assert session.worker._watch is None
    assert _fds_on(pipe) == []  # the duplicate is closed with the worker's own fd


async def test_a_worker_that_dies_between_cells_ends_the_watch(sandbox_pool: SandboxPool) -> None:
    with sandbox_pool.session(Limits(timeout_s=5)) as session:
        assert (await session.arun_cell("print(1)")).stdout == "1\n"
        assert session.worker.sandbox_pid is not None
        os.kill(session.worker.sandbox_pid, 9)
        for _ in range(100):  # EOF stays readable: the loop must stop watching, not spin on it
            await asyncio.sleep(0.02)
            if session.worker._watch is None:
                break
        assert session.worker._watch is None
        assert (await session.arun_cell("print(2)")).status == Status.SANDBOX_ERROR


async def test_destroying_the_worker_from_a_thread_fails_the_awaited_cell_at_once(
    sandbox_pool: SandboxPool,
) -> None:
    with sandbox_pool.session(Limits(timeout_s=60)) as session:
        await session.arun_cell("n = 1")
        pending = asyncio.ensure_future(session.arun_cell("import time\ntime.sleep(30)"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(session.worker.destroy)
        result = await asyncio.wait_for(pending, timeout=10)
        assert result.status == Status.SANDBOX_ERROR
        assert time.monotonic() - started < 10  # not the cell's 60 s timeout
