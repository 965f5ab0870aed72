"""Environment steps are committed off the caller's path (`Store.record_step_soon`): on the event loop's next
turn, with the next write if that comes first, and always before LangGraph saves the node's writes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

from rolegraph.graphs.checkpointing import steps_first_saver
from rolegraph.graphs.role_calls import RuntimeContext
from rolegraph.store import Step, Store


def _step(node: str) -> Step:
    return Step(id=0, episode_id="e1", attempt=1, kind="env", node=node, role="python", started_at=0.0)


def _committed(run_dir: Path) -> list[str]:
    """The steps another process would see now (a read-only connection)."""
    with Store(run_dir, create=False) as reader:
        return [step.node for step in reader.steps()]


def test_outside_an_event_loop_the_step_is_committed_at_once(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.record_step_soon(_step("a"))
        assert _committed(tmp_path) == ["a"]


def test_the_step_is_committed_on_the_next_turn_or_with_the_next_write(tmp_path: Path) -> None:
    async def main() -> None:
        with Store(tmp_path) as store:
            store.record_step_soon(_step("queued"))
            assert _committed(tmp_path) == []  # not on the caller's path
            await asyncio.sleep(0)
            assert _committed(tmp_path) == ["queued"]

            store.record_step_soon(_step("first"))
            recorded = store.record_step(_step("second"))  # one transaction, the queued row first
            assert _committed(tmp_path) == ["queued", "first", "second"]
            assert recorded.id == 3

            store.record_step_soon(_step("at close"))
        assert _committed(tmp_path) == ["queued", "first", "second", "at close"]

    asyncio.run(main())


class _NoPool:
    def resolve(self, role: str) -> Any:
        raise AssertionError("no model call here")


class _State(TypedDict):
    x: int


def test_a_nodes_env_steps_are_committed_before_its_writes_are_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed_when_saved: dict[str, list[str]] = {}
    """The node's writes' task id → the steps committed when LangGraph saved them."""
    save_writes = AsyncSqliteSaver.aput_writes

    async def observed(self: Any, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        if ("x", 2) in list(writes):  # the compute node's writes (the input's come first)
            committed_when_saved[task_id] = _committed(tmp_path / "run")
        await save_writes(self, config, writes, task_id, task_path)

    monkeypatch.setattr(AsyncSqliteSaver, "aput_writes", observed)
    # The loop's next turn may come before LangGraph saves the writes, or not: take it away, so only the
    # checkpointer's flush can commit the step in time.
    monkeypatch.setattr(Store, "_flush_quietly", lambda self: None)

    async def main() -> None:
        with Store(tmp_path / "run") as store:
            ctx = RuntimeContext(_NoPool(), store)

            async def cell() -> dict[str, str]:
                return {"stdout": "2\n"}

            async def node(state: _State) -> _State:
                await ctx.call_env("python", node="compute", episode_id="e1", request={}, fn=cell)
                return {"x": state["x"] + 1}  # no await in between: LangGraph saves the writes next

            builder = StateGraph(_State)
            builder.add_node("compute", node)
            builder.add_edge(START, "compute")
            builder.add_edge("compute", END)
            async with steps_first_saver(str(tmp_path / "checkpoints.sqlite"), store.aflush) as saver:
                graph = builder.compile(checkpointer=saver)
                assert await graph.ainvoke({"x": 1}, {"configurable": {"thread_id": "e1"}}) == {"x": 2}

    asyncio.run(main())
    assert list(committed_when_saved.values()) == [["compute"]]
