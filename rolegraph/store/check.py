"""`rolegraph runs check`: is a run directory sound? Reads only (read-only SQLite connections, no lock).

It checks SQLite integrity of the store and the checkpoints; that every finished episode has its steps; that
no step is current twice (one LangGraph task recorded by two attempts); that the checkpoints agree with the
store (every current step of a finished episode, or of an earlier attempt, ran in a task the checkpoints
completed; every checkpointed episode is in the store); and that exports in the run directory are not older
than the run's last record.
"""

from __future__ import annotations

import dataclasses
import datetime
import sqlite3
from collections import defaultdict
from pathlib import Path

from rolegraph.store.db import STORE_FILE, damage

CHECKPOINT_FILE = "checkpoints.sqlite"
EXPORT_SUFFIXES = (".jsonl", ".parquet")
ERROR_CHANNEL = "__error__"
"""The channel LangGraph records a failed task's exception on; such a task did not complete."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a run directory."""

    kind: str
    message: str


def check_run(run_dir: Path | str) -> list[Problem]:
    """Every problem found in `run_dir`; an empty list means the run is sound."""
    run_dir = Path(run_dir)
    store_path = run_dir / STORE_FILE
    if not store_path.is_file():
        return [Problem("missing", f"no {STORE_FILE} in {run_dir}")]
    problems = [
        Problem("integrity", f"{path} fails SQLite's integrity check: {answer}")
        for path in (store_path, run_dir / CHECKPOINT_FILE)
        if path.is_file() and (answer := _integrity(path)) is not None
    ]
    if problems:
        return problems  # nothing more can be trusted
    store = _connect(store_path)
    try:
        problems += _episodes_have_steps(store)
        tasks = _completed_tasks(run_dir / CHECKPOINT_FILE)
        problems += _steps_agree(store, tasks)
        problems += _threads_known(store, tasks)
        problems += _exports_fresh(store, run_dir)
    finally:
        store.close()
    return problems


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)


def _integrity(path: Path) -> str | None:
    """None when the file passes `PRAGMA integrity_check`, else its first complaint."""
    quick = damage(path)
    if quick is not None:
        return quick
    db = _connect(path)
    try:
        answer = str(db.execute("PRAGMA integrity_check").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        db.close()
    return None if answer == "ok" else answer.splitlines()[0]


def _episodes_have_steps(store: sqlite3.Connection) -> list[Problem]:
    rows = store.execute(
        "SELECT e.id FROM episodes e WHERE e.status = 'finished' AND NOT EXISTS"
        " (SELECT 1 FROM steps s WHERE s.episode_id = e.id AND s.superseded = 0) ORDER BY e.id"
    ).fetchall()
    return [Problem("steps", f"finished episode {r[0]} has no current steps") for r in rows]


def _completed_tasks(path: Path) -> dict[str, set[str]] | None:
    """Episode (thread) → the ids of its tasks that completed on the path to its latest checkpoint (tasks of
    subgraphs: all that completed); None without a checkpoint file."""
    if not path.is_file():
        return None
    db = _connect(path)
    try:
        parents: dict[tuple[str, str], str | None] = {}
        latest: dict[str, str] = {}
        for thread, checkpoint, parent in db.execute(
            "SELECT thread_id, checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE checkpoint_ns = ''"
            " ORDER BY thread_id, checkpoint_id"
        ):
            parents[(thread, checkpoint)] = parent
            latest[thread] = checkpoint  # ids are time-ordered (uuid6)
        writes: dict[tuple[str, str], set[str]] = defaultdict(set)
        nested: dict[str, set[str]] = defaultdict(set)
        for thread, namespace, checkpoint, task in db.execute(
            "SELECT DISTINCT thread_id, checkpoint_ns, checkpoint_id, task_id FROM writes w WHERE NOT EXISTS"
            " (SELECT 1 FROM writes x WHERE x.thread_id = w.thread_id AND x.checkpoint_ns = w.checkpoint_ns"
            " AND x.checkpoint_id = w.checkpoint_id AND x.task_id = w.task_id AND x.channel = ?)",
            (ERROR_CHANNEL,),
        ):
            if namespace:
                nested[thread].add(task)
            else:
                writes[(thread, checkpoint)].add(task)
    finally:
        db.close()
    out: dict[str, set[str]] = {}
    for thread, checkpoint in latest.items():
        done = set(nested.get(thread, set()))
        cursor: str | None = checkpoint
        while cursor is not None:
            done |= writes.get((thread, cursor), set())
            cursor = parents.get((thread, cursor))
        out[thread] = done
    return out


def _steps_agree(store: sqlite3.Connection, tasks: dict[str, set[str]] | None) -> list[Problem]:
    problems: list[Problem] = []
    status = {
        r[0]: (r[1], r[2]) for r in store.execute("SELECT id, status, attempts FROM episodes").fetchall()
    }
    attempts_of_task: dict[tuple[str, str], set[int]] = defaultdict(set)
    rows = store.execute(
        "SELECT id, episode_id, attempt, node, checkpoint FROM steps"
        " WHERE superseded = 0 AND checkpoint IS NOT NULL ORDER BY id"
    ).fetchall()
    for step_id, episode, attempt, node, task in rows:
        attempts_of_task[(episode, task)].add(attempt)
        if tasks is None or episode not in status:
            continue
        state, latest_attempt = status[episode]
        if (state == "finished" or attempt < latest_attempt) and task not in tasks.get(episode, set()):
            problems.append(
                Problem(
                    "checkpoints",
                    f"episode {episode}: step {step_id} (node {node}, attempt {attempt}) is current, but the"
                    " checkpoints never completed its node",
                )
            )
    for (episode, task), attempts in sorted(attempts_of_task.items()):
        if len(attempts) > 1:
            listed = ", ".join(str(a) for a in sorted(attempts))
            problems.append(
                Problem(
                    "duplicate", f"episode {episode}: task {task} is recorded as current by attempts {listed}"
                )
            )
    return problems


def _threads_known(store: sqlite3.Connection, tasks: dict[str, set[str]] | None) -> list[Problem]:
    if tasks is None:
        return []
    known = {r[0] for r in store.execute("SELECT id FROM episodes")}
    return [
        Problem("checkpoints", f"the checkpoints hold episode {thread}, which the store does not")
        for thread in sorted(set(tasks) - known)
    ]


def _exports_fresh(store: sqlite3.Connection, run_dir: Path) -> list[Problem]:
    last = store.execute(
        "SELECT MAX(t) FROM (SELECT MAX(COALESCE(finished_at, started_at)) AS t FROM episodes"
        " UNION ALL SELECT MAX(started_at + latency_s) FROM steps"
        " UNION ALL SELECT MAX(created_at) FROM training_runs)"
    ).fetchone()[0]
    if last is None:
        return []
    when = datetime.datetime.fromtimestamp(last).strftime("%Y-%m-%d %H:%M:%S")
    return [
        Problem("export", f"export {path} is older than the run's last record ({when}): export it again")
        for path in sorted(run_dir.iterdir())
        if path.suffix in EXPORT_SUFFIXES and path.is_file() and path.stat().st_mtime < last
    ]
