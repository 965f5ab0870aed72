"""Indexed, read-only SQL over a run's store for the studio's listings (filters, sort, pagination).

Each `RunQueries` has its own `mode=ro` SQLite connection: it never takes the run directory's writer lock and
never blocks a writer (WAL readers see the last committed state). Whole records of one episode come from
`rolegraph.store.Store`'s own read paths.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

from rolegraph.errors import ConfigError
from rolegraph.store.db import STORE_FILE

T = TypeVar("T")
PAGE_SIZE = 50
SORTS = ("started", "finished", "tokens", "reward", "status", "id")


@dataclass(frozen=True)
class EpisodeFilter:
    """What the episodes page asks for; every field comes from the query string."""

    status: str = ""
    kept: str = ""
    """'' (any), 'yes' or 'no'."""
    reward: str = ""
    """The reward name the reward column, the range and the 'reward' sort use."""
    rmin: float | None = None
    rmax: float | None = None
    role: str = ""
    node: str = ""
    model: str = ""
    error_kind: str = ""
    q: str = ""
    """Full-text search in prompts and completions (case-insensitive)."""
    sort: str = "started"
    desc: bool = False
    page: int = 1

    @classmethod
    def from_query(cls, query: dict[str, str]) -> EpisodeFilter:
        """Parse a query string; a bad value is a ConfigError naming the parameter and the fix."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = query.get(f.name, "").strip()
            if not raw:
                continue
            if f.name in ("rmin", "rmax"):
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ConfigError(
                        f"{f.name}={raw!r} is not a number", f"give {f.name} as e.g. 0.5"
                    ) from None
            elif f.name == "page":
                if not raw.isdigit() or int(raw) < 1:
                    raise ConfigError(f"page={raw!r} is not a page number", "give page=1 or more")
                values["page"] = int(raw)
            elif f.name == "desc":
                values["desc"] = raw in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        flt = cls(**values)
        if flt.sort not in SORTS:
            raise ConfigError(f"cannot sort by {flt.sort!r}", f"sort by one of: {', '.join(SORTS)}")
        if flt.status and flt.status not in ("running", "finished", "failed"):
            raise ConfigError(f"unknown status {flt.status!r}", "use running, finished or failed")
        if flt.kept and flt.kept not in ("yes", "no"):
            raise ConfigError(f"kept={flt.kept!r}", "use kept=yes or kept=no")
        if (flt.rmin is not None or flt.rmax is not None or flt.sort == "reward") and not flt.reward:
            raise ConfigError("a reward range or sort needs a reward name", "pick the reward by name")
        return flt

    def query(self, **changes: Any) -> dict[str, str]:
        """This filter (with `changes`) as query-string parameters, defaults left out."""
        out: dict[str, str] = {}
        default = EpisodeFilter()
        for f in fields(self):
            value = changes.get(f.name, getattr(self, f.name))
            if value == getattr(default, f.name) or value is None:
                continue
            out[f.name] = "1" if value is True else str(value)
        return out


@dataclass(frozen=True)
class EpisodeRow:
    id: str
    status: str
    kept: bool | None
    reason: str | None
    rewards: dict[str, float | None]
    error_kind: str | None
    started_at: float
    finished_at: float | None
    tokens: int
    steps: int
    reward: float | None = None
    """The filter's reward for this episode (episode value, else the mean of its steps')."""


@dataclass(frozen=True)
class EpisodePage:
    rows: list[EpisodeRow]
    total: int
    page: int
    pages: int


@dataclass(frozen=True)
class Facets:
    """Values the filter menus offer."""

    roles: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    error_kinds: list[str] = field(default_factory=list)
    rewards: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunTotals:
    episodes: int
    running: int
    finished: int
    failed: int
    kept: int
    rejected: int
    tokens: int
    last_change: float
    """Latest episode start or finish: the live pages reload when it moves."""

    @property
    def acceptance(self) -> float | None:
        return self.kept / self.finished if self.finished else None


def _like(text: str) -> str:
    """A LIKE pattern matching `text` inside the JSON the store keeps (quotes, newlines escaped as there)."""
    encoded = json.dumps(text, ensure_ascii=False)[1:-1]
    escaped = encoded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_REWARD_EXPR = (
    "COALESCE(json_extract(e.rewards, ?), (SELECT AVG(r.value) FROM steps s JOIN step_rewards r"
    " ON r.step_id = s.id WHERE s.episode_id = e.id AND s.superseded = 0 AND r.name = ?))"
)


