"""Warm pools of sandbox workers: one execution costs a fork inside a running sandbox, not a sandbox start."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rolegraph.environments.pyparse import parse_module
from rolegraph.environments.sandbox.base import MISBEHAVED, Backend, ExecResult, Limits, Status
from rolegraph.environments.sandbox.process import WorkerGone, WorkerProcess, WorkerTimeout, start_worker
from rolegraph.environments.sandbox.selection import resolve_backend
from rolegraph.errors import SandboxError

HOST_GRACE_S = 5.0
"""Extra seconds the host waits beyond a run's own limit before it destroys an unresponsive worker."""
DEFAULT_PRELOAD: tuple[str, ...] = ()
"""Modules imported once by each plain worker so runs get them for free; costs fork time on every run."""
DEFAULT_HEAVY_MODULES: tuple[str, ...] = ("numpy", "sympy")
"""Modules that send a job to the heavy lane, whose workers import and warm them up once."""


@dataclass
class Job:
    """One execution: a program (`exec`), a call of `f` on an input (`call`) or a test run (`tests`)."""

    op: str
    code: str
    stdin: str | None = None
    input: str | None = None
    func: str = "f"
    tests: str | None = None
    entry_point: str | None = None
    limits: Limits | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, limits: Limits) -> dict[str, Any]:
        payload: dict[str, Any] = {"op": self.op, "code": self.code, "limits": limits.to_wire()}
        for key in ("stdin", "input", "tests", "entry_point"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        payload["func"] = self.func
        return {**payload, **self.extra}


class JobShortcuts:
    """`run`, `call`, `run_tests`, `map` and their async forms, as jobs for the pool's `execute` /
    `aexecute`; `size` is how many executions the pool runs at once."""

    size: int

    def execute(self, job: Job) -> ExecResult:
        raise NotImplementedError

    def map(
        self,
        jobs: Sequence[Job],
        *,
        width: int | None = None,
        on_done: Callable[[int, ExecResult], None] | None = None,
    ) -> list[ExecResult]:
        """Run jobs in parallel, up to `width` (default: the pool's size) at a time; results in job order."""
        width = max(1, min(width or self.size, len(jobs) or 1))

        def run_one(index: int) -> ExecResult:
            result = self.execute(jobs[index])
            if on_done is not None:
                on_done(index, result)
            return result

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="rolegraph-sandbox-map") as executor:
            return list(executor.map(run_one, range(len(jobs))))

    async def aexecute(self, job: Job) -> ExecResult:
        raise NotImplementedError

    def run(self, code: str, *, stdin: str | None = None, limits: Limits | None = None) -> ExecResult:
        """Run a Python program as __main__."""
        return self.execute(Job(op="exec", code=code, stdin=stdin, limits=limits))

    def call(
        self, code: str, input_text: str, *, func: str = "f", limits: Limits | None = None
    ) -> ExecResult:
        """Run `code`, then `func(<input_text>)` built from the input's AST; `value` is a repr."""
        return self.execute(Job(op="call", code=code, input=input_text, func=func, limits=limits))

    def run_tests(
        self, code: str, tests: str, *, entry_point: str | None = None, limits: Limits | None = None
    ) -> ExecResult:
        """Run `code`, then `tests`, then `check(<entry_point>)`; `passed` is True only if that returned."""
        return self.execute(Job(op="tests", code=code, tests=tests, entry_point=entry_point, limits=limits))

    async def arun(self, code: str, *, stdin: str | None = None, limits: Limits | None = None) -> ExecResult:
        return await self.aexecute(Job(op="exec", code=code, stdin=stdin, limits=limits))

    async def acall(
        self, code: str, input_text: str, *, func: str = "f", limits: Limits | None = None
    ) -> ExecResult:
        return await self.aexecute(Job(op="call", code=code, input=input_text, func=func, limits=limits))

    async def arun_tests(
        self, code: str, tests: str, *, entry_point: str | None = None, limits: Limits | None = None
    ) -> ExecResult:
        return await self.aexecute(
            Job(op="tests", code=code, tests=tests, entry_point=entry_point, limits=limits)
        )


