"""Every command checks its inputs before it trains or starts a server: a bad input is one line, exit 2.

The autouse `no_servers` fixture fails any test whose command reaches an endpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rolegraph.store import STORE_FILE
from tests.cli.conftest import Cli, Outcome

SPEC = """
name: tiny
roles:
  critic: {prompt: critic.md, parser: text}
state: {problem: str, answer: str, verdict: str}
inputs: {items: [{problem: "1+1"}]}
nodes:
  solve: {role: solver, output: answer}
  critique: {role: critic, output: verdict}
edges: [[START, solve], [solve, critique], [critique, END]]
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "critic.md").write_text("Is {answer} right for {problem}? Say good or bad.")
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- rolegraph run ------------------------------------------------------------------------------------------
def test_run_rejects_unknown_graphs_and_broken_specs(cli: Cli, tmp_path: Path, spec: Path) -> None:
    cli("run", "promptcott", "--n", "1", "--run-dir", tmp_path / "r").one_line_error(
        "unknown graph 'promptcott'", "promptcot"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(SPEC.replace("role: critic", "role: critik"))
    cli("run", broken, "--n", "1", "--run-dir", tmp_path / "r").one_line_error("critik", "graph check")
    cli("run", tmp_path / "none.yaml", "--n", "1", "--run-dir", tmp_path / "r").one_line_error(
        "does not exist"
    )


def test_run_rejects_unknown_set_keys_listing_the_known_ones(cli: Cli, tmp_path: Path) -> None:
    line = cli(
        "run", "promptcot", "--n", "1", "--run-dir", tmp_path / "r", "--set", "colour=red"
    ).one_line_error("no option 'colour'")
    for key in ("seeds", "difficulty", "k"):
        assert key in line.split("fix:")[1]
    cli("run", "promptcot", "--n", "1", "--run-dir", tmp_path / "r", "--set", "k=0").one_line_error(
        "--set k", "greater than or equal to 1"
    )
    cli("run", "promptcot", "--n", "1", "--run-dir", tmp_path / "r", "--set", "k").one_line_error(
        "bad --set 'k'", "KEY=VALUE"
    )


def test_run_rejects_unknown_roles_but_knows_the_specs_own(cli: Cli, tmp_path: Path, spec: Path) -> None:
    cli("run", spec, "--n", "1", "--run-dir", tmp_path / "r", "--role", "sovler=local").one_line_error(
        "unknown role 'sovler'", "critic", "solver"
    )
    cli("run", "promptcot", "--n", "1", "--run-dir", tmp_path / "r", "--role", "critic=local").one_line_error(
        "unknown role 'critic'"
    )
    cli(
        "run", spec, "--n", "1", "--run-dir", tmp_path / "r", "--prompts-dir", tmp_path / "nope"
    ).one_line_error("--prompts-dir")


# --- rolegraph loop -----------------------------------------------------------------------------------------
def test_loop_checks_its_graph_trainer_role_and_options(
    cli: Cli, tmp_path: Path, spec: Path, model_dir: Path
) -> None:
    base = ["loop", spec, "--run-dir", tmp_path / "r", "--model", model_dir]
    cli(*base, "--train-role", "judge").one_line_error("graph 'tiny' has no role 'judge'", "solver, critic")
    cli(*base, "--trainer", "ppo").one_line_error("unknown trainer 'ppo'")
    cli(*base, "--train-in", "cloud").one_line_error("--train-in")
    cli("loop", "promptcot", "--set", "colour=red", "--model", model_dir).one_line_error("no option 'colour'")
    cli(*base, "--role", "sovler=local").one_line_error("unknown role 'sovler'")
    broken = tmp_path / "broken.yaml"
    broken.write_text(SPEC.replace("[critique, END]", "[critique, solve]"))
    cli("loop", broken, "--model", model_dir).one_line_error("cycle")


# --- rolegraph train em -------------------------------------------------------------------------------------
def test_em_checks_the_seed_file(cli: Cli, tmp_path: Path, model_dir: Path) -> None:
    def em(seeds: Path, *more: str) -> Outcome:
        return cli("train", "em", "--seeds", seeds, "--run-dir", tmp_path / "em", "--model", model_dir, *more)

    em(tmp_path / "missing.jsonl").one_line_error("missing.jsonl", "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1"}\n{not json\n')
    em(bad).one_line_error("line 2", "not valid JSON")
    em(_jsonl(tmp_path / "q.jsonl", [{"question": "1+1"}])).one_line_error("line 1 has no 'problem'")
    em(_jsonl(tmp_path / "empty.jsonl", [])).one_line_error("has no problems")
    good = _jsonl(tmp_path / "seeds.jsonl", [{"problem": "1+1", "answer": "2"}])
    em(good, "--role", "writer=local").one_line_error("unknown role 'writer'")
    cli("train", "em", "--seeds", good, "--model", tmp_path / "nomodel").one_line_error(
        "--model", "config.json"
    )


# --- rolegraph train selfplay -------------------------------------------------------------------------------
def test_selfplay_checks_problems_and_roles(cli: Cli, tmp_path: Path, model_dir: Path) -> None:
    problems = _jsonl(tmp_path / "p.jsonl", [{"problem": "1+1", "answer": "2"}])

    def selfplay(source: Path, *more: str) -> Outcome:
        return cli(
            "train",
            "selfplay",
            "--problems",
            source,
            "--run-dir",
            tmp_path / "sp",
            "--model",
            model_dir,
            *more,
        )

    selfplay(tmp_path / "missing.jsonl").one_line_error("does not exist")
    (tmp_path / "not-a-run").mkdir()
    selfplay(tmp_path / "not-a-run").one_line_error("holds no rolegraph run")
    selfplay(_jsonl(tmp_path / "q.jsonl", [{"question": "x"}])).one_line_error("line 1 has no 'problem'")
    selfplay(problems, "--policy-role", "sovler").one_line_error("--policy-role", "unknown role 'sovler'")
    selfplay(problems, "--teacher-role", "teach").one_line_error("--teacher-role", "unknown role 'teach'")


# --- rolegraph train sft / dpo / grpo -----------------------------------------------------------------------
def test_sft_checks_its_source_and_roles(cli: Cli, tmp_path: Path, model_dir: Path) -> None:
    rows = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "1+1?", "completion": "2"}])
    cli("train", "sft", "--model", model_dir).one_line_error("exactly one of --data FILE or --from RUN_DIR")
    cli("train", "sft", "--data", rows, "--from", tmp_path).one_line_error("exactly one of")
    cli("train", "sft", "--data", tmp_path / "none.jsonl").one_line_error("none.jsonl does not exist")
    cli("train", "sft", "--data", rows, "--student-role", "pupil").one_line_error("unknown role 'pupil'")
    cli("train", "sft", "--from", tmp_path, "--model", model_dir).one_line_error(
        "not a rolegraph run directory"
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / STORE_FILE).touch()
    cli("train", "sft", "--from", run_dir, "--teacher-role", "master").one_line_error("unknown role 'master'")


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_file_trainers_check_the_export_and_the_role(
    cli: Cli, tmp_path: Path, model_dir: Path, method: str
) -> None:
    def train(data: Path, *more: str) -> Outcome:
        return cli("train", method, "--data", data, "--model", model_dir, *more)

    train(tmp_path / "none.jsonl").one_line_error("none.jsonl does not exist", f"--format {method}")
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"text": "hello"}])
    train(wrong).one_line_error("row 1", "missing column", "prompt")
    good = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}])
    train(good, "--train-role", "sovler").one_line_error("--train-role", "unknown role 'sovler'")
    train(good, "--role", "solver=far:x").one_line_error("unknown endpoint 'far'")


def test_gpu_training_without_a_gpu_is_refused_before_training(
    cli: Cli, tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    good = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}])
    cli("train", "dpo", "--data", good, "--model", model_dir, "--device", "gpu").one_line_error(
        "no CUDA GPU", "--device cpu"
    )
    config = tmp_path / "config.yaml"
    config.write_text("train: {device: gpu}\n")
    cli("train", "dpo", "--data", good, "--model", model_dir, "--config", config).one_line_error(
        "no CUDA GPU"
    )


def test_the_console_script_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The real entry point in a fresh process (as a user runs it): no traceback, exit code 2."""
    command = [sys.executable, "-c", "from rolegraph.cli.app import main; main()"]
    command += ["train", "em", "--seeds", str(tmp_path / "missing.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], result.stderr
    assert f"{tmp_path / 'missing.jsonl'} does not exist" in lines[0]
