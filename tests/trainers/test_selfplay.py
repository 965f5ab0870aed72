"""Self-play with DPO and distillation, end to end: real vLLM rollouts through the runtime, sandboxed code
tests, math-verify, real TRL steps, hand-off to the real server; and the CLI on a real promptcot run dir."""

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
from rolegraph.graphs.selfplay import REWARDS
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.pairs import keep_reason
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.selfplay import SelfPlay, SelfPlayReport, SelfPlaySettings
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
    assert set(report.pass_rates) == {"easy/add", "HumanEval/0", "math500_0"} and not report.skipped
    # Filtering follows the rules, with the configured threshold.
    for problem_id, rate in report.pass_rates.items():
        assert (problem_id in report.pairs_report.kept) == (0 < rate <= MAX_PASS_RATE), (problem_id, rate)
    assert report.pairs_report.kept and report.pairs > 0

    with Store(selfplay_run.run_dir, create=False) as store:
        run = store.run()
        assert run is not None and run.graph == "selfplay"
        assert {r["name"] for r in run.rewards if r["train"]} == {r.name for r in REWARDS if r.train}
        episodes = {e.id: e for e in store.episodes()}
        code = episodes["selfplay-easy/add"].final_state or {}
        # The sandbox gave a verdict for every code rollout (none skipped, none a sandbox failure).
        assert len(code["verdicts"]) == 4 and set(code["verdicts"]) <= SANDBOX_STATUSES
        assert "ok" in code["verdicts"]
        rollouts = [s for s in store.steps(role="solver") if s.node == "rollout"]
        assert len(rollouts) == 3 and all(len(s.choices) == 4 for s in rollouts)
        for step in rollouts:
            rewards = [r["passed"] for r in step.rewards]
            assert None not in rewards  # every check ran: no rollout was left unverified
            rate = report.pass_rates[step.episode_id.removeprefix("selfplay-")]
            assert sum(r or 0.0 for r in rewards) / 4 == rate
            assert step.model == "smollm2-135m-instruct"  # rollouts came from the policy before training
        # Verification ran as recorded environment calls, one per rollout.
        checks = [s for s in store.steps(kind="env") if s.node == "rollout"]
        assert sorted(s.role for s in checks) == ["code_tests"] * 8 + ["math_verify"] * 4
        assert all(s.error is None for s in checks)
        (training,) = store.training_runs()
        assert training.trainer == "dpo" and training.adapter_name == report.adapter
        assert training.metrics["pairs"] == report.pairs and training.hyperparams["max_steps"] == 1
        assert training.metrics["unverified_rollouts"] == 0 == report.unverified

    # The policy role now serves the new adapter, and vLLM answers with it.
    assert selfplay_run.bound_after == report.adapter
    assert report.adapter in selfplay_run.served and selfplay_run.answer_model == report.adapter
    assert report.handoff is not None and report.handoff.load_s < 30


async def test_selfplay_resumes_finished_rollouts_without_sampling(
    selfplay_run: SelfPlayRun, rg_config: RolegraphConfig, model_dir: Path, bwrap_pool: SandboxPool
) -> None:
    settings = _settings(selfplay_run.problems, selfplay_run.run_dir, model_dir)
    with Store(selfplay_run.run_dir, create=False) as store:
        before = len(store.steps(include_superseded=True))
    async with EndpointPool(rg_config) as pool:
        play = SelfPlay(pool, settings, sandbox=bwrap_pool)
        try:
            problems, groups, skipped = await play.rollouts()
        finally:
            play.close()
    with Store(selfplay_run.run_dir, create=False) as store:
        assert len(store.steps(include_superseded=True)) == before  # nothing was sampled or checked again
    assert [p.id for p in problems] == ["easy/add", "HumanEval/0", "math500_0"] and not skipped
    assert {g.problem_id: g.pass_rate for g in groups} == selfplay_run.report.pass_rates
    kept = [g.problem_id for g in groups if keep_reason(g, MAX_PASS_RATE) is None]
    assert kept == selfplay_run.report.pairs_report.kept


