"""The episode a model call belongs to, for routing that keeps an episode on one replica (prefix cache)."""

from __future__ import annotations

from contextvars import ContextVar

current_episode: ContextVar[str | None] = ContextVar("rolegraph_current_episode", default=None)
"""Set by the runtime for the duration of each episode; asyncio tasks the episode starts inherit it."""
