"""The sandbox the azr graph validates and judges in: a TripletRunner on a warm pool, started on first use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.environments.triplets import AZR_POLICY, TripletRunner

RunnerProvider = Callable[[], Awaitable[TripletRunner]]
"""Returns the TripletRunner the graph's environment calls use (the pool is not part of the state)."""


class TripletSandbox:
    """A RunnerProvider owning its pool (AZR_POLICY): `await sandbox()` starts it once; `close()` stops it."""

    def __init__(self, backend: str = "auto", size: int = 2) -> None:
        self.backend = backend
        self.size = size
        self._runner: TripletRunner | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> TripletRunner:
        async with self._lock:
            if self._runner is None:
                pool = await asyncio.to_thread(SandboxPool, self.backend, size=self.size)
                self._runner = TripletRunner(pool, policy=AZR_POLICY)
            return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.pool.close()
            self._runner = None
