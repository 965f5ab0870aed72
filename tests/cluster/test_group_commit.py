"""RemoteStore's group commit: steps recorded meanwhile share one writer call; each caller gets its own id
only once its step is committed, and a failed call fails exactly the steps it carried."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from rolegraph.cluster.store_writer import RemoteStore
from rolegraph.store import Step
from rolegraph.store.db import DiskFullError


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeWriter:
    """A unit-test stand-in for the writer actor: `record_rows.remote` is awaitable, as an ObjectRef is."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[str]] = []
        self.next_id = 1
        self.fail_on = fail_on
        self.record_rows = _Method(self._record_rows)

    def _record_rows(self, rows: list[tuple[Any, ...]]) -> Any:
        async def reply() -> list[int]:
            await asyncio.sleep(0.01)  # the round trip: other steps queue meanwhile
            self.batches.append([row[3] for row in rows])  # the node column
            if len(self.batches) == self.fail_on:
                raise DiskFullError("/run/store.sqlite")
            ids = list(range(self.next_id, self.next_id + len(rows)))
            self.next_id += len(rows)
            return ids

        return reply()


def _step(node: str) -> Step:
    return Step(id=0, episode_id="e1", attempt=1, kind="env", node=node, role="python", started_at=0.0)


def test_concurrent_steps_share_a_call_and_each_gets_its_own_id(tmp_path: Path) -> None:
    writer = FakeWriter()
    store = RemoteStore(writer, tmp_path)

    async def main() -> list[Step]:
        first = asyncio.ensure_future(store.arecord_step(_step("n0")))
        await asyncio.sleep(0.001)  # n0's call is in flight: the next seven wait and go together
        rest = await asyncio.gather(*(store.arecord_step(_step(f"n{i}")) for i in range(1, 8)))
        return [await first, *rest]

    recorded = asyncio.run(main())
    assert writer.batches == [["n0"], [f"n{i}" for i in range(1, 8)]]
    assert [step.id for step in recorded] == list(range(1, 9))
    assert [step.node for step in recorded] == [f"n{i}" for i in range(8)]


def test_a_failed_call_fails_the_steps_it_carried_with_their_typed_error(tmp_path: Path) -> None:
    writer = FakeWriter(fail_on=2)
    store = RemoteStore(writer, tmp_path)

    async def main() -> list[Any]:
        first = await store.arecord_step(_step("first"))
        together = await asyncio.gather(
            *(store.arecord_step(_step(f"n{i}")) for i in range(3)), return_exceptions=True
        )
        after = await store.arecord_step(_step("after"))
        return [first, *together, after]

    first, *together, after = asyncio.run(main())
    assert first.id == 1
    assert all(isinstance(outcome, DiskFullError) for outcome in together)
    assert after.id == 2  # the writer goes on for later steps


def test_steps_recorded_soon_are_committed_by_aflush_and_their_failure_surfaces_there(tmp_path: Path) -> None:
    writer = FakeWriter(fail_on=2)
    store = RemoteStore(writer, tmp_path)

    async def main() -> None:
        for i in range(3):
            store.record_step_soon(functools.partial(_step, f"n{i}"))
        await store.aflush()
        assert writer.batches == [["n0", "n1", "n2"]]  # sent together, committed before aflush returned
        store.record_step_soon(functools.partial(_step, "lost"))
        try:
            await store.aflush()
        except DiskFullError:
            pass
        else:
            raise AssertionError("the failed write was not reported")
        await store.aflush()  # reported once; nothing is pending any more

    asyncio.run(main())
