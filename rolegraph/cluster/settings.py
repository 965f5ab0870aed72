"""The process-wide cluster setting `run_graph` consults: set once by `--ray`, so every command that runs a
graph (run, train, loop, eval) runs it on Ray with no second code path."""

from __future__ import annotations

import dataclasses

from rolegraph.errors import RolegraphError

AUTO = "auto"
"""The address of the cluster `ray start` started on this machine."""


class ClusterError(RolegraphError):
    """The Ray cluster could not be reached or could not run the workers."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster is and how many episode workers to start (None: one per alive node)."""

    address: str = AUTO
    workers: int | None = None


_ACTIVE: ClusterSettings | None = None


def activate(address: str = AUTO, *, workers: int | None = None) -> ClusterSettings:
    """Run every following `run_graph` of this process on the Ray cluster at `address`."""
    global _ACTIVE
    if workers is not None and workers < 1:
        raise ClusterError(f"--ray-workers must be at least 1, got {workers}", "pass --ray-workers 1 or more")
    _ACTIVE = ClusterSettings(address=address.strip() or AUTO, workers=workers)
    return _ACTIVE


def deactivate() -> None:
    global _ACTIVE
    _ACTIVE = None


def active() -> ClusterSettings | None:
    """The active cluster setting, or None when runs stay on this machine."""
    return _ACTIVE
