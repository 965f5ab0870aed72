"""The runtime with a fake pool: the loop guard, sampling layers, resuming and endpoint failures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rolegraph.config import SamplingParams
from rolegraph.errors import EndpointError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from tests.runtime.fakes import FakePool

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "critique" / "graph.yaml"


def _solver(messages: list[dict[str, Any]], sampling: SamplingParams) -> list[str]:
    return ["Step one. The answer is \\boxed{9}."] * sampling.n


def _critic_revising_once() -> Any:
    seen: Counter[str] = Counter()

    def reply(messages: list[dict[str, Any]], sampling: SamplingParams) -> list[str]:
        problem = messages[-1]["content"].split("Proposed solution")[0]
        seen[problem] += 1
        return ["Looks wrong.\nREVISE"] if seen[problem] == 1 else ["Fine.\nACCEPT"]

    return reply


async def test_episodes_run_with_the_loop_and_record_every_step(tmp_path: Path) -> None:
    pool = FakePool({"solver": _solver, "critic": _critic_revising_once()})
    summary = await run_graph(
        get_graph(EXAMPLE), pool, RunParams(n=4), tmp_path, concurrency=3, progress=False
    )
    assert (summary.kept, summary.rejected, summary.failed) == (4, 0, 0)
    with Store(tmp_path) as store:
        episodes = store.episodes()
        assert sorted(e.id for e in episodes) == sorted(["math500_2", "math500_3", "math500_6", "math500_8"])
        for episode in episodes:
            nodes = [s.node for s in store.steps(episode_id=episode.id)]
            assert nodes == ["solve", "critique", "solve", "critique", "check"]
            assert episode.final_state is not None and episode.final_state["answer"] == "9"
            correct = 1.0 if episode.id == "math500_3" else 0.0  # the reference answer of math500_3 is 9
            assert episode.rewards == {"correct": correct, "accepted": 1.0}
        critic_step = store.steps(role="critic")[0]
        # role default temperature 0.3 survives; the binding's explicit max_tokens=16 wins over the role's 64
        assert critic_step.sampling["temperature"] == 0.3 and critic_step.sampling["max_tokens"] == 16
        assert critic_step.choices[0].parsed == {"text": "Looks wrong.\nREVISE"}
        assert store.usage_by_role()["solver"] == {"calls": 8, "prompt_tokens": 80, "completion_tokens": 24}


async def test_loop_guard_stops_a_critic_that_never_accepts(tmp_path: Path) -> None:
    pool = FakePool({"solver": _solver, "critic": lambda m, s: ["REVISE"]})
    summary = await run_graph(get_graph(EXAMPLE), pool, RunParams(n=1), tmp_path, progress=False)
    assert summary.kept == 1
    with Store(tmp_path) as store:
        assert [s.node for s in store.steps()] == ["solve", "critique", "solve", "critique", "check"]
        assert store.episodes()[0].rewards == {"correct": 0.0, "accepted": 0.0}


async def test_rerun_skips_finished_episodes(tmp_path: Path) -> None:
    graph = get_graph(EXAMPLE)
    await run_graph(
        graph,
        FakePool({"solver": _solver, "critic": lambda m, s: ["ACCEPT"]}),
        RunParams(n=3),
        tmp_path,
        progress=False,
    )
    pool = FakePool({"solver": _solver, "critic": lambda m, s: ["ACCEPT"]})
    summary = await run_graph(graph, pool, RunParams(n=5), tmp_path, progress=False)
    assert summary.finished == 5
    assert len(pool.clients["solver"].calls) == 2  # only the two new episodes ran
    with Store(tmp_path) as store:
        assert len(store.episodes()) == 5


async def test_unfinished_episode_resumes_from_its_last_node(tmp_path: Path) -> None:
    graph = get_graph(EXAMPLE)

    def broken_critic(messages: list[dict[str, Any]], sampling: SamplingParams) -> list[str]:
        raise RuntimeError("critic crashed")

    await run_graph(
        graph,
        FakePool({"solver": _solver, "critic": broken_critic}),
        RunParams(n=2),
        tmp_path,
        progress=False,
    )
    with Store(tmp_path) as store:
        assert [e.status for e in store.episodes()] == ["failed", "failed"]
    pool = FakePool({"solver": _solver, "critic": lambda m, s: ["ACCEPT"]})
    summary = await run_graph(graph, pool, RunParams(n=2), tmp_path, progress=False)
    assert summary.kept == 2
    assert pool.clients["solver"].calls == []  # `solve` had completed and was checkpointed
    with Store(tmp_path) as store:
        for episode in store.episodes():
            assert episode.attempts == 2
            assert [s.node for s in store.steps(episode_id=episode.id)] == ["solve", "critique", "check"]


async def test_endpoint_down_stops_the_run_and_a_rerun_completes_it(tmp_path: Path) -> None:
    graph = get_graph(EXAMPLE)
    down = FakePool({"solver": _solver, "critic": _solver}, fail=True)
    with pytest.raises(EndpointError, match="episodes failed on endpoint errors"):
        await run_graph(graph, down, RunParams(n=4), tmp_path, concurrency=1, progress=False)
    with Store(tmp_path) as store:
        assert {e.status for e in store.episodes()} <= {"failed", "running"}  # nothing judged
        assert store.counts()["failed"] == 3
        assert store.failures_by_kind() == {"endpoint_down": 3}
        assert {s.error_kind for s in store.steps(include_superseded=True)} == {"endpoint_down"}
    summary = await run_graph(
        graph,
        FakePool({"solver": _solver, "critic": lambda m, s: ["ACCEPT"]}),
        RunParams(n=4),
        tmp_path,
        progress=False,
    )
    assert summary.kept == 4 and summary.failed == 0
    with Store(tmp_path) as store:
        # the failed attempts' steps are superseded, so readers see one clean pass per episode
        assert all(
            [s.node for s in store.steps(episode_id=e.id)] == ["solve", "critique", "check"]
            for e in store.episodes()
        )
        assert len(store.steps(include_superseded=True)) > len(store.steps())
