"""The CoRT commands (registered here on a bare app; the CLI registers them on `eval` and `train`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from rolegraph.cli import cort_cmd, eval_math
from rolegraph.errors import ConfigError, RolegraphError
from tests.fixtures.serving import VLLMServer


def app() -> typer.Typer:
    root = typer.Typer()
    root.command("math")(eval_math.math)
    root.command("rft")(cort_cmd.rft)
    root.command("tir-grpo")(cort_cmd.tir_grpo)
    return root


def test_bad_inputs_fail_before_any_server_starts(tmp_path: Path) -> None:
    missing = tmp_path / "none.jsonl"
    result = CliRunner().invoke(app(), ["math", str(missing)])
    assert isinstance(result.exception, RolegraphError) and "does not exist" in result.exception.message
    unanswered = tmp_path / "q.jsonl"
    unanswered.write_text(json.dumps({"problem": "1+1?"}) + "\n")
    result = CliRunner().invoke(app(), ["math", str(unanswered), "--tir"])
    assert isinstance(result.exception, ConfigError) and "answer" in result.exception.message
    result = CliRunner().invoke(app(), ["rft", "--problems", str(unanswered), "--train-role", "nobody"])
    assert isinstance(result.exception, ConfigError) and "nobody" in result.exception.message


@pytest.mark.timeout(600)
def test_eval_math_tir_reports_both_solvers(tmp_path: Path, vllm_server: VLLMServer) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"problem": "What is 2 + 3?", "answer": "5"}) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "endpoints": {"local": {"base_url": vllm_server.base_url}},
                "roles": {
                    name: {"endpoint": "local", "model": vllm_server.model}
                    for name in ("cort_solver", "solver")
                },
            }
        )
    )
    args = ["math", str(problems), "--tir", "--n", "1", "--max-tokens", "24", "--sandbox", "bwrap"]
    args += ["--run-dir", str(tmp_path / "run"), "--config", str(config), "--seed", "0"]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    assert "CoRT metrics" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith(("│ tir", "│ plain"))]
    assert len(rows) == 2 and all(row.split("│")[3].strip() in ("0%", "100%") for row in rows)
