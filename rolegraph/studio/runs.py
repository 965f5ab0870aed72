"""Which runs the studio shows: run directories found under the folders it was started with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from rolegraph.errors import ConfigError
from rolegraph.store.db import STORE_FILE

FORKS_DIR = "forks"
"""Branches forked from a run are episodes of a run directory of their own, inside it."""


@dataclass(frozen=True)
class RunRef:
    """A run directory and the short id its pages use in URLs."""

    id: str
    path: Path

    @property
    def forks_of(self) -> Path | None:
        """The run this one holds branches of, when it is a forks directory."""
        parent = self.path.parent
        return parent if self.path.name == FORKS_DIR and (parent / STORE_FILE).is_file() else None


def run_id(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]


def check_roots(roots: list[Path]) -> list[Path]:
    """The folders as given; one that does not exist is a ConfigError naming it."""
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"{root} is not a directory", "pass run directories or folders that hold them")
    return roots


def discover(roots: list[Path]) -> list[RunRef]:
    """Run directories at or under `roots`, newest path order kept stable (sorted by path)."""
    found: set[Path] = set()
    for root in roots:
        if (root / STORE_FILE).is_file():
            found.add(root.resolve())
        found.update(p.parent.resolve() for p in root.rglob(STORE_FILE))
    return [RunRef(run_id(path), path) for path in sorted(found)]
