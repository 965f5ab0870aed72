"""The host's handle on one running worker: start it, send JSON requests, destroy it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import psutil

from rolegraph.environments.sandbox.base import Backend, Channel, Limits
from rolegraph.errors import SandboxError

# Processes started with a parent-death signal (bwrap --die-with-parent) die when the *thread* that forked
# them ends, so every worker is forked from this one long-lived thread.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rolegraph-sandbox-spawner")
_WORKER_SOURCE: str | None = None
START_TIMEOUT_S = 90.0
READ_CHUNK = 1 << 20
SMALL_REQUEST_CHARS = 8 * 1024
"""Requests up to this much code are written from the event loop: the pipe is empty between requests and
holds 64 KiB (≥ 4 bytes a character), so such a write never blocks; bigger ones are written from a thread."""
T = TypeVar("T")
DEBIAN_SITE_DIRS = ["/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages"]
"""What site.py would add for Debian's python3 (the sandboxed worker runs with -S)."""


WORKER_BOOTSTRAP = (
    "import sys; exec(compile(sys.argv.pop(1), 'rolegraph-sandbox-worker', 'exec'), {'__name__': '__main__'})"
)
"""The `python3 -c` program that starts a worker. compile() frees the parser's memory when it returns; given
as `-c` itself, the worker's ~2 MB syntax tree would stay alive for the worker's whole life, and fork copies
(and exit unmaps) every page of it on every run."""


def worker_argv(python: str, flags: Sequence[str], config: Mapping[str, Any]) -> list[str]:
    """The command line that starts a fork server under `python` with this config."""
    return [python, *flags, "-c", WORKER_BOOTSTRAP, worker_source(), json.dumps(config)]


def worker_source() -> str:
    """The in-sandbox fork server's source, which WORKER_BOOTSTRAP compiles and runs."""
    global _WORKER_SOURCE
    if _WORKER_SOURCE is None:
        _WORKER_SOURCE = resources.files("rolegraph.environments.sandbox").joinpath("worker.py").read_text()
    return _WORKER_SOURCE


def make_channel(mount: str, owner: int | None) -> Channel:
    """A private folder with the two FIFOs of one worker; `owner` (a uid) is who may open them."""
    folder = tempfile.mkdtemp(prefix="rolegraph-sbx-chan-")
    os.chmod(folder, 0o711)  # the sandbox user may open the FIFOs by exact path but not list the folder
    channel = Channel(folder=folder, mount=mount)
    for path in (channel.requests, channel.replies):
        os.mkfifo(path, 0o600)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, owner, owner)
        else:
            os.chmod(path, 0o666)
    return channel


class WorkerGone(Exception):
    """The worker closed its pipe or did not answer in time; it must be destroyed."""


class WorkerTimeout(WorkerGone):
    """The worker did not answer in time (it still runs: a program that outlived every limit)."""


