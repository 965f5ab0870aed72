"""Where the shared real datasets live: `../shared/data` beside the repo (or $ROLEGRAPH_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROLEGRAPH_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A file of the shared data set; a missing one fails loudly rather than skipping."""
    path = SHARED_DATA / name
    assert path.is_file(), f"{path} is missing: set ROLEGRAPH_SHARED_DATA to the folder holding {name}"
    return path
