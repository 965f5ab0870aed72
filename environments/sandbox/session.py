"""Stateful interpreter sessions (CoRT): globals persist across cells, like a notebook kernel."""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType

from rolegraph.environments.sandbox.base import Backend, ExecResult, Limits, Status
from rolegraph.environments.sandbox.process import WorkerGone, WorkerProcess, WorkerTimeout, start_worker
from rolegraph.environments.sandbox.selection import resolve_backend
from rolegraph.errors import SandboxError

HOST_GRACE_S = 5.0
SESSION_CPU_FACTOR = 20
"""A session's CPU-time budget, in multiples of the per-cell wall-clock limit (cells share one process)."""


class Session:
    """One kernel process in its own sandbox. A cell that times out, floods or crashes the kernel closes it.

    Use as a context manager (sync or async) so the sandbox is destroyed when the trajectory ends.
    """

    def __init__(self, worker: WorkerProcess, limits: Limits, backend: Backend) -> None:
        self.worker = worker
        self.limits = limits
        self.backend = backend
        self.closed_reason: str | None = None
        self.cells = 0
        cpu = limits.cpu_s or limits.timeout_s * SESSION_CPU_FACTOR
        opened = self._request({"op": "session_open", "limits": limits.with_(cpu_s=cpu).to_wire()}, limits)
        if opened.status != Status.OK:
            self.close()
            raise SandboxError(
                f"could not open a sandbox session: {opened.error}", "run `rolegraph sandbox doctor`"
            )

    @classmethod
    def open(cls, backend: str | Backend = "auto", *, limits: Limits | None = None) -> Session:
        """A session on a freshly started worker (no pool)."""
        chosen = resolve_backend(backend) if isinstance(backend, str) else backend
        limits = limits or Limits()
        return cls(start_worker(chosen, limits, {"preload": ["numpy", "sympy"]}), limits, chosen)

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def run_cell(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        """Run one cell in the session's globals; a final expression's value is printed, as in Jupyter."""
        if self.closed:
            return ExecResult.sandbox_failure(
                f"the session is closed: {self.closed_reason}", self.backend.name
            )
        if self.backend.warns:
            from rolegraph.environments.sandbox.local_backend import WARNING

            print(WARNING, file=sys.stderr, flush=True)
        limits = self.limits if timeout_s is None else self.limits.with_(timeout_s=timeout_s)
        self.cells += 1
        result = self._request({"op": "session_cell", "code": code, "limits": limits.to_wire()}, limits)
        if self.closed_reason is None and result.status in (
            Status.TIMEOUT,
            Status.OUTPUT_LIMIT,
            Status.SANDBOX_ERROR,
        ):
            self.close(result.error or str(result.status))
        return result

    async def arun_cell(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        return await asyncio.to_thread(self.run_cell, code, timeout_s=timeout_s)

    def _request(self, payload: dict[str, object], limits: Limits) -> ExecResult:
        try:
            reply = self.worker.request(payload, timeout=limits.timeout_s + HOST_GRACE_S)
        except WorkerGone as exc:
            self.close(f"the sandbox worker stopped answering: {exc}")
            status = Status.TIMEOUT if isinstance(exc, WorkerTimeout) else Status.SANDBOX_ERROR
            return ExecResult.sandbox_failure(self.closed_reason or str(exc), self.backend.name, status)
        result = ExecResult.from_reply(reply, self.backend.name)
        if reply.get("closed"):  # the worker killed the kernel (a cell hung, flooded or killed it)
            self.close(result.error or str(result.status))
        return result

    def close(self, reason: str = "closed") -> None:
        """Destroy the session's sandbox. Idempotent."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.worker.destroy()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