class WorkerProcess:
    """One fork-server worker inside one sandbox. Requests are serialized; use one per thread at a time."""

    def __init__(self, backend: Backend, limits: Limits, worker_config: dict[str, Any]) -> None:
        self.backend = backend
        self.plan = backend.plan(limits, worker_config)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in destroy)
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: tuple[int, asyncio.Future[dict[str, Any]]] | None = None
        """The request an event loop awaits the reply to, and its future."""
        self._watch: tuple[asyncio.AbstractEventLoop, int] | None = None
        """The loop watching the reply pipe, and the fd it watches (see `_start_watch`)."""
        self._watch_lock = threading.Lock()
        self.destroyed = False
        self.sandbox_pid: int | None = None
        """Host pid of the process that is PID 1 inside the sandbox (the fork server), once it is ready."""
        self._channel_fds: list[int] = []
        self._in_fd: int | None = None
        if self.plan.channel is not None:
            # Opened before the worker starts so its own opens never block: our read end of the replies, and
            # requests opened read-write for now (a FIFO open for writing needs a reader to exist).
            self._channel_fds = [
                os.open(self.plan.channel.replies, os.O_RDONLY | os.O_NONBLOCK),
                os.open(self.plan.channel.requests, os.O_RDWR),
            ]
        try:
            self.proc: subprocess.Popen[bytes] = _SPAWNER.submit(self._spawn).result()
        except BaseException:
            self._close_channel()
            raise
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._out_fd = self.proc.stdout.fileno()
        os.set_blocking(self._out_fd, False)
        self._selector.register(self._out_fd, selectors.EVENT_READ)

    def _spawn(self) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        if self.plan.user is not None:
            kwargs.update(user=self.plan.user, group=self.plan.user, extra_groups=[])
        try:
            return subprocess.Popen(
                self.plan.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=self.plan.env,
                cwd="/",
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            raise SandboxError(
                f"cannot start the {self.backend.name} sandbox: {exc}", "run `rolegraph sandbox doctor`"
            ) from exc

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        try:
            hello = self._read_line(time.monotonic() + timeout)
        except WorkerGone as exc:
            detail = self.stderr_tail() or str(exc)
            self.destroy()
            raise SandboxError(
                f"the {self.backend.name} sandbox did not start: {detail}", "run `rolegraph sandbox doctor`"
            ) from exc
        if not json.loads(hello).get("ready"):
            self.destroy()
            raise SandboxError(f"the {self.backend.name} sandbox sent {hello[:80]!r}", "report this as a bug")
        if self.plan.channel is not None:
            self._switch_to_channel(self.plan.channel)
        self.sandbox_pid = self._find_sandbox_pid()

    def _switch_to_channel(self, channel: Channel) -> None:
        """The worker has opened both FIFOs: talk through them from now on, and remove their names."""
        replies, requests_rw = self._channel_fds
        # A write-only end first (the worker is reading, so this cannot block), then drop the read-write one:
        # the worker never sees zero writers, and we get EPIPE rather than a hang if the worker dies.
        requests = os.open(channel.requests, os.O_WRONLY | os.O_NONBLOCK)
        os.set_blocking(requests, True)
        os.close(requests_rw)
        self._channel_fds = [replies, requests]
        shutil.rmtree(channel.folder, ignore_errors=True)
        self._selector.unregister(self._out_fd)
        self._out_fd = replies
        self._in_fd = requests
        self._selector.register(replies, selectors.EVENT_READ)
        if self._buffer:
            self._buffer.clear()  # nothing but the hello ever comes on stdout

    def _send(self, data: bytes) -> None:
        if self._in_fd is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._in_fd, view) :]

    def _close_channel(self) -> None:
        for fd in self._channel_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._channel_fds = []
        if self.plan.channel is not None:
            shutil.rmtree(self.plan.channel.folder, ignore_errors=True)

    def _find_sandbox_pid(self) -> int | None:
        if self.plan.pid_probe_argv:
            try:
                probe = subprocess.run(self.plan.pid_probe_argv, capture_output=True, text=True, timeout=30)
                pid = int(probe.stdout.strip() or 0)
            except (subprocess.TimeoutExpired, ValueError):
                return None
            return pid or None
        if self.plan.init_is_child:
            children = _children(self.proc.pid)
            return children[0] if len(children) == 1 else None
        return None

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply; raises WorkerGone on EOF, WorkerTimeout when `timeout`
        passes."""
        with self._lock:
            request_id = self._send_request(payload)
            deadline = time.monotonic() + timeout
            while True:
                reply = self._reply_in_buffer(request_id)
                if reply is not None:
                    return reply
                self._read_into_buffer(deadline)

    async def arequest(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """`request` through the running event loop: the loop watches the reply pipe, so other coroutines run
        while the worker works and no thread is involved. Same protocol code, same errors."""
        if not self._lock.acquire(blocking=False):
            await _in_thread_holding(self._lock, self._lock.acquire)  # a thread is using this worker (rare)
        if (
            len(payload.get("code", "")) > SMALL_REQUEST_CHARS
        ):  # a big frame may fill the pipe: block off-loop
            request_id = await _in_thread_holding(self._lock, self._send_request, payload)
        else:
            try:
                request_id = self._send_request(payload)
            except BaseException:
                self._lock.release()
                raise
        try:
            reply = self._reply_in_buffer(request_id)
            return reply if reply is not None else await self._await_reply(request_id, timeout)
        finally:
            self._lock.release()

    async def _await_reply(self, request_id: int, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[dict[str, Any]] = loop.create_future()
        timer = loop.call_later(timeout, _expire, answered)
        self._waiting = (request_id, answered)
        try:
            if self._watch is None or self._watch[0] is not loop:
                self._start_watch(loop)
            return await answered
        finally:
            timer.cancel()
            self._waiting = None

    def _start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have `loop` watch the reply pipe until the pipe shows a sign between requests (a reply nobody
        awaits, or EOF) or the worker is destroyed: adding and removing a reader per request costs more than
        a trivial cell's own bookkeeping. The loop watches a duplicate of the pipe's fd that only the loop
        closes, so its number cannot be reused while the loop still has it, whichever thread destroys us."""
        self._end_watch()
        try:
            fd = os.dup(self._out_fd)
        except OSError as exc:  # destroyed from another thread just now
            raise WorkerGone(f"worker pipe closed: {exc}") from exc
        loop.add_reader(fd, self._readable)
        with self._watch_lock:
            self._watch = (loop, fd)

    def _readable(self) -> None:
        """The watching loop's callback: reads the reply the loop awaits; otherwise ends the watch."""
        waiting, watch = self._waiting, self._watch
        if waiting is None or waiting[1].done() or watch is None:
            self._end_watch()  # unread: a sync request's reply is its own, and EOF is the next request's
            return
        request_id, answered = waiting
        try:
            chunk = os.read(watch[1], READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            answered.set_exception(WorkerGone(f"worker pipe failed: {exc}"))
            return
        if not chunk:
            answered.set_exception(WorkerGone("worker exited"))
            return
        self._buffer += chunk
        try:
            reply = self._reply_in_buffer(request_id)
        except WorkerGone as exc:
            answered.set_exception(exc)
            return
        if reply is not None:
            answered.set_result(reply)

    def _end_watch(self) -> None:
        """Stop the loop watching the reply pipe: at once on the loop's thread, else on its next turn."""
        with self._watch_lock:
            watch, self._watch = self._watch, None
        if watch is None:
            return
        loop, fd = watch
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop_watch(loop, fd)
            return
        try:
            loop.call_soon_threadsafe(self._stop_watch, loop, fd)
        except RuntimeError:  # the loop is closed, and its selector with it
            os.close(fd)

    def _stop_watch(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """(On the loop's thread.) Stop watching and close the watched fd. A destroyed worker's awaited reply
        will never come: its waiter fails now rather than at its timeout."""
        if not loop.is_closed():
            loop.remove_reader(fd)
        os.close(fd)
        waiting = self._waiting
        if self.destroyed and waiting is not None and waiting[1].get_loop() is loop and not waiting[1].done():
            waiting[1].set_exception(WorkerGone("worker destroyed"))

    def _send_request(self, payload: dict[str, Any]) -> int:
        """Frame and send one request (caller holds the lock); returns its id. The worker reads marshal
        frames (see its answer()): plain data, parsed with fewer page faults than JSON."""
        if self.destroyed or self.proc.stdin is None:
            raise WorkerGone("worker already destroyed")
        self._next_id += 1
        data = marshal.dumps({**payload, "id": self._next_id})
        try:
            self._send(b"%d\n" % len(data) + data)
        except (BrokenPipeError, OSError) as exc:
            raise WorkerGone(f"worker pipe closed: {exc}") from exc
        return self._next_id

    def _reply_in_buffer(self, request_id: int) -> dict[str, Any] | None:
        """The reply to `request_id` if it is complete in the buffer; earlier requests' replies (one whose
        caller gave up) are dropped. A line that is not JSON means the worker is broken: WorkerGone."""
        while True:
            line = self._line_in_buffer()
            if line is None:
                return None
            try:
                reply = json.loads(line)
            except ValueError as exc:
                raise WorkerGone(f"worker sent a malformed reply: {exc}") from exc
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return reply

    def _line_in_buffer(self) -> bytes | None:
        newline = self._buffer.find(b"\n")
        if newline < 0:
            return None
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        return line

    def _read_into_buffer(self, deadline: float) -> None:
        """Block until the worker sends more bytes; WorkerGone on EOF, WorkerTimeout past `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout("no answer in time")
            if not self._selector.select(remaining):
                continue
            try:
                chunk = os.read(self._out_fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                raise WorkerGone("worker exited")
            self._buffer += chunk
            return

    def _read_line(self, deadline: float) -> bytes:
        while True:
            line = self._line_in_buffer()
            if line is not None:
                return line
            self._read_into_buffer(deadline)

    def stderr_tail(self, limit: int = 400) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-limit:]

    @property
    def alive(self) -> bool:
        return not self.destroyed and self.proc.poll() is None

    def destroy(self) -> None:
        """Kill the worker and everything in its sandbox. Idempotent."""
        if self.destroyed:
            return
        self.destroyed = True
        self._end_watch()
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        # Kill the sandbox's PID 1: the kernel then kills its whole PID namespace, and the launcher (bwrap, or
        # the attached docker client) exits only once all of it is gone, so waiting on the launcher waits for
        # the sandbox to be empty.
        if self.sandbox_pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.sandbox_pid, 9)
        else:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        if self.plan.cleanup_argv:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(self.plan.cleanup_argv, capture_output=True, timeout=60, check=False)
        self._selector.close()
        self._close_channel()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _expire(answered: asyncio.Future[dict[str, Any]]) -> None:
    if not answered.done():
        answered.set_exception(WorkerTimeout("no answer in time"))


async def _in_thread_holding(lock: threading.Lock, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread, for a caller that holds `lock` (or is taking it, when fn is lock.acquire). If
    the caller is cancelled meanwhile, the thread still finishes and the lock is released after it; if fn
    raises, the lock is released."""
    running = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        running.add_done_callback(lambda _: lock.release())
        raise
    except BaseException:
        lock.release()
        raise


def _children(pid: int) -> list[int]:
    """Direct children of a host process, e.g. the PID 1 that bwrap started."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def start_worker(backend: Backend, limits: Limits, worker_config: dict[str, Any]) -> WorkerProcess:
    worker = WorkerProcess(backend, limits, worker_config)
    worker.wait_ready()
    return worker
