"""Fault injection on real processes: the `rolegraph` CLI in a subprocess against the session's vLLM server,
with signals, a full disk, a dying endpoint and damaged files. `rolegraph runs check` is the oracle."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "critique" / "graph.yaml"
CLI = [sys.executable, "-c", "from rolegraph.cli.app import main; main()"]


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "ROLEGRAPH_HOME": str(home), "COLUMNS": "200"}


def run_cli(*args: str | Path, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=cli_env(home)
    )


def in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`rolegraph ARGS...` through the console entry point, in this process (commands that start nothing)."""
    from rolegraph.cli import run_cmd
    from rolegraph.cli.app import main

    monkeypatch.setattr(run_cmd.console, "width", 200)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "argv", ["rolegraph", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main()
        out, err = capsys.readouterr()
        code = info.value.code
        return subprocess.CompletedProcess(
            list(map(str, args)), code if isinstance(code, int) else 1, out, err
        )

    return run


@dataclasses.dataclass
class Faults:
    """A config bound to the session's server (or a proxy of it) and the way to run the CLI on it."""

    tmp: Path
    base_url: str
    logs: dict[int, Path] = dataclasses.field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    def config(self, endpoint: dict[str, Any] | None = None, *, tokens: int = 6) -> Path:
        """A config whose endpoint `local` is the session's server unless given; every call generates exactly
        `tokens` tokens (vLLM's `min_tokens`), a run is a few seconds of model calls, or longer on demand."""
        path = self.tmp / f"config-{len(list(self.tmp.glob('config-*')))}.yaml"
        local = endpoint or {"base_url": self.base_url}
        sampling = {"max_tokens": tokens, "extra": {"min_tokens": tokens}}
        roles = {role: {"endpoint": "local", "sampling": sampling} for role in ("solver", "critic")}
        path.write_text(yaml.safe_dump({"endpoints": {"local": local}, "roles": roles}))
        return path

    def run_args(self, run_dir: Path, n: int, config: Path | None = None, *extra: str) -> list[str]:
        config = config or self.config()
        args = ["run", str(EXAMPLE), "--n", str(n), "--run-dir", str(run_dir), "--config", str(config)]
        return [*args, "--concurrency", "1", *extra]

    def start(self, run_dir: Path, n: int, config: Path | None = None, *extra: str) -> subprocess.Popen[str]:
        """Start `rolegraph run` in the background; its output goes to `self.log(process)`."""
        log = self.tmp / f"{run_dir.name}-{time.monotonic_ns()}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [*CLI, *self.run_args(run_dir, n, config, *extra)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=cli_env(self.home),
            )
        self.logs[process.pid] = log
        return process

    def log(self, process: subprocess.Popen[str]) -> str:
        return self.logs[process.pid].read_text()

    def run(
        self, run_dir: Path, n: int, config: Path | None = None, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*self.run_args(run_dir, n, config, *extra), home=self.home)

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, home=self.home)


@pytest.fixture
def faults(vllm_server: Any, tmp_path: Path) -> Faults:
    return Faults(tmp_path, vllm_server.base_url)


def query(run_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the run's store, read-only (never blocks the writer); [] before it exists."""
    path = run_dir / "store.sqlite"
    if not path.is_file():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        db.close()


def finished(run_dir: Path) -> dict[str, tuple[Any, ...]]:
    """Finished episodes: id → (finished_at, final_state)."""
    rows = query(run_dir, "SELECT id, finished_at, final_state FROM episodes WHERE status = 'finished'")
    return {r[0]: (r[1], r[2]) for r in rows}


def wait_until(done: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 300) -> None:
    """Poll `done` every 20 ms while the process runs; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before the fault"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def assert_sound(faults: Faults, run_dir: Path) -> None:
    """The oracle: `rolegraph runs check` finds nothing wrong."""
    check = faults.cli("runs", "check", run_dir)
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check.stdout + check.stderr


def assert_resumed(faults: Faults, run_dir: Path, n: int, before: dict[str, tuple[Any, ...]]) -> None:
    """All n episodes finished once, those finished before the fault untouched, nothing recorded twice."""
    after = finished(run_dir)
    assert len(after) == n, after.keys()
    for episode, record in before.items():
        assert after[episode] == record, episode
    assert_sound(faults, run_dir)
    assert query(run_dir, "SELECT COUNT(*), COUNT(DISTINCT id) FROM episodes") == [(n, n)]
    for episode, (_, state) in after.items():
        nodes = Counter(
            r[0]
            for r in query(
                run_dir, f"SELECT node FROM steps WHERE episode_id = '{episode}' AND superseded = 0"
            )
        )
        # One current step per node visit of the episode's final state: a node recorded twice breaks it.
        assert nodes == Counter(json.loads(state)["_visits"]), (episode, nodes, state)
