"""`rolegraph eval math|code` end to end: the real vLLM server, math-verify and the real sandbox.

Tiny on purpose (2 problems, 2 samples, 32 tokens): the built-in model rarely solves anything, so these tests
check the bookkeeping (bindings side by side, the run and its summary, infrastructure failures apart), not
accuracy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from rolegraph.cli import eval_tasks
from rolegraph.errors import ConfigError, SandboxError
from rolegraph.eval import EvalSettings, evaluate, read_report, solver_bindings
from rolegraph.eval.report import SUMMARY_FILE
from rolegraph.store import Store
from tests.fixtures.serving import VLLMServer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ADD = {
    "task_id": "add",
    "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}
ECHO = {"id": "echo", "problem": "Print the input line back.", "tests": [{"input": "hi\n", "output": "hi\n"}]}


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("math")(eval_tasks.math)
    app.command("code")(eval_tasks.code)
    return app


def two_endpoints(tmp_path: Path, server: VLLMServer) -> Path:
    """A config with two endpoints on the session server, so two bindings of one model stay distinct."""
    path = tmp_path / "config.yaml"
    endpoints = {name: {"base_url": server.base_url} for name in ("a", "b")}
    path.write_text(yaml.safe_dump({"endpoints": endpoints, "roles": {"solver": {"endpoint": "a"}}}))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_math_compares_two_bindings_in_one_run(tmp_path: Path, vllm_server: VLLMServer) -> None:
    run_dir = tmp_path / "run"
    command = [
        "math", "--file", str(DATA / "math500_dev.jsonl"), "--n", "2", "--k", "2", "--max-tokens", "32",
        "--config", str(two_endpoints(tmp_path, vllm_server)), "--run-dir", str(run_dir),
        "--role", f"solver=a:{vllm_server.model}", "--role", "solver=b",
    ]  # fmt: skip
    result = CliRunner().invoke(cli(), command)
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert [b["label"] for b in summary["bindings"]] == [f"a:{vllm_server.model}", "b"]
    for binding in summary["bindings"]:
        assert (
            binding["problems"] == 2 and binding["samples"] == 4 and binding["models"] == [vllm_server.model]
        )
        assert 0.0 <= binding["pass1"] <= binding["pass_k"] <= 1.0
        assert 0 < binding["mean_tokens"] <= 32
    assert "math eval" in result.output and "eval_summary" in result.output
    with Store(run_dir, create=False) as store:
        episodes = store.episodes(status="finished")
        roles = {s.role for s in store.steps(kind="role")}
    assert len(episodes) == 4 and roles == {"solver@1", "solver@2"}
    again = CliRunner().invoke(cli(), command)  # a re-run resumes: nothing is sampled again
    assert again.exit_code == 0 and "4/4" in again.output
    changed = CliRunner().invoke(cli(), [*command, "--temperature", "0.2"])
    assert isinstance(changed.exception, ConfigError) and "temperature" in changed.exception.message


def test_eval_code_runs_unit_and_stdio_tests_in_the_sandbox(tmp_path: Path, vllm_server: VLLMServer) -> None:
    problems = write_jsonl(tmp_path / "code.jsonl", [ADD, ECHO])
    config, bindings = solver_bindings(two_endpoints(tmp_path, vllm_server), [])
    settings = EvalSettings(task="code", file=problems, n=2, max_tokens=48, sandbox="bwrap")
    report = asyncio.run(evaluate(config, bindings, settings, tmp_path / "run", progress=False))
    (binding,) = report.bindings
    assert binding.scores.problems == 2 and binding.scores.unchecked_samples == 0
    with Store(tmp_path / "run", create=False) as store:
        tests = [s for s in store.steps(kind="env") if s.role == "code_tests"]
    assert len(tests) == 2 and all(s.error is None and s.response["status"] for s in tests)


def test_sandbox_failures_are_counted_apart_never_wrong(
    tmp_path: Path, vllm_server: VLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolegraph.eval import runner

    class BrokenSandbox(runner.PoolProvider):
        async def __call__(self) -> Any:
            raise SandboxError("the sandbox is down", "nothing: this test breaks it on purpose")

    monkeypatch.setattr(runner, "PoolProvider", BrokenSandbox)
    problems = write_jsonl(tmp_path / "code.jsonl", [ECHO])
    config, bindings = solver_bindings(two_endpoints(tmp_path, vllm_server), [])
    settings = EvalSettings(task="code", file=problems, n=1, max_tokens=16)
    asyncio.run(evaluate(config, bindings, settings, tmp_path / "run", progress=False))
    scores = read_report(tmp_path / "run").bindings[0].scores
    assert scores.problems == 0 and scores.unscored_problems == 1 and scores.unchecked_samples == 1
    assert scores.pass1 == 0.0 and scores.pass1_ci == (0.0, 1.0)


def test_eval_rejects_bad_input_before_any_call(tmp_path: Path) -> None:
    no_answer = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?"}])
    result = CliRunner().invoke(cli(), ["math", "--file", str(no_answer)])
    assert isinstance(result.exception, ConfigError) and "answer" in result.exception.message
    mixed = CliRunner().invoke(cli(), ["code", "--file", str(no_answer)])
    assert isinstance(mixed.exception, ConfigError) and "math problem" in mixed.exception.message
    few = CliRunner().invoke(cli(), ["math", "--file", str(no_answer), "--k", "3", "--samples", "2"])
    assert isinstance(few.exception, ConfigError) and "--samples" in few.exception.hint
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"problem": "1+1?", "answer": "2"}])
    greedy = [
        "math",
        "--file",
        str(ok),
        "--samples",
        "2",
        "--temperature",
        "0",
        "--run-dir",
        str(tmp_path / "r"),
    ]
    result = CliRunner().invoke(cli(), greedy)  # vLLM refuses n > 1 when greedy: caught before any call
    assert isinstance(result.exception, ConfigError) and "--temperature" in result.exception.hint
