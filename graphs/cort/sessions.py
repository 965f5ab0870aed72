"""One stateful sandbox session per TIR episode, opened on first use and closed however the episode ends.

Sessions are not picklable, so they live here, keyed by episode id, outside the graph state. A resumed
episode (its process was killed) gets a fresh session into which its earlier cells are replayed first, so its
globals are what the model saw; a cell that killed its kernel (timeout, flood) restarts the session empty.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rolegraph.environments.sandbox.base import Limits
from rolegraph.environments.sandbox.session import Session


class SessionProvider:
    """Opens, replays and closes the per-episode sessions of a run. Use it as an async context manager."""

    def __init__(
        self, backend: str = "auto", *, limits: Limits | None = None, pool: Any | None = None
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits(timeout_s=10.0, memory_mb=512)
        self.pool = pool
        """A SandboxPool to take warm workers from (its owner closes it); None: a fresh worker per session."""
        self._sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()
        self.opened = 0

    def _open(self) -> Session:
        if self.pool is not None:
            session: Session = self.pool.session(self.limits)
            return session
        return Session.open(self.backend, limits=self.limits)

    async def get(self, episode_id: str, replay: list[str] | None = None) -> Session:
        """The episode's live session; a new one (with `replay` cells run first) when it has none."""
        async with self._lock:
            session = self._sessions.get(episode_id)
            if session is not None and not session.closed:
                return session
            session = await asyncio.to_thread(self._open)
            self.opened += 1
            self._sessions[episode_id] = session
        for code in replay or []:
            await session.arun_cell(code)
        return session

    def has_live(self, episode_id: str) -> bool:
        session = self._sessions.get(episode_id)
        return session is not None and not session.closed

    async def close(self, episode_id: str) -> None:
        """Close the episode's session, if any. Idempotent."""
        session = self._sessions.pop(episode_id, None)
        if session is not None:
            await session.aclose()

    async def aclose(self) -> None:
        """Close every session still open (a run that stopped between an episode's nodes)."""
        for episode_id in list(self._sessions):
            await self.close(episode_id)

    @property
    def live(self) -> int:
        return sum(1 for s in self._sessions.values() if not s.closed)

    async def __aenter__(self) -> SessionProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