class Lane:
    """Warm workers of one kind (one preload list) within a pool: start, hand out, take back, replace."""

    def __init__(
        self,
        backend: Backend,
        size: int,
        limits: Limits,
        preload: Sequence[str],
        pin_cpus: bool,
        background: ThreadPoolExecutor,
    ) -> None:
        self.backend = backend
        self.size = size
        self.limits = limits
        self.preload = list(preload)
        self.pin_cpus = pin_cpus
        self.closed = False
        self._background = background
        self._idle: queue.LifoQueue[WorkerProcess] = queue.LifoQueue()
        self._count = 0
        self._count_lock = threading.Lock()
        self._cpu = itertools.count()
        self._live: set[WorkerProcess] = set()

    def _worker_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"preload": self.preload}
        if self.pin_cpus:
            config["cpu"] = next(self._cpu)
        return config

    def _start(self) -> WorkerProcess:
        worker = start_worker(self.backend, self.limits, self._worker_config())
        with self._count_lock:
            self._live.add(worker)
        return worker

    def warm(self) -> None:
        """Start workers until `size` are running (in parallel)."""
        with self._count_lock:
            missing = self.size - self._count
            self._count += max(0, missing)
        if missing <= 0:
            return
        with ThreadPoolExecutor(max_workers=missing) as starter:
            futures = [starter.submit(self._start) for _ in range(missing)]
        errors = []
        for future in futures:
            try:
                self._idle.put(future.result())
            except SandboxError as exc:
                errors.append(exc)
                with self._count_lock:
                    self._count -= 1
        if errors:
            raise errors[0]

    def acquire(self) -> WorkerProcess:
        if self.closed:
            raise SandboxError("the sandbox pool is closed", "create a new SandboxPool")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._count_lock:
            can_start = self._count < self.size
            if can_start:
                self._count += 1
        if can_start:
            try:
                return self._start()
            except BaseException:
                with self._count_lock:
                    self._count -= 1
                raise
        return self._idle.get()

    def release(self, worker: WorkerProcess, reusable: bool) -> None:
        if reusable and not self.closed and worker.alive:
            self._idle.put(worker)
            return
        self._discard(worker)

    def _discard(self, worker: WorkerProcess) -> None:
        worker.destroy()
        with self._count_lock:
            self._live.discard(worker)
            self._count -= 1
        if not self.closed:
            self._background.submit(self._refill)

    def _refill(self) -> None:
        """Replace a destroyed worker in the background, so the lane stays warm."""
        try:
            with self._count_lock:
                if self._count >= self.size or self.closed:
                    return
                self._count += 1
            try:
                self._idle.put(self._start())
            except BaseException:
                with self._count_lock:
                    self._count -= 1
        except Exception:
            pass

    def take(self) -> WorkerProcess:
        """Take a worker out of the lane for good; a replacement starts in the background."""
        worker = self.acquire()
        with self._count_lock:
            self._live.discard(worker)
            self._count -= 1
        self._background.submit(self._refill)
        return worker

    def workers(self) -> list[WorkerProcess]:
        with self._count_lock:
            return list(self._live)

    def close(self) -> list[WorkerProcess]:
        """Stop handing out workers; returns the live ones for the caller to destroy."""
        self.closed = True
        with self._count_lock:
            workers = list(self._live)
            self._live.clear()
            self._count = 0
        while not self._idle.empty():
            self._idle.get_nowait()
        return workers


def imported_roots(*sources: str | None) -> set[str]:
    """Top-level names of the modules that `import` statements in these sources name (parsed, never run)."""
    roots: set[str] = set()
    for source in sources:
        if not source:
            continue
        try:
            tree = parse_module(source)
        except (SyntaxError, ValueError):
            continue  # the sandbox reports it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots


