"""The host's handle on one running worker: start it, send JSON requests, destroy it."""

from __future__ import annotations

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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import psutil

from rolegraph.environments.sandbox.base import Backend, Channel, Limits
from rolegraph.errors import SandboxError

# Processes started with a parent-death signal (bwrap --die-with-parent) die when the *thread* that forked
# them ends, so every worker is forked from this one long-lived thread.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rolegraph-sandbox-spawner")
_WORKER_SOURCE: str | None = None
START_TIMEOUT_S = 90.0
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
            if self.destroyed or self.proc.stdin is None:
                raise WorkerGone("worker already destroyed")
            self._next_id += 1
            payload = {**payload, "id": self._next_id}
            data = marshal.dumps(payload)  # plain data; the worker reads marshal frames (see its answer())
            try:
                self._send(b"%d\n" % len(data) + data)
            except (BrokenPipeError, OSError) as exc:
                raise WorkerGone(f"worker pipe closed: {exc}") from exc
            deadline = time.monotonic() + timeout
            while True:
                reply = json.loads(self._read_line(deadline))
                if reply.get("id") == self._next_id:
                    return dict(reply)

    def _read_line(self, deadline: float) -> bytes:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout("no answer in time")
            if not self._selector.select(remaining):
                continue
            try:
                chunk = os.read(self._out_fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise WorkerGone("worker exited")
            self._buffer += chunk

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