def _config_file(path: Path, server: VLLMServer, sampling: dict[str, dict[str, int]] | None = None) -> Path:
    roles = {
        role: {"endpoint": "local", "model": server.model, "sampling": values}
        for role, values in (sampling or {"solver": {}}).items()
    }
    path.write_text(yaml.safe_dump({"endpoints": {"local": {"base_url": server.base_url}}, "roles": roles}))
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
        verified = sum(1 for s in store.steps(role="solver") for r in s.rewards if (r.get("passed") or 0) > 0)
        trainings_before = len(store.training_runs())
    assert verified > 0

    command = ["train", "sft", "--from", str(selfplay_run.run_dir), "--teacher-role", "solver"]
    command += ["--student-role", "solver", "--steps", "1", "--hand-off", "--config", str(config)]
    command += ["--model", str(model_dir)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output

    with Store(selfplay_run.run_dir, create=False) as store:
        runs = store.training_runs()
        assert len(runs) == trainings_before + 1
        run = runs[-1]
        assert run.trainer == "sft" and run.inputs == [str(selfplay_run.run_dir)]
        assert run.metrics["teacher_rows"] == verified and run.metrics["unverified"] == 0
    assert run.adapter_path and (Path(run.adapter_path) / "adapter_config.json").is_file()
    assert Path(run.adapter_path).is_relative_to(tmp_path / "home")
    assert f"distilled {verified} verified solver traces into {run.adapter_name}" in result.output
    assert f"solver now serves {run.adapter_name}" in result.output

    # A teacher role without verified traces is a one-line error, and nothing is trained.
    command = ["train", "sft", "--from", str(selfplay_run.run_dir), "--teacher-role", "judge"]
    bad = CliRunner().invoke(app, [*command, "--model", str(model_dir)])
    assert isinstance(bad.exception, TrainingError)
    assert "no verified completions of role 'judge'" in str(bad.exception) and bad.exception.hint
    with Store(selfplay_run.run_dir, create=False) as store:
        assert len(store.training_runs()) == trainings_before + 1


# --- the CLI on a real promptcot run directory --------------------------------------------------------------
SOLVER_PROMPT = """<!-- system -->
You are a careful mathematician.
<!-- user -->
{{problem}}

Give only the final answer.
<!-- assistant -->
The final answer is
"""
"""A solver prompt that makes the tiny model answer at once, so the promptcot solver has a majority answer."""
PROMPTCOT_SAMPLING = {
    "concept_extractor": {"max_tokens": 48},
    "proposer": {"max_tokens": 96},
    "problem_writer": {"max_tokens": 64},
    "solver": {"max_tokens": 12},
    "judge": {"max_tokens": 8},
}


@pytest.fixture(scope="module")
def promptcot_run(vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny real promptcot run (2 episodes), made through the CLI; (run dir, config file)."""
    tmp = tmp_path_factory.mktemp("promptcot")
    prompts = tmp / "prompts"
    prompts.mkdir()
    (prompts / "solver.md").write_text(SOLVER_PROMPT)
    config = _config_file(tmp / "config.yaml", vllm_server, PROMPTCOT_SAMPLING)
    run_dir = tmp / "run"
    command = ["run", "promptcot", "--n", "2", "--run-dir", str(run_dir), "--config", str(config)]
    command += ["--prompts-dir", str(prompts), "--set", "seed_limit=2", "--set", "k=2"]
    # Keep every problem the tiny model writes: the judge's verdict and the solver's agreement do not matter.
    command += ["--set", "use_embeddings=false", "--set", "require_parsed=false", "--set", "min_agreement=0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROLEGRAPH_HOME", str(tmp / "home"))
        result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return run_dir, config


def test_selfplay_cli_checks_a_promptcot_runs_problems_against_their_majority_answers(
    promptcot_run: tuple[Path, Path], model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, config = promptcot_run
    with Store(source, create=False) as store:
        answers = {e.id: (e.final_state or {}).get("majority_answer") for e in store.episodes(kept=True)}
    assert any(answers.values()), f"the promptcot solver gave no majority answer: {answers}"

    monkeypatch.setenv("ROLEGRAPH_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "selfplay"
    command = ["train", "selfplay", "--problems", str(source), "--run-dir", str(run_dir), "--n", "4"]
    command += ["--max-tokens", "32", "--seed", "1", "--steps", "1", "--no-hand-off", "--config", str(config)]
    result = CliRunner().invoke(app, [*command, "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert f"{len(answers)} problems; pass rates:" in result.output

    with Store(run_dir, create=False) as store:
        episodes = {e.id.removeprefix("selfplay-"): e for e in store.episodes()}
        assert set(episodes) == set(answers)
        steps = store.steps()
        assert not [s for s in steps if s.node == "reference" and s.kind == "role"]  # no teacher was needed
        for problem_id, answer in answers.items():
            episode = episodes[problem_id]
            if answer is None:
                assert not episode.kept and "no reference answer" in str(episode.reason)
                continue
            # The reference is the promptcot majority answer; every rollout was checked against it.
            final = episode.final_state or {}
            assert final["reference"] == answer and final["reference_source"] == "problem"
            mine = [s for s in steps if s.episode_id == episode.id]
            (rollout,) = [s for s in mine if s.node == "rollout" and s.kind == "role"]
            assert len(rollout.choices) == 4 and rollout.sampling["max_tokens"] == 32
            assert [set(r) for r in rollout.rewards] == [{"passed"}] * 4
            assert all(r["passed"] in (0.0, 1.0) for r in rollout.rewards)
            checks = [s for s in mine if s.kind == "env"]
            assert [s.role for s in checks] == ["math_verify"] * 4
            assert all(s.request["reference"] == answer and s.error is None for s in checks)


def test_distill_cli_leaves_out_and_counts_traces_whose_reward_is_unknown(
    promptcot_run: tuple[Path, Path], model_dir: Path
) -> None:
    """PromptCoT's solver traces are rewarded with the judge's verdict, which the tiny judge never gives
    (None): distillation counts them as unverified instead of treating them as failures or successes."""
    source, config = promptcot_run
    with Store(source, create=False) as store:
        episodes = {e.id: e for e in store.episodes()}
        steps = store.steps(role="solver", kind="role", finished_only=True)
    assert steps and all(episodes[s.episode_id].rewards.get("verdict", 0) is None for s in steps)
    solver = sum(len(s.choices) for s in steps)
    command = ["train", "sft", "--from", str(source), "--teacher-role", "solver", "--steps", "1"]
    result = CliRunner().invoke(app, [*command, "--config", str(config), "--model", str(model_dir)])
    assert isinstance(result.exception, TrainingError), result.output
    assert f"({solver} unverified, 0 not positive)" in str(result.exception)
