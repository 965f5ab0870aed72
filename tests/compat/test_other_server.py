"""rolegraph behind a real OpenAI-compatible server that is not vLLM (`transformers serve`, see
tests/fixtures/compat.py), alone and next to the vLLM server in the same run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from rolegraph.cli.app import main
from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.promptcot.concepts import DEFAULT_SEEDS
from rolegraph.graphs.promptcot.graph import PROMPTCOT
from rolegraph.graphs.runtime import run_graph
from rolegraph.graphs.spec import compile_spec
from rolegraph.serving import EndpointPool
from rolegraph.serving.capabilities import CapabilityError
from rolegraph.store import Store
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.registry import AdapterRegistry
from tests.fixtures.compat import CompatServer
from tests.fixtures.serving import VLLMServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = SamplingParams(max_tokens=12, temperature=0.7)
pytestmark = pytest.mark.timeout(900)


def _endpoints(vllm: VLLMServer | None, other: CompatServer) -> dict[str, EndpointConfig]:
    endpoints = {"other": EndpointConfig(base_url=other.base_url, max_concurrency=4)}
    if vllm is not None:
        endpoints["local"] = EndpointConfig(base_url=vllm.base_url)
    return endpoints


def _bind(endpoint: str, model: str, sampling: SamplingParams = TINY) -> RoleBinding:
    return RoleBinding(endpoint=endpoint, model=model, sampling=sampling)


@pytest.mark.vllm
async def test_a_yaml_graph_runs_across_both_servers_with_a_swap_between_episodes(
    vllm_server: VLLMServer, compat_server: CompatServer, tmp_path: Path
) -> None:
    """The critique spec: solver on vLLM, critic on the other server; then the solver moves to the other
    server for the next episode of the same run. Every step records the endpoint and model behind it."""
    config = RolegraphConfig(
        endpoints=_endpoints(vllm_server, compat_server),
        roles={
            "solver": _bind("local", vllm_server.model),
            "critic": _bind("other", compat_server.model),
        },
    )
    spec_dir = tmp_path / "critique"
    shutil.copytree(EXAMPLES / "critique", spec_dir)
    first = json.loads((spec_dir / "problems.jsonl").read_text().splitlines()[0])
    (spec_dir / "problems.jsonl").write_text(
        "".join(json.dumps({**first, "id": f"p{i}"}) + "\n" for i in range(2))
    )
    graph = compile_spec(spec_dir / "graph.yaml")
    async with EndpointPool(config) as pool:
        assert pool.capabilities["other"].token_ids is False and pool.capabilities["local"].token_ids
        one = await run_graph(graph, pool, RunParams(n=1), tmp_path / "run", progress=False)
        with Store(tmp_path / "run") as store:
            (before,) = [e.id for e in store.episodes()]
        await pool.swap("solver", "other", compat_server.model)
        two = await run_graph(graph, pool, RunParams(n=2), tmp_path / "run", progress=False)
    assert one.failed == 0 and two.failed == 0 and two.finished == 2
    with Store(tmp_path / "run") as store:
        role_steps = [s for s in store.steps() if s.kind == "role"]
        (after,) = [e.id for e in store.episodes() if e.id != before]
    used = {e: {(s.role, s.endpoint) for s in role_steps if s.episode_id == e} for e in (before, after)}
    assert ("solver", "local") in used[before] and ("critic", "other") in used[before]
    assert ("solver", "other") in used[after] and ("solver", "local") not in used[after]
    for step in role_steps:
        assert step.error is None and step.choices
        if step.endpoint == "local":
            assert step.model == vllm_server.model and all(c.token_ids for c in step.choices)
        else:
            assert step.model is not None and step.model.startswith(compat_server.model)
            assert all(c.token_ids is None for c in step.choices)


async def test_promptcot_runs_on_the_other_server_with_the_judge_falling_back(
    compat_server: CompatServer, tmp_path: Path
) -> None:
    """No structured outputs there: the judge decodes plainly and its parser decides (a verdict it cannot
    parse is a parse failure, not an error); n is emulated; scoring is refused up front."""
    roles = ("concept_extractor", "rationale_writer", "proposer", "problem_writer", "solver", "judge")
    config = RolegraphConfig(
        endpoints=_endpoints(None, compat_server),
        roles={role: _bind("other", compat_server.model) for role in roles},
    )
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(DEFAULT_SEEDS.read_text().splitlines()[0] + "\n")
    options = {"seeds": str(seeds), "seed_limit": 1, "k": 2, "max_tokens": 12}
    async with EndpointPool(config) as pool:
        summary = await run_graph(
            PROMPTCOT, pool, RunParams(n=1, options=options), tmp_path / "run", concurrency=2, progress=False
        )
        client = pool.client("other")
        assert client.capabilities.structured_outputs is False and client.capabilities.n is False
        with pytest.raises(CapabilityError, match="endpoint 'other'"):
            await client.score_chat([{"role": "user", "content": "x"}], "y", model=compat_server.model)
    assert summary.failed == 0
    with Store(tmp_path / "run") as store:
        steps = [s for s in store.steps() if s.kind == "role"]
    judge = [s for s in steps if s.role == "judge"]
    solver = [s for s in steps if s.role == "solver"]
    assert judge and all(s.error is None for s in judge)
    assert all(c.parsed is not None or c.parse_error for s in judge for c in s.choices)
    assert solver and all(len(s.choices) == 2 for s in solver)  # k=2 from emulated n
    assert all(s.endpoint == "other" for s in steps)


async def test_hand_off_to_the_other_server_keeps_the_binding_and_names_the_saved_adapter(
    compat_server: CompatServer, tmp_path: Path
) -> None:
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "adapter_config.json").write_text("{}")
    adapter = AdapterRegistry(tmp_path / "adapters").publish("solver", trained)
    config = RolegraphConfig(
        endpoints=_endpoints(None, compat_server), roles={"solver": _bind("other", compat_server.model)}
    )
    async with EndpointPool(config) as pool:
        assert pool.capabilities["other"].runtime_lora is False  # probed: no /v1/load_lora_adapter
        report = await hand_off(pool, "solver", adapter)
        assert pool.resolve("solver")[1] == compat_server.model
    assert not report.swapped and str(adapter.path) in report.not_loaded["other"]


def test_endpoints_status_shows_the_capabilities(
    compat_server: CompatServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"endpoints:\n  other: {{base_url: '{compat_server.base_url}', capabilities: {{tokenize: false}}}}\n"
        f"roles:\n  solver: {{endpoint: other, model: '{compat_server.model}'}}\n"
    )
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["rolegraph", "endpoints", "status", "-c", str(config)])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr().out
    assert info.value.code in (0, None)
    assert "attached" in out and "up" in out and "lacks:" in out and "has:" not in out, out
    lacks = "lists_models n logprobs token_ids prompt_logprobs structured_outputs runtime_lora tokenize"
    assert all(name in out for name in lacks.split())  # the table may wrap the cell
