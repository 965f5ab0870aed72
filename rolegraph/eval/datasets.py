"""Problem sets to analyze: a run directory's kept problems, or a JSONL file, each under a short name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rolegraph.errors import ConfigError, TrainingError
from rolegraph.graphs.selfplay.problems import Problem, load_problems


@dataclass(frozen=True)
class ProblemSet:
    name: str
    source: Path
    problems: list[Problem]

    @property
    def texts(self) -> list[str]:
        return [p.problem for p in self.problems]


def load_set(source: Path, limit: int, taken: set[str] | None = None) -> ProblemSet:
    """The first `limit` problems of a run directory (kept episodes) or JSONL file; the name is unique in
    `taken` (a file's stem, a run directory's name)."""
    try:
        problems = load_problems(source, limit)
    except TrainingError as exc:
        raise ConfigError(exc.message, "pass a run directory or a JSONL problem file") from None
    name = source.stem if source.is_file() else source.resolve().name
    taken = taken if taken is not None else set()
    unique, suffix = name, 2
    while unique in taken:
        unique, suffix = f"{name}-{suffix}", suffix + 1
    taken.add(unique)
    return ProblemSet(unique, source, problems)
