"""PromptCoT 2.0 EM through the CLI on the real vLLM server and real TRL: an iteration killed with `kill -9`
during the E-step resumes without losing or repeating anything; a re-run continues with the next iteration,
warm-started from the previous adapters."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rolegraph.store import Store
from rolegraph.trainers.em import P_ROLE, Q_ROLE, iteration_dirs, iteration_reports, render_em_report
from tests.data import shared_file
from tests.fixtures.serving import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.train]
ROOT = Path(__file__).resolve().parents[2]
K = 2


@dataclass(frozen=True)
class EMRun:
    run_dir: Path
    command: list[str]
    env: dict[str, str]
    before_kill: list[tuple[int, str, str]]
    """(step id, episode, node) of the E-step steps recorded when the first run was killed."""
    finished_before_kill: int


def _files(tmp: Path, server: VLLMServer) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in shared_file("math500_dev.jsonl").read_text().splitlines()[:2]]
    rows[0]["concepts"] = ["polar coordinates", "trigonometry"]  # the second seed has none: it gets extracted
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp / "config.yaml"
    binding = {"endpoint": "local", "model": server.model}
    roles = ("rationale_writer", "proposer", "concept_extractor")
    config.write_text(
        yaml.safe_dump(
            {"endpoints": {"local": {"base_url": server.base_url}}, "roles": dict.fromkeys(roles, binding)}
        )
    )
    return seeds, config


def _e_steps(e_dir: Path) -> list[tuple[int, str, str]]:
    """E-step steps recorded so far, read straight from SQLite while the CLI writes (WAL)."""
    if not (e_dir / "store.sqlite").is_file():
        return []
    db = sqlite3.connect(f"file:{e_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return [tuple(r) for r in db.execute("SELECT id, episode_id, node FROM steps ORDER BY id")]
    except sqlite3.OperationalError:  # the schema is not written yet
        return []
    finally:
        db.close()


@pytest.fixture(scope="module")
def em_run(vllm_server: VLLMServer, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> EMRun:
    """`train em --iterations 1`, killed with SIGKILL once the E-step has recorded its first steps."""
    tmp = tmp_path_factory.mktemp("em")
    seeds, config = _files(tmp, vllm_server)
    run_dir = tmp / "run"
    command = [sys.executable, "-c", "from rolegraph.cli.app import main; main()", "train", "em"]
    command += ["--seeds", str(seeds), "--iterations", "1", "--run-dir", str(run_dir), "--num-seeds", "2"]
    command += ["--k", str(K), "--max-tokens", "24", "--steps", "1", "--config", str(config)]
    command += ["--model", str(model_dir)]
    env = {**os.environ, "ROLEGRAPH_HOME": str(tmp / "home")}
    log = tmp / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    e_dir = iteration_dirs(run_dir, 1).e
    deadline = time.monotonic() + 300
    while not _e_steps(e_dir) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, log.read_text()[-2000:]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with Store(e_dir, create=False) as store:
        finished = len(store.finished_ids())
    return EMRun(run_dir, command, env, _e_steps(e_dir), finished)


def test_kill_9_during_the_e_step_resumes_losing_and_repeating_nothing(
    em_run: EMRun, vllm_server: VLLMServer
) -> None:
    dirs = iteration_dirs(em_run.run_dir, 1)
    assert em_run.before_kill and em_run.finished_before_kill == 0, "the kill should land mid-E-step"
    with Store(em_run.run_dir, create=False) as store:
        assert store.training_runs() == []

    resumed = subprocess.run(
        em_run.command, cwd=ROOT, env=em_run.env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "iteration 1:" in resumed.stdout

    # The seed without concepts went through an em_concepts run; it takes part when the tiny model's list
    # parsed (its output is the model's business, not what this test checks).
    with Store(em_run.run_dir / "concepts", create=False) as store:
        (extraction,) = store.episodes()
    assert extraction.status == "finished"
    seeds = {"math500_0"} | ({extraction.id} if extraction.kept else set())
    with Store(dirs.e, create=False) as store:
        assert store.integrity_check() == "ok"
        episodes = store.episodes()
        assert {e.id for e in episodes} == seeds and all(e.status == "finished" and e.kept for e in episodes)
        live = {s.id for s in store.steps()}
        for episode in episodes:
            steps = store.steps(episode_id=episode.id)
            (sample,) = [s for s in steps if s.node == "e_sample"]
            assert len(sample.choices) == K
            assert sorted(r["selected"] for r in sample.rewards) == [0.0] * (K - 1) + [1.0]
            assert all(r["log_p"] < 0 for r in sample.rewards)
            assert len([s for s in steps if s.node == "e_score"]) == K
        # Only steps of the killed attempt were superseded (their node never completed), and a sampling step
        # whose node had completed before the kill (its scoring had begun) was kept, not redone.
        superseded = {s.id for s in store.steps(include_superseded=True)} - live
        assert superseded <= {i for i, _, _ in em_run.before_kill}
        scored = {episode for _, episode, node in em_run.before_kill if node == "e_score"}
        kept = [i for i, episode, node in em_run.before_kill if node == "e_sample" and episode in scored]
        assert set(kept) <= live

    with Store(em_run.run_dir, create=False) as store:
        assert store.run() is not None and store.run().graph == "em"  # type: ignore[union-attr]
        runs = store.training_runs()
    assert [(r.hyperparams["em_role"], r.hyperparams["em_iteration"]) for r in runs] == [
        (Q_ROLE, 1),
        (P_ROLE, 1),
    ]
    assert all(r.hyperparams["init_adapter"] is None and "train_loss" in r.metrics for r in runs)
    (report,) = iteration_reports(em_run.run_dir)
    figures = (report.mean_best_reward, report.mean_log_p_x_before, report.mean_log_p_x_after)
    assert all(f is not None and math.isfinite(f) and f < 0 for f in figures), figures
    assert (report.q_adapter, report.p_adapter) == (runs[0].adapter_name, runs[1].adapter_name)
    # The M-step decoded with q's new adapter and scored under the base p; `after` under p's new adapter.
    with Store(dirs.m, create=False) as store:
        models = {(s.node, s.model) for s in store.steps()}
    assert models == {("m_decode", report.q_adapter), ("m_score", vllm_server.model)}
    with Store(dirs.after, create=False) as store:
        assert {s.model for s in store.steps()} == {report.p_adapter}


def test_rerun_continues_with_the_next_iteration_from_the_last_adapters(em_run: EMRun) -> None:
    with Store(em_run.run_dir, create=False) as store:
        first = {r.hyperparams["em_role"]: r for r in store.training_runs()}
    assert set(first) == {Q_ROLE, P_ROLE}, "runs after the kill-and-resume test"

    again = subprocess.run(
        em_run.command, cwd=ROOT, env=em_run.env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "iteration 2:" in again.stdout and "iteration 1:" not in again.stdout

    with Store(em_run.run_dir, create=False) as store:
        second = [r for r in store.training_runs() if r.hyperparams["em_iteration"] == 2]
    assert len(second) == 2
    for record in second:
        start = first[record.hyperparams["em_role"]]
        assert record.hyperparams["init_adapter_name"] == start.adapter_name
        assert record.hyperparams["init_adapter"] == start.adapter_path
    # Iteration 2's E-step sampled from iteration 1's q, restored by the re-run's hand-off.
    with Store(iteration_dirs(em_run.run_dir, 2).e, create=False) as store:
        samples = [s for s in store.steps() if s.node == "e_sample"]
    assert samples and {s.model for s in samples} == {first[Q_ROLE].adapter_name}

    reports = iteration_reports(em_run.run_dir)
    assert [r.iteration for r in reports] == [1, 2]
    console = Console(record=True, width=250)
    render_em_report(em_run.run_dir, console)
    text = console.export_text()
    assert re.search(
        rf"│ 2 +│ {Q_ROLE} +│ {reports[1].q_adapter} +│ {first[Q_ROLE].adapter_name} +│", text
    ), text
    assert f"{reports[1].mean_log_p_x_after:.2f}" in text
