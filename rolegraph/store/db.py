"""The trajectory store: run → episode → step in one SQLite file (WAL) inside the run directory.

One writer (the runtime's event loop; the run directory's lock, `rolegraph.store.lock`, keeps it to one
process) commits after every step and every episode change, so a process killed at any moment leaves only
complete rows. An environment call's step is committed on the event loop's next turn (`record_step_soon`),
and always before its node's writes are checkpointed. Steps are never rewritten; a step whose node was
interrupted is only flagged `superseded` when its episode resumes, so readers skip it. Readers open the file
read-only, and a damaged file is never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rolegraph.errors import RolegraphError
from rolegraph.serving.types import Choice
from rolegraph.store.records import EpisodeRecord, Rewards, RunRecord, Step, TrainingRunRecord

STORE_FILE = "store.sqlite"

_ADDED_COLUMNS = {
    "runs": {"rewards": "TEXT NOT NULL DEFAULT '[]'"},
    "episodes": {"metrics": "TEXT NOT NULL DEFAULT '{}'", "error_kind": "TEXT"},
    "steps": {"error_kind": "TEXT", "checkpoint": "TEXT", "metrics": "TEXT NOT NULL DEFAULT '{}'"},
}
"""Columns newer than the first store format, added in place to stores written before them."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    graph TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    rewards TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS episodes (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 1,
    input TEXT NOT NULL,
    final_state TEXT,
    kept INTEGER,
    reason TEXT,
    rewards TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    error_kind TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL,
    -- not a foreign key: run-level calls (a graph's `prepare`) are recorded under a pseudo-episode id
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('role', 'env')),
    node TEXT NOT NULL,
    role TEXT NOT NULL,
    endpoint TEXT,
    model TEXT,
    sampling TEXT NOT NULL DEFAULT '{}',
    messages TEXT NOT NULL DEFAULT '[]',
    choices TEXT NOT NULL DEFAULT '[]',
    prompt_token_ids TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    error TEXT,
    request TEXT,
    response TEXT,
    started_at REAL NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    checkpoint TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS steps_by_episode ON steps(episode_id);
CREATE INDEX IF NOT EXISTS steps_by_role ON steps(role);
CREATE TABLE IF NOT EXISTS step_rewards (
    step_id INTEGER NOT NULL REFERENCES steps(id),
    choice INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,  -- NULL: the infrastructure could not compute it
    PRIMARY KEY (step_id, choice, name)
);
CREATE TABLE IF NOT EXISTS training_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trainer TEXT NOT NULL,
    inputs TEXT NOT NULL,
    hyperparams TEXT NOT NULL,
    metrics TEXT NOT NULL,
    adapter_name TEXT,
    adapter_version TEXT,
    adapter_path TEXT,
    created_at REAL NOT NULL
);
"""


SYNCHRONOUS = "NORMAL"
"""WAL with synchronous=NORMAL: a commit survives the process being killed (bench/store.py measures FULL)."""
SQLITE_FULL = 13


class DiskFullError(RolegraphError):
    """A write failed because the disk (or the file system holding the run directory) is full."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(
            f"the disk is full: cannot write {path}",
            "free space on that file system, then re-run the same command to resume",
        )


def disk_full(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) is SQLite's or the OS's 'no space left'."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return True
        if (
            isinstance(seen, sqlite3.Error)
            and (getattr(seen, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_FULL
        ):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file (readers, checks of a possibly damaged store)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None)


def damage(path: Path | str) -> str | None:
    """SQLite's quick check of a database file, read-only: None when sound, else the first problem."""
    try:
        db = _read_only(Path(path))
        try:
            answer = str(db.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if answer == "ok" else answer.splitlines()[0]


_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)
"""What `json.dumps(value, default=str, ensure_ascii=False)` builds on every call (~1 µs, six per step)."""


def _dumps(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) in (list, dict) and not value:  # most of an env step's columns
        return "[]" if type(value) is list else "{}"
    return _ENCODER.encode(value)


_CHOICE_FIELDS = tuple(field.name for field in dataclasses.fields(Choice))


def _choice_fields(choice: Choice) -> dict[str, Any]:
    """A choice as a dict of its fields, which hold no dataclasses: `dataclasses.asdict` would deep-copy the
    token ids first (~50 µs a choice)."""
    return {name: getattr(choice, name) for name in _CHOICE_FIELDS}


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


STEP_COLUMNS = (
    "episode_id", "attempt", "kind", "node", "role", "endpoint", "model", "sampling", "messages", "choices",
    "prompt_token_ids", "prompt_tokens", "completion_tokens", "latency_s", "error", "error_kind", "request",
    "response", "started_at", "checkpoint", "metrics",
)  # fmt: skip
"""A step row's columns, in `step_row`'s order: episode id and attempt first (the store writer reads them)."""
_INSERT_STEP = f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})"


