"""Periodic mode on the real server: the graph keeps finishing episodes while a real SFT step trains, and the
role switches to the new adapter version when the hand-off is done."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import bind_missing_roles
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.loop import LoopSettings, periodic
from rolegraph.trainers.registry import AdapterRegistry
from tests.data import shared_file

pytestmark = [pytest.mark.vllm, pytest.mark.train]

ROLE = "answerer"


def _spec(folder: Path) -> Path:
    """A one-node graph whose role always parses (text), over math500 problems."""
    lines = (shared_file("math500_dev.jsonl").read_text().splitlines())[:40]
    (folder / "problems.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "answerer.md").write_text("<!-- user -->\nAnswer briefly.\n\n{{problem}}\n")
    spec = {
        "name": "answer-loop",
        "roles": {
            ROLE: {
                "prompt": "answerer.md",
                "parser": "text",
                "sampling": {"temperature": 0.7, "max_tokens": 24},
            }
        },
        "state": {"problem": "str", "answer": "str"},
        "inputs": {"file": "problems.jsonl", "fields": {"problem": "problem"}, "key": "id"},
        "nodes": {ROLE: {"role": ROLE, "inputs": {"problem": "problem"}, "output": {"answer": "text"}}},
        "edges": [["START", ROLE], [ROLE, "END"]],
        "keep": {"field": "answer", "empty": False},
    }
    path = folder / "graph.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def test_periodic_mode_trains_while_the_graph_keeps_running(
    rg_config: RolegraphConfig, model_dir: Path, adapter_registry: AdapterRegistry, tmp_path: Path
) -> None:
    spec = _spec(tmp_path)
    run_dir = tmp_path / "run"
    settings = LoopSettings(
        graph=str(spec),
        run_dir=run_dir,
        model_dir=model_dir,
        train_every=3,
        trainer="sft",
        role=ROLE,
        rounds=1,
        batch=2,
        settings=SFTSettings(max_steps=1, batch_size=2),
        episodes_after=2,
    )
    events: list[str] = []
    config = bind_missing_roles(rg_config, get_graph(spec).roles)
    async with EndpointPool(config) as pool:
        base = pool.resolve(ROLE)[1]
        report = await periodic(pool, settings, registry=adapter_registry, on_event=events.append)
        bound = pool.resolve(ROLE)[1]
        served = await pool.client("local").list_models()

    (round_,) = report.rounds
    assert round_.adapter.startswith(f"{ROLE}-v") and round_.adapter != base
    assert bound == round_.adapter and round_.adapter in served  # the binding switched to the new version
    assert round_.episodes_before >= 3 and round_.rows >= 3
    # The graph did not stop for training: episodes finished inside the training window.
    assert round_.episodes_during >= 1, events
    assert report.episodes >= round_.episodes_before + round_.episodes_during + 2

    with Store(run_dir) as store:
        steps = store.steps(role=ROLE)
        before = [s for s in steps if s.started_at < round_.started_at]
        after = [s for s in steps if s.started_at > round_.finished_at]
        assert before and all(s.model == base for s in before)
        # Calls issued after the hand-off ran on (and were recorded with) the new adapter version.
        assert len(after) >= 2 and all(s.model == round_.adapter for s in after)
        (run,) = store.training_runs()
        assert run.trainer == "sft" and run.adapter_name == round_.adapter
        assert run.inputs == [str(run_dir)] and run.hyperparams["max_steps"] == 1
        assert run.metrics["episodes_during_training"] == round_.episodes_during
