"""Stateful interpreter sessions (CoRT): globals persist across cells, like a notebook kernel."""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import Any

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
        self._limits_by_timeout: dict[float, Limits] = {}
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
        cell = self._cell_request(code, timeout_s)
        if isinstance(cell, ExecResult):
            return cell
        return self._request(*cell)

    async def arun_cell(self, code: str, *, timeout_s: float | None = None) -> ExecResult:
        """`run_cell` on the running event loop (the worker's reply pipe is watched by the loop, no thread),
        so other episodes' coroutines run while the cell runs."""
        cell = self._cell_request(code, timeout_s)
        if isinstance(cell, ExecResult):
            return cell
        payload, limits = cell
        reply: dict[str, Any] | WorkerGone
        try:
            reply = await self.worker.arequest(payload, timeout=limits.timeout_s + HOST_GRACE_S)
        except WorkerGone as exc:
            reply = exc
        result, closing = self._cell_result(reply)
        if closing is not None:
            await asyncio.to_thread(self.close, closing)  # destroying a sandbox waits on processes
        return result

    def _cell_request(
        self, code: str, timeout_s: float | None
    ) -> tuple[dict[str, object], Limits] | ExecResult:
        """The worker request for one cell and its limits, or the result when the cell cannot run."""
        if self.closed:
            return ExecResult.sandbox_failure(
                f"the session is closed: {self.closed_reason}", self.backend.name
            )
        if self.backend.warns:
            from rolegraph.environments.sandbox.local_backend import WARNING

            print(WARNING, file=sys.stderr, flush=True)
        limits = self._cell_limits(timeout_s)
        self.cells += 1
        return {"op": "session_cell", "code": code, "limits": limits.to_wire()}, limits

    def _cell_limits(self, timeout_s: float | None) -> Limits:
        """The session's limits with this cell's timeout; one Limits per timeout (its wire form is cached)."""
        if timeout_s is None or timeout_s == self.limits.timeout_s:
            return self.limits
        limits = self._limits_by_timeout.get(timeout_s)
        if limits is None:
            limits = self._limits_by_timeout[timeout_s] = self.limits.with_(timeout_s=timeout_s)
        return limits

    def _cell_result(self, reply: dict[str, Any] | WorkerGone) -> tuple[ExecResult, str | None]:
        """The result (of a cell, or of opening the session) from the worker's reply or its failure, and why
        the session must close now (None: it stays open). A cell that hung, flooded or killed the kernel ends
        the session."""
        if isinstance(reply, WorkerGone):
            reason = self.closed_reason or f"the sandbox worker stopped answering: {reply}"
            status = Status.TIMEOUT if isinstance(reply, WorkerTimeout) else Status.SANDBOX_ERROR
            return ExecResult.sandbox_failure(reason, self.backend.name, status), reason
        result = ExecResult.from_reply(reply, self.backend.name)
        if reply.get("closed") or result.status in (
            Status.TIMEOUT,
            Status.OUTPUT_LIMIT,
            Status.SANDBOX_ERROR,
        ):
            return result, result.error or str(result.status)
        return result, None

    def _request(self, payload: dict[str, object], limits: Limits) -> ExecResult:
        """One blocking round trip to the worker; closes the session when the reply says it must."""
        try:
            reply: dict[str, Any] | WorkerGone = self.worker.request(
                payload, timeout=limits.timeout_s + HOST_GRACE_S
            )
        except WorkerGone as exc:
            reply = exc
        result, closing = self._cell_result(reply)
        if closing is not None:
            self.close(closing)
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