def step_row(step: Step) -> tuple[Any, ...]:
    """The step as the values of its row (JSON-encoded where the column is JSON): what is inserted, built
    wherever the step was made, so a remote store writer only inserts."""
    return (
        step.episode_id,
        step.attempt,
        step.kind,
        step.node,
        step.role,
        step.endpoint,
        step.model,
        _dumps(step.sampling),
        _dumps(step.messages),
        _dumps([_choice_fields(c) for c in step.choices]),
        None if step.prompt_token_ids is None else _dumps(step.prompt_token_ids),
        step.prompt_tokens,
        step.completion_tokens,
        step.latency_s,
        step.error,
        step.error_kind,
        None if step.request is None else _dumps(step.request),
        None if step.response is None else _dumps(step.response),
        step.started_at,
        step.checkpoint,
        _dumps(step.metrics),
    )


class Store:
    """The SQLite store of one run directory (`RUN_DIR/store.sqlite`).

    Use one Store per process as the single writer; any number of readers may open the same file.
    """

    def __init__(self, run_dir: Path | str, *, create: bool = True) -> None:
        """Open the run's store: as its writer (`create`, the default), or read-only (`create=False`).

        A store that fails SQLite's quick check is refused with one line naming the file, and never written.
        """
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILE
        if not create and not self.path.is_file():
            raise RolegraphError(
                f"{self.run_dir} holds no rolegraph run (no {STORE_FILE})",
                "pass a directory written by `rolegraph run --run-dir DIR`",
            )
        problem = damage(self.path) if self.path.is_file() else None
        if problem is not None:
            raise RolegraphError(
                f"the store {self.path} is damaged: {problem}",
                "restore it from a copy, or start a new --run-dir (rolegraph leaves this file as it is)",
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._soon: list[Callable[[], Step]] = []
        """What `record_step_soon` queued, built and committed with the next transaction (at the latest on the
        event loop's next turn)."""
        try:
            if create:
                self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
                self._db.executescript(_SCHEMA)
                self._add_missing_columns()
            else:
                self._db = _read_only(self.path)
        except sqlite3.DatabaseError as exc:
            if disk_full(exc):
                raise DiskFullError(self.path) from None
            raise RolegraphError(
                f"cannot open the store {self.path}: {exc}",
                "check the file is a rolegraph store and not in use",
            ) from None

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    # --- plumbing -----------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction; nothing of it is visible if the process dies inside, or if the disk is
        full (DiskFullError)."""
        try:
            queued = [step_row(build()) for build in self._soon]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in queued:  # first: what was recorded before this write is committed before it
                    self._db.execute(_INSERT_STEP, row)
                yield self._db
                self._db.execute("COMMIT")
                del self._soon[: len(queued)]
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if disk_full(exc):
                raise DiskFullError(self.path) from None
            raise

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` answer ('ok' when the file is sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- runs ---------------------------------------------------------------------------------------
    def start_run(
        self,
        graph: str,
        config: dict[str, Any],
        seed: int,
        params: dict[str, Any],
        rewards: list[dict[str, Any]] | None = None,
    ) -> RunRecord:
        """Record the run on first use; on a re-run, check it is the same graph and return the stored run.

        `rewards` are the graph's declared rewards (name, weight, train), which exports train on."""
        existing = self.run()
        if existing is not None:
            if existing.graph != graph:
                raise RolegraphError(
                    f"{self.run_dir} holds a run of graph '{existing.graph}', not '{graph}'",
                    "use a new --run-dir for a different graph",
                )
            return existing
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, graph, config, seed, params, created_at, rewards)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)",
                (graph, _dumps(config), seed, _dumps(params), time.time(), _dumps(rewards or [])),
            )
        run = self.run()
        assert run is not None
        return run

    def run(self) -> RunRecord | None:
        row = self._db.execute(
            "SELECT graph, config, seed, params, created_at, rewards FROM runs WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        return RunRecord(
            graph=row[0],
            config=_loads(row[1]),
            seed=row[2],
            params=_loads(row[3]),
            created_at=row[4],
            rewards=_loads(row[5]) or [],
        )

    # --- episodes -----------------------------------------------------------------------------------
    def begin_episode(self, episode_id: str, input_state: dict[str, Any]) -> int:
        """Mark an episode running and return its attempt number (1 on first start)."""
        with self._tx() as db:
            row = db.execute("SELECT attempts, status FROM episodes WHERE id = ?", (episode_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO episodes (id, status, attempts, input, started_at)"
                    " VALUES (?, 'running', 1, ?, ?)",
                    (episode_id, _dumps(input_state), time.time()),
                )
                return 1
            if row[1] == "finished":
                raise RolegraphError(f"episode {episode_id} is already finished", "it is skipped on resume")
            attempt = int(row[0]) + 1
            db.execute(
                "UPDATE episodes SET status = 'running', attempts = ?, error = NULL WHERE id = ?",
                (attempt, episode_id),
            )
            return attempt

    def finish_episode(
        self,
        episode_id: str,
        final_state: dict[str, Any],
        *,
        kept: bool,
        reason: str | None = None,
        rewards: Rewards | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE episodes SET status = 'finished', final_state = ?, kept = ?, reason = ?, rewards = ?,"
                " metrics = ?, error = NULL, error_kind = NULL, finished_at = ? WHERE id = ?",
                (
                    _dumps(final_state),
                    int(kept),
                    reason,
                    _dumps(rewards or {}),
                    _dumps(metrics or {}),
                    time.time(),
                    episode_id,
                ),
            )

    def fail_episode(self, episode_id: str, error: str, kind: str | None = None) -> None:
        """Mark an episode failed (`kind` a FailureKind value); a re-run of the run directory retries it."""
        with self._tx() as db:
            db.execute(
                "UPDATE episodes SET status = 'failed', error = ?, error_kind = ?, finished_at = ?"
                " WHERE id = ?",
                (error, kind, time.time(), episode_id),
            )

    def finished_ids(self) -> set[str]:
        rows = self._db.execute("SELECT id FROM episodes WHERE status = 'finished'").fetchall()
        return {r[0] for r in rows}

    def episodes(self, status: str | None = None, kept: bool | None = None) -> list[EpisodeRecord]:
        sql = (
            "SELECT id, status, attempts, input, final_state, kept, reason, rewards, error, started_at,"
            " finished_at, metrics, error_kind FROM episodes"
        )
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if kept is not None:
            where.append("kept = ?")
            args.append(int(kept))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at, id"
        return [self._episode(row) for row in self._db.execute(sql, args).fetchall()]

    def episode(self, episode_id: str) -> EpisodeRecord | None:
        rows = self._db.execute(
            "SELECT id, status, attempts, input, final_state, kept, reason, rewards, error, started_at,"
            " finished_at, metrics, error_kind FROM episodes WHERE id = ?",
            (episode_id,),
        ).fetchall()
        return self._episode(rows[0]) if rows else None

    @staticmethod
    def _episode(row: Sequence[Any]) -> EpisodeRecord:
        return EpisodeRecord(
            id=row[0],
            status=row[1],
            attempts=row[2],
            input=_loads(row[3]),
            final_state=_loads(row[4]),
            kept=None if row[5] is None else bool(row[5]),
            reason=row[6],
            rewards=_loads(row[7]) or {},
            error=row[8],
            started_at=row[9],
            finished_at=row[10],
            metrics=_loads(row[11]) or {},
            error_kind=row[12],
        )

    # --- steps --------------------------------------------------------------------------------------
    def record_step(self, step: Step) -> Step:
        """Append one step and commit; returns it with its id."""
        (step_id,) = self.record_rows([step_row(step)])
        return dataclasses.replace(step, id=step_id)

    async def arecord_step(self, step: Step) -> Step:
        """What the runtime awaits: `record_step` here (a RemoteStore batches concurrent callers' steps)."""
        return self.record_step(step)

    def record_step_soon(self, build: Callable[[], Step]) -> None:
        """Record a step whose id nobody needs (an environment call's) off the caller's path: `build()` makes
        it when it is committed, so it must read only what later changes cannot reach. It is committed on the
        event loop's next turn, or with the next write if that comes first. `flush` (or any write) commits
        it now; the runtime's checkpointer flushes before it saves a node's writes, so a task that resumes
        as done always has its steps."""
        self._soon.append(build)
        if len(self._soon) > 1:
            return  # a flush is scheduled already
        try:
            asyncio.get_running_loop().call_soon(self._flush_quietly)
        except RuntimeError:  # no event loop: commit now
            self.flush()

    def flush(self) -> None:
        """Commit the steps `record_step_soon` queued."""
        if self._soon:
            with self._tx():
                pass

    async def aflush(self) -> None:
        self.flush()

    def _flush_quietly(self) -> None:
        # The queued rows stay queued if this fails (a full disk): the next write retries them and raises.
        with contextlib.suppress(sqlite3.Error, DiskFullError):
            self.flush()

    def record_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """Append rows made by `step_row` in one transaction; returns their ids."""
        ids: list[int] = []
        with self._tx() as db:
            for row in rows:
                step_id = db.execute(_INSERT_STEP, row).lastrowid
                assert step_id is not None
                ids.append(step_id)
        return ids

    def add_rewards(self, step_id: int, rewards: Rewards | list[Rewards]) -> None:
        """Attach rewards to a step: one dict for every choice, or a list with one dict per choice."""
        if isinstance(rewards, dict):
            n = self._db.execute(
                "SELECT json_array_length(choices) FROM steps WHERE id = ?", (step_id,)
            ).fetchone()
            if n is None:
                raise RolegraphError(f"no step with id {step_id}", "pass an id returned by record_step")
            per_choice = [rewards] * max(int(n[0]), 1)
        else:
            per_choice = rewards
        with self._tx() as db:
            for index, values in enumerate(per_choice):
                for name, value in values.items():
                    db.execute(
                        "INSERT OR REPLACE INTO step_rewards (step_id, choice, name, value)"
                        " VALUES (?, ?, ?, ?)",
                        (step_id, index, name, None if value is None else float(value)),
                    )

    def supersede_interrupted(self, episode_id: str, attempt: int, completed: set[str] | None) -> int:
        """Flag earlier attempts' steps whose graph task never completed, so readers skip them.

        `completed` holds the ids of the episode's completed LangGraph tasks (from its checkpoints); None
        means the episode restarts from scratch, so every earlier attempt's step is superseded.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, checkpoint FROM steps WHERE episode_id = ? AND attempt < ? AND superseded = 0",
                (episode_id, attempt),
            ).fetchall()
            doomed = [(i,) for i, task in rows if completed is None or task not in completed]
            db.executemany("UPDATE steps SET superseded = 1 WHERE id = ?", doomed)
            return len(doomed)

    def steps(
        self,
        *,
        episode_id: str | None = None,
        role: str | None = None,
        kind: str | None = None,
        kept_only: bool = False,
        finished_only: bool = False,
        include_superseded: bool = False,
    ) -> list[Step]:
        """Steps in the order they were recorded, filtered as asked."""
        sql = (
            "SELECT s.id, s.episode_id, s.attempt, s.kind, s.node, s.role, s.endpoint, s.model, s.sampling,"
            " s.messages, s.choices, s.prompt_token_ids, s.prompt_tokens, s.completion_tokens, s.latency_s,"
            " s.error, s.request, s.response, s.started_at, s.error_kind, s.checkpoint, s.metrics"
            " FROM steps s LEFT JOIN episodes e ON e.id = s.episode_id"
        )
        where: list[str] = []
        args: list[Any] = []
        if episode_id is not None:
            where.append("s.episode_id = ?")
            args.append(episode_id)
        if role is not None:
            where.append("s.role = ?")
            args.append(role)
        if kind is not None:
            where.append("s.kind = ?")
            args.append(kind)
        if kept_only:
            where.append("e.status = 'finished' AND e.kept = 1")
        elif finished_only:
            where.append("e.status = 'finished'")
        if not include_superseded:
            where.append("s.superseded = 0")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.id"
        rows = self._db.execute(sql, args).fetchall()
        rewards = self._rewards([row[0] for row in rows])
        return [self._step(row, rewards.get(row[0], {})) for row in rows]

    def _rewards(self, step_ids: list[int]) -> dict[int, dict[int, Rewards]]:
        out: dict[int, dict[int, Rewards]] = {}
        if not step_ids:
            return out
        for chunk_start in range(0, len(step_ids), 500):
            chunk = step_ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for step_id, choice, name, value in self._db.execute(
                f"SELECT step_id, choice, name, value FROM step_rewards WHERE step_id IN ({marks})", chunk
            ):
                out.setdefault(step_id, {}).setdefault(choice, {})[name] = value
        return out

    @staticmethod
    def _step(row: Sequence[Any], rewards: dict[int, Rewards]) -> Step:
        choices = [Choice(**c) for c in _loads(row[10]) or []]
        per_choice = [rewards.get(i, {}) for i in range(len(choices))] if rewards else []
        return Step(
            id=row[0],
            episode_id=row[1],
            attempt=row[2],
            kind=row[3],
            node=row[4],
            role=row[5],
            endpoint=row[6],
            model=row[7],
            sampling=_loads(row[8]) or {},
            messages=_loads(row[9]) or [],
            choices=choices,
            prompt_token_ids=_loads(row[11]),
            prompt_tokens=row[12],
            completion_tokens=row[13],
            latency_s=row[14],
            error=row[15],
            request=_loads(row[16]),
            response=_loads(row[17]),
            started_at=row[18],
            error_kind=row[19],
            checkpoint=row[20],
            metrics=_loads(row[21]) or {},
            rewards=per_choice,
        )

    def usage_by_role(self) -> dict[str, dict[str, int]]:
        """Calls and tokens per role over all recorded steps (superseded ones included: they were spent)."""
        rows = self._db.execute(
            "SELECT role, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM steps WHERE kind = 'role'"
            " GROUP BY role ORDER BY role"
        ).fetchall()
        return {
            r[0]: {"calls": r[1], "prompt_tokens": r[2] or 0, "completion_tokens": r[3] or 0} for r in rows
        }

    def counts(self) -> dict[str, int]:
        """Episodes by status, plus kept and rejected among the finished ones."""
        out = {"running": 0, "finished": 0, "failed": 0, "kept": 0, "rejected": 0}
        for status, kept, count in self._db.execute(
            "SELECT status, kept, COUNT(*) FROM episodes GROUP BY status, kept"
        ):
            out[status] += count
            if status == "finished":
                out["kept" if kept else "rejected"] += count
        return out

    def failures_by_kind(self) -> dict[str, int]:
        """Failed episodes by failure kind (a FailureKind value; 'other' when none was recorded)."""
        rows = self._db.execute(
            "SELECT COALESCE(error_kind, 'other'), COUNT(*) FROM episodes WHERE status = 'failed'"
            " GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def missing_rewards(self) -> dict[str, int]:
        """Finished episodes per reward name whose value is None (the infrastructure could not compute it),
        plus step rewards that are None, by name."""
        counts: dict[str, int] = {}
        for (text,) in self._db.execute("SELECT rewards FROM episodes WHERE status = 'finished'"):
            for name, value in (_loads(text) or {}).items():
                if value is None:
                    counts[name] = counts.get(name, 0) + 1
        for name, count in self._db.execute(
            "SELECT r.name, COUNT(*) FROM step_rewards r JOIN steps s ON s.id = r.step_id"
            " WHERE r.value IS NULL AND s.superseded = 0 GROUP BY r.name"
        ):
            counts[name] = counts.get(name, 0) + count
        return counts

    def rejection_reasons(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT COALESCE(reason, 'unspecified'), COUNT(*) FROM episodes"
            " WHERE status = 'finished' AND kept = 0"
            " GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    # --- training runs ------------------------------------------------------------------------------
    def record_training(
        self,
        *,
        trainer: str,
        inputs: Sequence[str | Path],
        hyperparams: dict[str, Any],
        metrics: dict[str, Any] | None = None,
        adapter_name: str | None = None,
        adapter_version: str | None = None,
        adapter_path: str | Path | None = None,
    ) -> int:
        """Record one trainer run (its input run dirs or export files, settings, metrics and adapter)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO training_runs (trainer, inputs, hyperparams, metrics, adapter_name,"
                " adapter_version, adapter_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trainer,
                    _dumps([str(p) for p in inputs]),
                    _dumps(hyperparams),
                    _dumps(metrics or {}),
                    adapter_name,
                    adapter_version,
                    None if adapter_path is None else str(adapter_path),
                    time.time(),
                ),
            )
            run_id = cur.lastrowid
        assert run_id is not None
        return run_id

    def training_runs(self) -> list[TrainingRunRecord]:
        rows = self._db.execute(
            "SELECT id, trainer, inputs, hyperparams, metrics, adapter_name, adapter_version, adapter_path,"
            " created_at FROM training_runs ORDER BY id"
        ).fetchall()
        return [
            TrainingRunRecord(
                id=r[0],
                trainer=r[1],
                inputs=_loads(r[2]),
                hyperparams=_loads(r[3]),
                metrics=_loads(r[4]),
                adapter_name=r[5],
                adapter_version=r[6],
                adapter_path=r[7],
                created_at=r[8],
            )
            for r in rows
        ]
