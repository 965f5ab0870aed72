"""A corrupt or truncated store: one line naming the file from every command, and the file is never written.
Also what `rolegraph runs check` finds in a run that was written wrong."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rolegraph.store import Step, Store
from rolegraph.store.check import check_run
from tests.faults.conftest import Faults, in_process

pytestmark = [pytest.mark.timeout(900)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _written_run(run_dir: Path) -> None:
    """A finished run of a few dozen pages, so damage lands on b-tree pages."""
    with Store(run_dir) as store:
        store.start_run("critique", {}, 0, {})
        for index in range(8):
            episode = f"math500_{index}"
            store.begin_episode(episode, {"problem": "x" * 500})
            for node in ("solve", "critique"):
                step = _step(episode, 1, f"{episode}-{node}", node)
                store.record_step(replace(step, messages=[{"role": "user", "content": "y" * 2000}]))
            store.finish_episode(episode, {"answer": "1"}, kept=True)


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_store_gives_one_line_and_is_never_modified(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = Faults(tmp_path, "http://127.0.0.1:9/v1")  # no command may reach an endpoint
    cli = in_process(monkeypatch, capsys)
    run_dir = tmp_path / "run"
    _written_run(run_dir)
    assert check_run(run_dir) == []
    store = run_dir / "store.sqlite"
    size = store.stat().st_size
    with store.open("r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            f.write(os.urandom(4096))  # garbage over b-tree pages
    digest = _digest(store)
    commands = [
        faults.run_args(run_dir, 2),
        ["runs", "show", str(run_dir)],
        ["runs", "show", str(run_dir), "--episode", "math500_2"],
        ["export", str(run_dir), "--format", "sft", "--out", str(tmp_path / "sft.jsonl")],
    ]
    for args in commands:
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith(f"error: the store {store} is damaged") and "(fix: " in lines[0], lines[0]
        assert _digest(store) == digest, f"`{' '.join(args)}` modified the damaged store"
    check = cli("runs", "check", run_dir)
    assert check.returncode == 1 and check.stdout.count("\n") == 1, check.stdout
    assert f"{store} fails SQLite's integrity check" in check.stdout
    listed = cli("runs", "list", tmp_path)
    assert listed.returncode == 0 and "damaged" in listed.stdout  # one damaged run does not hide the others
    assert _digest(store) == digest


def _step(episode: str, attempt: int, task: str, node: str = "solve") -> Step:
    return Step(
        id=0, episode_id=episode, attempt=attempt, kind="role", node=node, role="solver", checkpoint=task
    )


def test_runs_check_finds_steps_recorded_twice_missing_steps_and_stale_exports(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.start_run("critique", {}, 0, {})
        store.begin_episode("a", {})
        store.record_step(_step("a", 1, "task-1"))
        store.begin_episode("a", {})  # a second writer began the same episode: attempt 2 ...
        store.record_step(_step("a", 1, "task-1"))  # ... while the first kept recording as current
        store.record_step(_step("a", 2, "task-1"))
        store.finish_episode("a", {}, kept=True)
        store.begin_episode("b", {})
        store.finish_episode("b", {}, kept=True)
    export = tmp_path / "sft.jsonl"
    export.write_text("{}\n")
    old = time.time() - 3600
    os.utime(export, (old, old))
    kinds = sorted(p.kind for p in check_run(tmp_path))
    assert kinds == ["duplicate", "export", "steps"], check_run(tmp_path)
    export.touch()
    assert sorted(p.kind for p in check_run(tmp_path)) == ["duplicate", "steps"]
