"""Both examples and the `rolegraph new graph` starter, end to end on the real vLLM server and sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegraph.cli.new_cmd import write_starter
from rolegraph.config import RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.graphs.spec import compile_spec
from rolegraph.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.vllm, pytest.mark.bwrap, pytest.mark.timeout(900)]


def _short(config: RolegraphConfig, *roles: str) -> RolegraphConfig:
    """The session config plus the examples' new roles, all with short generations."""
    model = config.roles["solver"].model
    tiny = SamplingParams(max_tokens=32, temperature=0.7)
    bound = {role: RoleBinding(endpoint="local", model=model, sampling=tiny) for role in roles}
    return config.model_copy(update={"roles": {**config.roles, **bound}})


async def test_critique_checks_the_answer_with_math_verify(
    rg_config: RolegraphConfig, tmp_path: Path
) -> None:
    graph = compile_spec(EXAMPLES / "critique" / "graph.yaml")
    config = _short(rg_config, "solver", "critic")
    summary = await run_graph(graph, config, RunParams(n=1), tmp_path, progress=False)
    assert summary.finished == 1 and summary.failed == 0
    with Store(tmp_path) as store:
        steps = store.steps()
        check = [s for s in steps if s.node == "check"]
        assert len(check) == 1 and check[0].kind == "env" and check[0].role == "math.verify"
        assert check[0].request["args"]["reference"] == "\\frac{14}{3}"
        assert isinstance(check[0].response["correct"], bool)
        episode = store.episodes()[0]
        assert episode.rewards["correct"] == float(check[0].response["correct"])
        assert set(episode.rewards) == {"correct", "accepted"}


async def test_code_repair_tests_in_the_sandbox_and_retries(
    rg_config: RolegraphConfig, bwrap_pool: SandboxPool, tmp_path: Path
) -> None:
    async def sandbox() -> SandboxPool:
        return bwrap_pool

    graph = compile_spec(EXAMPLES / "code-repair" / "graph.yaml", sandbox=sandbox)
    summary = await run_graph(
        graph, _short(rg_config, "coder", "critic"), RunParams(n=1), tmp_path, progress=False
    )
    assert summary.finished == 1 and summary.failed == 0
    with Store(tmp_path) as store:
        episode = store.episodes()[0]
        assert episode.id == "HumanEval/2" and episode.final_state is not None
        nodes = [s.node for s in store.steps()]
        tests = [s for s in store.steps() if s.node == "test"]
        assert nodes[:2] == ["write", "test"] and all(s.error is None for s in tests)
        passed = bool(tests[-1].response["all_passed"])
        assert episode.rewards["passed"] == float(passed)  # a verdict, never None: the sandbox ran
        if not passed:  # a failure goes to the critic and back to the coder, at most three attempts
            assert nodes[2:4] == ["review", "write"] and 2 <= nodes.count("write") <= 3
            assert tests[0].response["first_failure"]
            review = next(s for s in store.steps() if s.node == "review")
            assert tests[0].response["first_failure"] in review.messages[-1]["content"]


async def test_the_new_graph_starter_runs_as_it_is(rg_config: RolegraphConfig, tmp_path: Path) -> None:
    written = write_starter("starter", tmp_path / "starter")
    assert [p.name for p in written] == ["graph.yaml", "answerer.md", "inputs.jsonl"]
    graph = compile_spec(written[0])
    run_dir = tmp_path / "run"
    summary = await run_graph(graph, _short(rg_config, "answerer"), RunParams(n=1), run_dir, progress=False)
    assert summary.finished == 1 and summary.failed == 0
    with Store(run_dir) as store:
        assert [s.node for s in store.steps()] == ["answer", "check"]
        assert store.episodes()[0].rewards["correct"] in (0.0, 1.0)
