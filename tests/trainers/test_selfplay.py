"""Self-play with DPO and distillation, end to end: real vLLM rollouts, sandboxed code tests, math-verify,
real TRL steps, hand-off to the real server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rolegraph.cli.app import app
from rolegraph.config import RolegraphConfig, SamplingParams
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.errors import TrainingError
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.pairs import keep_reason
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.selfplay import SelfPlay, SelfPlayReport, SelfPlaySettings, load_problems
from tests.data import shared_file
from tests.fixtures.serving import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.train, pytest.mark.bwrap]

ADD = {
    "task_id": "easy/add",
    "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
    "canonical_solution": "    return a + b\n",
}
"""A code problem the built-in model solves some of the time: its rollouts make DPO pairs."""
MAX_PASS_RATE = 0.75
SANDBOX_STATUSES = {"ok", "error", "timeout", "memory", "output_limit", "syntax_error"}


@dataclass
class SelfPlayRun:
    report: SelfPlayReport
    run_dir: Path
    problems: Path
    bound_after: str
    served: list[str]
    answer_model: str


def _problem_file(path: Path) -> Path:
    math = json.loads(shared_file("math500_dev.jsonl").read_text().splitlines()[0])
    humaneval = json.loads(shared_file("humaneval_dev.jsonl").read_text().splitlines()[0])
    path.write_text("".join(json.dumps(row) + "\n" for row in (ADD, humaneval, math)))
    return path


def _settings(problems: Path, run_dir: Path, model_dir: Path) -> SelfPlaySettings:
    return SelfPlaySettings(
        problems=problems,
        run_dir=run_dir,
        model_dir=model_dir,
        max_problems=3,
        n=4,
        max_tokens=48,
        temperature=1.0,
        seed=1,
        max_pass_rate=MAX_PASS_RATE,
        dpo=DPOSettings(max_steps=1, batch_size=2),
    )


@pytest.fixture(scope="module")
async def selfplay_run(
    rg_config: RolegraphConfig,
    model_dir: Path,
    adapter_registry: AdapterRegistry,
    bwrap_pool: SandboxPool,
    tmp_path_factory: pytest.TempPathFactory,
) -> SelfPlayRun:
    """One self-play round on a math500 problem, a HumanEval problem and an easy code problem."""
    tmp = tmp_path_factory.mktemp("selfplay")
    problems = _problem_file(tmp / "problems.jsonl")
    run_dir = tmp / "run"
    async with EndpointPool(rg_config) as pool:
        play = SelfPlay(pool, _settings(problems, run_dir, model_dir), adapter_registry, sandbox=bwrap_pool)
        try:
            report = await play.run()
        finally:
            play.close()
        assert report.adapter is not None, f"no DPO pairs: pass rates {report.pass_rates}"
        answer = await pool.client("local").chat(
            [{"role": "user", "content": "Hi"}],
            model=report.adapter,
            sampling=SamplingParams(max_tokens=4, temperature=0),
        )
        return SelfPlayRun(
            report=report,
            run_dir=run_dir,
            problems=problems,
            bound_after=pool.resolve("solver")[1],
            served=await pool.client("local").list_models(),
            answer_model=answer.model,
        )


async def test_selfplay_verifies_filters_pairs_trains_and_hands_off(selfplay_run: SelfPlayRun) -> None:
    report = selfplay_run.report
    # Every problem was checkable (two by sandboxed tests, one by math-verify against its answer).
    assert set(report.pass_rates) == {"easy/add", "HumanEval/0", "math500_0"}
    # Filtering follows the rules, with the configured threshold.
    for problem_id, rate in report.pass_rates.items():
        assert (problem_id in report.pairs_report.kept) == (0 < rate <= MAX_PASS_RATE), (problem_id, rate)
    assert report.pairs_report.kept and report.pairs > 0

    with Store(selfplay_run.run_dir, create=False) as store:
        episodes = {e.id: e for e in store.episodes()}
        code = episodes["selfplay-easy/add"].final_state or {}
        # The sandbox gave a verdict for every code rollout (none skipped, none a sandbox failure).
        assert len(code["verdicts"]) == 4 and set(code["verdicts"]) <= SANDBOX_STATUSES
        assert "ok" in code["verdicts"]
        rollouts = [s for s in store.steps(role="solver") if s.node == "rollout"]
        assert len(rollouts) == 3 and all(len(s.choices) == 4 for s in rollouts)
        for step in rollouts:
            rewards = [r["reward"] for r in step.rewards]
            rate = report.pass_rates[step.episode_id.removeprefix("selfplay-")]
            assert sum(rewards) / 4 == rate
            assert step.model == "smollm2-135m-instruct"  # rollouts came from the policy before training
        (run,) = store.training_runs()
        assert run.trainer == "dpo" and run.adapter_name == report.adapter
        assert run.metrics["pairs"] == report.pairs and run.hyperparams["max_steps"] == 1

    # The policy role now serves the new adapter, and vLLM answers with it.
    assert selfplay_run.bound_after == report.adapter
    assert report.adapter in selfplay_run.served and selfplay_run.answer_model == report.adapter
    assert report.handoff is not None and report.handoff.load_s < 30


async def test_selfplay_resumes_finished_rollouts_without_sampling(
    selfplay_run: SelfPlayRun, rg_config: RolegraphConfig, model_dir: Path, bwrap_pool: SandboxPool
) -> None:
    settings = _settings(selfplay_run.problems, selfplay_run.run_dir, model_dir)
    async with EndpointPool(rg_config) as pool:
        play = SelfPlay(pool, settings, sandbox=bwrap_pool)
        try:
            before = len(play.rec.store.steps())
            groups = [await play.rollouts(p) for p in load_problems(selfplay_run.problems, 3)]
            assert len(play.rec.store.steps()) == before  # nothing was sampled again
        finally:
            play.close()
    rates = {g.problem_id: g.pass_rate for g in groups if g is not None}
    assert rates == selfplay_run.report.pass_rates
    kept = [g.problem_id for g in groups if g is not None and keep_reason(g, MAX_PASS_RATE) is None]
    assert kept == selfplay_run.report.pairs_report.kept


def _config_file(path: Path, server: VLLMServer) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "endpoints": {"local": {"base_url": server.base_url}},
                "roles": {"solver": {"endpoint": "local", "model": server.model}},
            }
        )
    )
    return path


def test_distill_cli_trains_student_on_verified_traces_and_hands_off(
    selfplay_run: SelfPlayRun,
    vllm_server: VLLMServer,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLEGRAPH_HOME", str(tmp_path / "home"))
    config = _config_file(tmp_path / "config.yaml", vllm_server)
    with Store(selfplay_run.run_dir, create=False) as store:
        verified = sum(1 for s in store.steps(role="solver") for r in s.rewards if r.get("reward", 0) > 0)
        trainings_before = len(store.training_runs())
    assert verified > 0

    command = ["train", "sft", "--from", str(selfplay_run.run_dir), "--teacher-role", "solver"]
    command += ["--student-role", "solver", "--steps", "1", "--hand-off", "--config", str(config)]
    command += ["--model", str(model_dir)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert f"distilled {verified} verified solver traces into solver-v1" in result.output
    assert "solver now serves solver-v1" in result.output
    adapter_dir = tmp_path / "home" / "adapters" / "solver" / "v1"
    assert (adapter_dir / "adapter_config.json").is_file()

    with Store(selfplay_run.run_dir, create=False) as store:
        runs = store.training_runs()
        assert len(runs) == trainings_before + 1
        run = runs[-1]
        assert run.trainer == "sft" and run.inputs == [str(selfplay_run.run_dir)]
        assert run.metrics["teacher_rows"] == verified and run.adapter_path == str(adapter_dir)

    # A teacher role without verified traces is a one-line error, and nothing is trained.
    command = ["train", "sft", "--from", str(selfplay_run.run_dir), "--teacher-role", "judge"]
    bad = CliRunner().invoke(app, [*command, "--model", str(model_dir)])
    assert isinstance(bad.exception, TrainingError)
    assert "no verified completions of role 'judge'" in str(bad.exception) and bad.exception.hint
    assert not (tmp_path / "home" / "adapters" / "solver" / "v2").exists()
