"""Environment steps are committed off the caller's path (`Store.record_step_soon`): on the event loop's next
turn, with the next write if that comes first, and always before LangGraph saves the node's writes."""

from __future__ import annotations

import asyncio
import functools
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
        store.record_step_soon(functools.partial(_step, "a"))
        assert _committed(tmp_path) == ["a"]


def test_the_step_is_committed_on_the_next_turn_or_with_the_next_write(tmp_path: Path) -> None:
    async def main() -> None:
        with Store(tmp_path) as store:
            store.record_step_soon(functools.partial(_step, "queued"))
            assert _committed(tmp_path) == []  # not on the caller's path
            await asyncio.sleep(0)
            assert _committed(tmp_path) == ["queued"]

            store.record_step_soon(functools.partial(_step, "first"))
            recorded = store.record_step(_step("second"))  # one transaction, the queued row first
            assert _committed(tmp_path) == ["queued", "first", "second"]
            assert recorded.id == 3

            store.record_step_soon(functools.partial(_step, "at close"))
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


def test_an_env_step_records_its_request_and_result_as_they_were_when_the_call_returned(
    tmp_path: Path,
) -> None:
    """The step is built after the node goes on: what the node changes in place meanwhile must not show."""
    request: dict[str, Any] = {"cell": 1, "code": "print(2)"}
    nested_request: dict[str, Any] = {"tests": ["assert f(1) == 2"], "timeout_s": 3.0}
    result: dict[str, Any] = {"stdout": "2\n", "status": "ok"}
    nested_result: dict[str, Any] = {"passed": [True], "stdout": ""}

    async def main() -> None:
        with Store(tmp_path) as store:
            ctx = RuntimeContext(_NoPool(), store)
            for req, res in ((request, result), (nested_request, nested_result)):

                async def call(res: dict[str, Any] = res) -> dict[str, Any]:
                    return res

                returned = await ctx.call_env("python", node="n", episode_id="e1", request=req, fn=call)
                assert returned is res  # the node gets the result itself
            request["code"], result["stdout"] = "changed", "changed"
            nested_request["tests"].append("changed")
            nested_result["passed"][0] = False
            assert _committed(tmp_path) == []  # the steps are still queued: built after the changes
            await asyncio.sleep(0)
            with Store(tmp_path, create=False) as reader:
                steps = reader.steps()
            assert [(s.request, s.response) for s in steps] == [
                ({"cell": 1, "code": "print(2)"}, {"stdout": "2\n", "status": "ok"}),
                ({"tests": ["assert f(1) == 2"], "timeout_s": 3.0}, {"passed": [True], "stdout": ""}),
            ]
            assert all(s.latency_s is not None and s.latency_s >= 0 for s in steps)

    asyncio.run(main())
