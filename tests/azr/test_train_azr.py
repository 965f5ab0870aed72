"""`train azr` on the real vLLM server, the real sandbox and real TRL: one step proposes, validates and solves
each task type, trains one LoRA with task-relative REINFORCE++ and hands it off to both roles; its metrics
are in the store; re-running the step resumes without generating or training again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from rolegraph.config import RolegraphConfig
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.environments.triplets import AZR_POLICY, TripletRunner
from rolegraph.errors import ConfigError
from rolegraph.graphs.azr import TASK_TYPES
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.azr import AZRLoop, AZRSettings, render_azr_report, step_dir
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.reinforce_pp import ReinforcePPSettings
from tests.data import shared_file

pytestmark = [pytest.mark.vllm, pytest.mark.train, pytest.mark.bwrap]


def _seeds(tmp: Path) -> Path:
    lines = shared_file("cruxeval_dev.jsonl").read_text().splitlines()[:3]
    path = tmp / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_step_trains_one_lora_for_both_roles_and_resumes(
    rg_config: RolegraphConfig, model_dir: Path, bwrap_pool: SandboxPool, tmp_path: Path
) -> None:
    runner = TripletRunner(bwrap_pool, policy=AZR_POLICY)

    async def sandbox() -> TripletRunner:
        return runner

    settings = AZRSettings(
        run_dir=tmp_path / "azr",
        model_dir=model_dir,
        seeds=_seeds(tmp_path),
        batch=1,
        graph={"rollouts": 2, "propose_max_tokens": 48, "solve_max_tokens": 48},
        trainer=ReinforcePPSettings(),
    )
    registry = AdapterRegistry(tmp_path / "adapters")

    async def main() -> tuple[Any, ...]:
        async with EndpointPool(rg_config) as pool:
            loop = AZRLoop(pool, settings, registry, sandbox=sandbox)
            try:
                (report,) = await loop.run()
                bound = (pool.resolve("proposer")[1], pool.resolve("solver")[1])
                again = await AZRLoop(pool, settings, registry, sandbox=sandbox).step(1, await loop.seed())
            finally:
                loop.close()
            return report, bound, again

    report, bound, again = asyncio.run(main())
    assert report.step == 1 and report.adapter is not None
    assert bound == (report.adapter, report.adapter)  # one LoRA, handed off to both roles
    m = report.metrics
    assert m["global_step"] == 1.0 and "train_loss" in m and m["samples"] >= len(TASK_TYPES)
    for task_type in TASK_TYPES:
        assert 0.0 <= m[f"{task_type}/valid_rate"] <= 1.0
    assert m["deduction/buffer"] >= 3 and m["abduction/buffer"] >= 3  # the three seeds join both buffers
    assert m["graph_s"] > 0 and m["train_s"] > 0 and m["handoff_s"] > 0
    assert again.adapter == report.adapter  # resumed: the recorded step is not trained again
    with Store(settings.run_dir, create=False) as store:
        assert len(store.training_runs()) == 1
    with Store(step_dir(settings.run_dir, 1), create=False) as store:
        proposals = [s for s in store.steps(kind="role") if s.node == "propose"]
        assert len(proposals) == len(TASK_TYPES)
        assert all(s.rewards and s.rewards[0].get("propose") is not None for s in proposals)
        assert all(s.prompt_token_ids and s.choices[0].token_ids for s in proposals)  # trained on exact ids
    console = Console(record=True, width=160)
    render_azr_report(settings.run_dir, console)
    assert report.adapter in console.export_text()


def test_train_azr_rejects_a_bad_seed_file_in_one_line(tmp_path: Path) -> None:
    from rolegraph.cli.azr_cmd import train_azr

    app = typer.Typer()
    app.command()(train_azr)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"input": "1"}) + "\n")
    result = CliRunner().invoke(app, ["--seeds", str(bad), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError)
    assert "line 1 is not a triplet" in str(result.exception) and "fix:" in str(result.exception)
    result = CliRunner().invoke(app, ["--set", "mode=seed", "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError) and "set by `train azr` itself" in str(result.exception)