_CACHE = """
CREATE TABLE agg (episode_id TEXT PRIMARY KEY, tokens INTEGER NOT NULL, steps INTEGER NOT NULL);
CREATE TABLE facet (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
CREATE TABLE errs (episode_id TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (episode_id, kind));
CREATE TABLE calls (episode_id TEXT NOT NULL, role TEXT NOT NULL, node TEXT NOT NULL, model TEXT NOT NULL,
                    PRIMARY KEY (episode_id, role, node, model));
CREATE TABLE ep (id TEXT PRIMARY KEY, status TEXT, kept INTEGER, reason TEXT, rewards TEXT, error_kind TEXT,
                 started_at REAL, finished_at REAL);
"""
"""The studio's own in-memory tables: aggregates of the store's steps, brought up to date by step id (steps
are append-only), and the episodes' short columns, re-read when a writer has committed. Listings then never
walk the store's long texts (prompts, completions, final states), except to search them."""


class RunQueries:
    """Listings of one run directory's store: the store attached read-only to an in-memory cache."""

    def __init__(self, run_dir: Path | str) -> None:
        path = Path(run_dir) / STORE_FILE
        if not path.is_file():
            raise ConfigError(f"{run_dir} holds no rolegraph run (no {STORE_FILE})", "pass a run directory")
        self._db = sqlite3.connect(
            "file::memory:", uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("ATTACH DATABASE ? AS store", (f"{path.resolve().as_uri()}?mode=ro",))
        self._db.executescript(_CACHE)
        self._synced = 0
        self._cached: dict[str, tuple[int, Any]] = {}

    def _memo(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()`, again only after a writer has committed to the store since the last time."""
        (version,) = self._db.execute("PRAGMA store.data_version").fetchone()
        hit = self._cached.get(name)
        if hit is not None and hit[0] == version:
            return cast(T, hit[1])
        value = compute()
        self._cached[name] = (version, value)
        return value

    def close(self) -> None:
        self._db.close()

    def _sync(self) -> None:
        """Fold steps recorded since the last call into the per-episode tokens and the filter values, and
        re-read the episodes' short columns when the store changed."""
        self._memo("episodes", self._copy_episodes)
        (top,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM store.steps").fetchone()
        if top <= self._synced:
            return
        span = (self._synced, top)
        self._db.execute(
            "INSERT INTO agg SELECT episode_id, SUM(prompt_tokens + completion_tokens), COUNT(*)"
            " FROM store.steps WHERE id > ? AND id <= ? GROUP BY episode_id"
            " ON CONFLICT (episode_id) DO UPDATE SET tokens = tokens + excluded.tokens,"
            " steps = steps + excluded.steps",
            span,
        )
        self._db.execute(
            "INSERT OR IGNORE INTO calls SELECT DISTINCT episode_id, role, node, COALESCE(model, '')"
            " FROM store.steps WHERE id > ? AND id <= ?",
            span,
        )
        self._db.execute(
            "INSERT OR IGNORE INTO errs SELECT DISTINCT episode_id, error_kind FROM store.steps"
            " WHERE error_kind IS NOT NULL AND id > ? AND id <= ?",
            span,
        )
        for kind, column in (("role", "role"), ("node", "node"), ("model", "model")):
            where = "kind = 'role' AND " if kind == "role" else ""
            self._db.execute(
                f"INSERT OR IGNORE INTO facet SELECT DISTINCT '{kind}', {column} FROM store.steps"
                f" WHERE {where}{column} IS NOT NULL AND id > ? AND id <= ?",
                span,
            )
        self._synced = top

    def _copy_episodes(self) -> None:
        self._db.execute("DELETE FROM ep")
        self._db.execute(
            "INSERT INTO ep SELECT id, status, kept, reason, rewards, error_kind, started_at, finished_at"
            " FROM store.episodes"
        )

    def totals(self) -> RunTotals:
        return self._memo("totals", self._totals)

    def _totals(self) -> RunTotals:
        self._sync()
        counts = {"running": 0, "finished": 0, "failed": 0, "kept": 0, "rejected": 0}
        for status, kept, count in self._db.execute(
            "SELECT status, kept, COUNT(*) FROM ep GROUP BY status, kept"
        ):
            counts[status] += count
            if status == "finished":
                counts["kept" if kept else "rejected"] += count
        (tokens,) = self._db.execute("SELECT COALESCE(SUM(tokens), 0) FROM agg").fetchone()
        (last,) = self._db.execute(
            "SELECT COALESCE(MAX(MAX(started_at, COALESCE(finished_at, 0))), 0) FROM ep"
        ).fetchone()
        return RunTotals(
            episodes=counts["running"] + counts["finished"] + counts["failed"],
            tokens=int(tokens),
            last_change=float(last),
            **counts,
        )

    def facets(self) -> Facets:
        """Distinct roles, nodes, models, error kinds and reward names: what the filter menus offer."""
        return self._memo("facets", self._facets)

    def _facets(self) -> Facets:
        self._sync()

        def values(kind: str) -> list[str]:
            return [
                r[0] for r in self._db.execute("SELECT value FROM facet WHERE kind = ? ORDER BY 1", (kind,))
            ]

        def distinct(sql: str) -> set[str]:
            return {str(r[0]) for r in self._db.execute(sql) if r[0] is not None}

        return Facets(
            roles=values("role"),
            nodes=values("node"),
            models=values("model"),
            error_kinds=sorted(
                distinct("SELECT DISTINCT kind FROM errs") | distinct("SELECT DISTINCT error_kind FROM ep")
            ),
            rewards=sorted(
                distinct("SELECT DISTINCT name FROM store.step_rewards")
                | distinct(
                    "SELECT DISTINCT j.key FROM ep e, json_each(e.rewards) j WHERE e.status = 'finished'"
                )
            ),
        )

    def episodes(self, flt: EpisodeFilter, page_size: int = PAGE_SIZE) -> EpisodePage:
        self._sync()
        where: list[str] = []
        args: list[Any] = []
        if flt.status:
            where.append("e.status = ?")
            args.append(flt.status)
        if flt.kept:
            where.append("e.status = 'finished' AND e.kept = ?")
            args.append(int(flt.kept == "yes"))
        calls = [
            (column, value)
            for column, value in (("role", flt.role), ("node", flt.node), ("model", flt.model))
            if value
        ]
        if calls:
            where.append(
                "EXISTS (SELECT 1 FROM calls c WHERE c.episode_id = e.id AND "
                + " AND ".join(f"c.{column} = ?" for column, _ in calls)
                + ")"
            )
            args += [value for _, value in calls]
        if flt.q:
            where.append(
                "EXISTS (SELECT 1 FROM steps s WHERE s.episode_id = e.id AND s.superseded = 0 AND"
                " (s.messages LIKE ? ESCAPE '\\' OR s.choices LIKE ? ESCAPE '\\'))"
            )
            args += [_like(flt.q)] * 2
        if flt.error_kind:
            where.append(
                "(e.error_kind = ? OR EXISTS (SELECT 1 FROM errs x WHERE x.episode_id = e.id AND x.kind = ?))"
            )
            args += [flt.error_kind] * 2
        reward_args = [f'$."{flt.reward}"', flt.reward] if flt.reward else []
        if flt.reward and (flt.rmin is not None or flt.rmax is not None):
            low = flt.rmin if flt.rmin is not None else float("-inf")
            high = flt.rmax if flt.rmax is not None else float("inf")
            where.append(f"{_REWARD_EXPR} BETWEEN ? AND ?")
            args += [*reward_args, low, high]
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM ep e{clause}", args).fetchone()
        pages = max(1, -(-total // page_size))
        page = min(flt.page, pages)
        order = {
            "started": "e.started_at",
            "finished": "e.finished_at",
            "tokens": "tokens",
            "reward": "reward",
            "status": "e.status",
            "id": "e.id",
        }[flt.sort]
        direction = "DESC" if flt.desc else "ASC"
        reward_col = _REWARD_EXPR if flt.reward else "NULL"
        sql = (
            "SELECT e.id, e.status, e.kept, e.reason, e.rewards, e.error_kind, e.started_at, e.finished_at,"
            f" COALESCE(a.tokens, 0) AS tokens, COALESCE(a.steps, 0), {reward_col} AS reward"
            f" FROM ep e LEFT JOIN agg a ON a.episode_id = e.id{clause}"
            f" ORDER BY {order} {direction}, e.id {direction} LIMIT ? OFFSET ?"
        )
        rows = self._db.execute(sql, [*reward_args, *args, page_size, (page - 1) * page_size]).fetchall()
        return EpisodePage(
            rows=[
                EpisodeRow(
                    id=r[0],
                    status=r[1],
                    kept=None if r[2] is None else bool(r[2]),
                    reason=r[3],
                    rewards=json.loads(r[4] or "{}"),
                    error_kind=r[5],
                    started_at=r[6],
                    finished_at=r[7],
                    tokens=int(r[8]),
                    steps=int(r[9]),
                    reward=r[10],
                )
                for r in rows
            ],
            total=int(total),
            page=page,
            pages=pages,
        )

    def inputs(self) -> dict[str, str]:
        """Finished episode id → its input as canonical JSON (to pair two runs' episodes on one input)."""
        return {
            r[0]: json.dumps({k: v for k, v in json.loads(r[1]).items() if k != "episode_id"}, sort_keys=True)
            for r in self._db.execute("SELECT id, input FROM store.episodes WHERE status = 'finished'")
        }