class SandboxPool(JobShortcuts):
    """A pool of warm workers of one backend. Thread-safe; async methods run the blocking parts in threads.

    Runs do not see each other: each one is a fresh fork of the worker with its own wiped scratch directory.
    A worker whose run timed out, ran out of memory, flooded its output or left processes behind is destroyed.

    Two lanes of workers: the plain one (only `preload`) runs most code, and a second one with `heavy_modules`
    imported and warmed up runs code that imports any of them, so that code pays no import. A plain worker
    forks several times faster than one holding numpy and sympy. The heavy lane starts on first use.
    """

    def __init__(
        self,
        backend: str | Backend = "auto",
        *,
        size: int = 2,
        limits: Limits | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        heavy_modules: Sequence[str] = DEFAULT_HEAVY_MODULES,
        pin_cpus: bool = False,
        warm: bool = True,
    ) -> None:
        self.backend = resolve_backend(backend) if isinstance(backend, str) else backend
        self.size = max(1, size)
        self.limits = limits or Limits()
        self.preload = list(preload)
        self.heavy_modules = [name for name in heavy_modules if name not in self.preload]
        self.pin_cpus = pin_cpus
        self._closed = False
        self._batch = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="rolegraph-sandbox-batch")
        self._plain = self._lane(self.preload)
        self._heavy: Lane | None = None
        self._heavy_lock = threading.Lock()
        if warm:
            self.warm()

    # ------------------------------------------------------------------------------------------- workers

    def _lane(self, preload: Sequence[str]) -> Lane:
        return Lane(self.backend, self.size, self.limits, preload, self.pin_cpus, self._batch)

    def heavy_lane(self) -> Lane:
        """The lane whose workers preload `heavy_modules`; started (all its workers) on first use."""
        with self._heavy_lock:
            if self._heavy is None:
                if self._closed:
                    raise SandboxError("the sandbox pool is closed", "create a new SandboxPool")
                self._heavy = self._lane([*self.preload, *self.heavy_modules])
            lane = self._heavy
        lane.warm()
        return lane

    def lane_for(self, job: Job) -> Lane:
        """The heavy lane when the job's code imports a heavy module, else the plain lane."""
        sources = (job.code, job.tests)
        # Only code that names a heavy module can import it by statement: most code skips the parse.
        named = any(name in source for name in self.heavy_modules for source in sources if source)
        if named and imported_roots(*sources) & set(self.heavy_modules):
            return self.heavy_lane()
        return self._plain

    def warm(self, *, heavy: bool = False) -> None:
        """Start the plain lane's workers (and the heavy lane's too with `heavy=True`)."""
        self._plain.warm()
        if heavy and self.heavy_modules:
            self.heavy_lane()

    # ------------------------------------------------------------------------------------------ running

    def execute(self, job: Job) -> ExecResult:
        """Run one job on a warm worker and return its result. Never raises for what the program does."""
        limits = job.limits or self.limits
        if self.backend.warns:
            print(_local_warning(), file=sys.stderr, flush=True)
        lane = self.lane_for(job)
        worker = lane.acquire()
        reusable = False
        try:
            reply = worker.request(job.payload(limits), timeout=limits.timeout_s + HOST_GRACE_S)
        except WorkerGone as exc:
            status = Status.TIMEOUT if isinstance(exc, WorkerTimeout) else Status.SANDBOX_ERROR
            result = ExecResult.sandbox_failure(
                f"the sandbox worker stopped answering: {exc}", self.backend.name, status
            )
        else:
            result = ExecResult.from_reply(reply, self.backend.name)
            reusable = result.status not in MISBEHAVED and not reply.get("dirty", False)
        lane.release(worker, reusable)
        return result

    # ------------------------------------------------------------------------------------------- async

    async def aexecute(self, job: Job) -> ExecResult:
        return await asyncio.to_thread(self.execute, job)

    async def amap(self, jobs: Sequence[Job], *, width: int | None = None) -> list[ExecResult]:
        return await asyncio.to_thread(self.map, jobs, width=width)

    # ---------------------------------------------------------------------------------------- sessions

    def take_worker(self) -> WorkerProcess:
        """Take a plain worker out of the pool for good (a session owns it); the pool starts a replacement."""
        return self._plain.take()

    def session(self, limits: Limits | None = None) -> Any:
        """A stateful interpreter session on a worker of this pool (see `Session`)."""
        from rolegraph.environments.sandbox.session import Session

        return Session(self.take_worker(), limits or self.limits, self.backend)

    def workers(self) -> list[WorkerProcess]:
        """The live workers of both lanes (idle or busy), e.g. to inspect their processes."""
        heavy = self._heavy.workers() if self._heavy is not None else []
        return [*self._plain.workers(), *heavy]

    # --------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Destroy every worker. Idempotent."""
        self._closed = True
        self._plain.closed = True
        with self._heavy_lock:
            lanes = [self._plain] if self._heavy is None else [self._plain, self._heavy]
        for lane in lanes:
            lane.closed = True
        self._batch.shutdown(wait=True, cancel_futures=True)
        for lane in lanes:
            for worker in lane.close():
                worker.destroy()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()


def _local_warning() -> str:
    from rolegraph.environments.sandbox.local_backend import WARNING

    return WARNING
