"""Which replica of an endpoint serves a call: sticky per episode, balanced by outstanding requests.

An endpoint may be served by several replicas of one server (a list of `base_url`s, or `launch.replicas`).
Every call of an episode goes to the same replica, so the episode's prefix cache stays on one server; an
episode's first call, and every call made outside an episode (probes, scoring), goes to the live replica
with the fewest outstanding requests. A replica that stops answering is taken out (the client retries its
calls on another one, see rolegraph.serving.client) and brought back once it answers again.

This module is pure bookkeeping (no I/O), so the rules are tested without servers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

STICKY_EPISODES = 100_000
"""Episodes whose replica the router remembers (least recently used forgotten first)."""


@dataclass(eq=False)
class Replica:
    """One server behind an endpoint, and what the router knows about it."""

    index: int
    base_url: str
    """The OpenAI base URL, ending in /v1."""
    up: bool = True
    outstanding: int = 0
    """Calls routed here that have not returned yet (waiting for the concurrency limit included)."""
    routed: int = 0
    """Calls routed here so far (breaks ties between equally loaded replicas, so idle ones take turns)."""
    down_reason: str | None = None

    @property
    def server_url(self) -> str:
        return self.base_url.removesuffix("/v1")


class ReplicaRouter:
    """Chooses a replica per call and tracks which replicas are up. Not thread-safe: one event loop."""

    def __init__(self, base_urls: Sequence[str], *, sticky_episodes: int = STICKY_EPISODES) -> None:
        if not base_urls:
            raise ValueError("a router needs at least one replica")
        self.replicas = [Replica(i, url) for i, url in enumerate(base_urls)]
        self._sticky: OrderedDict[str, int] = OrderedDict()
        self._sticky_limit = sticky_episodes

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.up]

    def has_live(self, *, exclude: Collection[int] = ()) -> bool:
        """Whether a replica outside `exclude` (indices) is up."""
        return any(replica.up and replica.index not in exclude for replica in self.replicas)

    def choose(self, episode: str | None, *, exclude: Collection[int] = ()) -> Replica | None:
        """The replica for a call of `episode` (None: a call outside any episode), skipping `exclude`.

        The episode's replica while it is up; else the live replica with the fewest outstanding calls (the
        episode sticks to it from then on). With no live replica left, a down one (its call may still get
        through, as a single server's would); None when every replica is excluded."""
        candidates = [replica for replica in self.replicas if replica.up and replica.index not in exclude]
        if not candidates:
            return min(
                (replica for replica in self.replicas if replica.index not in exclude),
                key=_load,
                default=None,
            )
        if episode is not None:
            index = self._sticky.get(episode)
            if index is not None and self.replicas[index] in candidates:
                self._sticky.move_to_end(episode)
                return self.replicas[index]
        chosen = min(candidates, key=_load)
        if episode is not None:
            self._stick(episode, chosen)
        return chosen

    def replica_of(self, episode: str) -> Replica | None:
        """The replica an episode is stuck to, if any."""
        index = self._sticky.get(episode)
        return None if index is None else self.replicas[index]

    @contextmanager
    def outstanding(self, replica: Replica) -> Iterator[None]:
        """Count a call as outstanding on `replica` while the block runs."""
        replica.outstanding += 1
        replica.routed += 1
        try:
            yield
        finally:
            replica.outstanding -= 1

    def take_out(self, replica: Replica, reason: str) -> bool:
        """Route no new call to `replica`; True when it was up until now. Episodes stuck to it move on their
        next call."""
        was_up = replica.up
        replica.up = False
        replica.down_reason = reason
        return was_up

    def bring_back(self, replica: Replica) -> None:
        replica.up = True
        replica.down_reason = None

    def _stick(self, episode: str, replica: Replica) -> None:
        self._sticky[episode] = replica.index
        self._sticky.move_to_end(episode)
        while len(self._sticky) > self._sticky_limit:
            self._sticky.popitem(last=False)


def _load(replica: Replica) -> tuple[int, int, int]:
    return replica.outstanding, replica.routed, replica.index
