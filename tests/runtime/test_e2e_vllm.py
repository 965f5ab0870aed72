"""End to end on the real vLLM server: the example YAML graph, its store and exports, kill -9 resuming."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store, export_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "critique" / "graph.yaml"

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


async def test_example_graph_runs_on_vllm_and_exports_load(
    rg_config: RolegraphConfig, tmp_path: Path
) -> None:
    summary = await run_graph(
        get_graph(EXAMPLE), rg_config, RunParams(n=2), tmp_path, concurrency=2, progress=False
    )
    assert summary.finished == 2 and summary.failed == 0
    assert set(summary.usage) == {"solver", "critic"} and summary.usage["solver"]["completion_tokens"] > 0
    with Store(tmp_path) as store:
        steps = store.steps()
        assert [s.node for s in steps if s.episode_id == "math500_2"][:2] == ["solve", "critique"]
        for step in (s for s in steps if s.kind == "role"):
            assert step.error is None and step.endpoint == "local"
            assert step.messages[-1]["role"] == "user" and step.choices[0].text
            assert step.choices[0].token_ids  # vLLM's return_token_ids made it into the store
            assert step.prompt_tokens > 0 and step.latency_s > 0
        critic = next(s for s in steps if s.role == "critic")
        assert critic.sampling["max_tokens"] == 64  # the spec role's own default (the critic has no binding)
        assert critic.choices[0].parsed == {"text": critic.choices[0].text.strip()}
        for episode in store.episodes():
            assert episode.final_state is not None and episode.final_state["solution"] is not None
            assert set(episode.rewards) == {"correct", "accepted"}
    for fmt in ("raw", "sft", "grpo"):
        out = tmp_path / f"{fmt}.parquet"
        count = export_run(tmp_path, out, fmt=fmt).rows
        rows = load_dataset("parquet", data_files=str(out), split="train")
        assert len(rows) == count > 0
    assert (
        "messages"
        in load_dataset("parquet", data_files=str(tmp_path / "raw.parquet"), split="train").column_names
    )


def _finished(run_dir: Path) -> dict[str, tuple[float, str]]:
    """Finished episodes, read by a separate connection while the run may still be writing."""
    db_path = run_dir / "store.sqlite"
    if not db_path.exists():
        return {}
    db = sqlite3.connect(db_path, timeout=10)
    try:
        rows = db.execute(
            "SELECT id, finished_at, final_state FROM episodes WHERE status = 'finished'"
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}
    finally:
        db.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_kill_9_mid_run_loses_nothing_and_resumes(vllm_server: object, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "endpoints": {"local": {"base_url": vllm_server.base_url}},  # type: ignore[attr-defined]
                "roles": {
                    "solver": {"endpoint": "local", "sampling": {"max_tokens": 48}},
                    "critic": {"endpoint": "local", "sampling": {"max_tokens": 24}},
                },
            }
        )
    )
    run_dir = tmp_path / "run"
    n = 6
    command = [sys.executable, "-c", "from rolegraph.cli.app import main; main()", "run", str(EXAMPLE)]
    command += ["--n", str(n), "--run-dir", str(run_dir), "--config", str(config), "--concurrency", "2"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(_finished(run_dir)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _finished(run_dir)
    assert 2 <= len(before) < n, "the kill should land mid-run"

    with Store(run_dir) as store:
        assert store.integrity_check() == "ok"
        unfinished = [e.id for e in store.episodes() if e.status != "finished"]
    assert unfinished, "some episodes were in flight when the run was killed"

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    after = _finished(run_dir)
    assert len(after) == n
    for episode_id, record in before.items():
        assert after[episode_id] == record  # finished episodes were skipped, not redone
    with Store(run_dir) as store:
        assert store.integrity_check() == "ok"
        episodes = store.episodes()
        assert len(episodes) == len({e.id for e in episodes}) == n
        for episode in episodes:
            nodes = [s.node for s in store.steps(episode_id=episode.id)]
            assert nodes[:2] == ["solve", "critique"], (episode.id, nodes)
            assert nodes.count("solve") <= 2  # the loop guard held across the restart
        resumed = [e for e in episodes if e.id in unfinished]
        assert all(e.attempts >= 2 for e in resumed if e.id not in before)
    checkpoints = sqlite3.connect(run_dir / "checkpoints.sqlite")
    assert checkpoints.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    json.loads(after[unfinished[0]][1])  # the resumed episodes' final states are whole JSON
