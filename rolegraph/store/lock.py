"""One writer per run directory: an exclusive `fcntl.flock` on `RUN_DIR/run.lock` while a command writes.

The kernel drops the lock when its process dies (kill -9 included), so a lock is never stale. The holder
writes who it is (pid, command, start time) to `RUN_DIR/writer.json`; a refused writer quotes it, and readers
(`runs list`) use it with the process table to tell live runs, without ever touching the lock themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import psutil

from rolegraph.errors import RolegraphError

LOCK_FILE = "run.lock"
WRITER_FILE = "writer.json"
POLL_S = 0.2
COMMAND_CHARS = 60


class RunDirInUseError(RolegraphError):
    """Another live process writes this run directory."""


@dataclasses.dataclass(frozen=True)
class Writer:
    """The process that holds (or last held) a run directory's lock."""

    pid: int
    command: str
    started_at: float
    process_created: float
    """The process's creation time, so a recycled pid is not taken for the writer."""

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.process_created) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    @property
    def started(self) -> str:
        return datetime.datetime.fromtimestamp(self.started_at).strftime("%H:%M")


def current_command() -> str:
    """This process's command line, as a user would recognise it (`rolegraph run …`)."""
    argv = list(sys.argv)
    name = Path(argv[0]).name if argv and argv[0] != "-c" else "rolegraph"
    text = shlex.join([name, *argv[1:]])
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 1] + "…"


def read_writer(run_dir: Path | str) -> Writer | None:
    """Who holds (or last held) the lock, from its record; None when there is no readable record."""
    try:
        data = json.loads((Path(run_dir) / WRITER_FILE).read_text())
        return Writer(**data)
    except (OSError, ValueError, TypeError):
        return None


def live_writer(run_dir: Path | str) -> Writer | None:
    """The live process writing `run_dir`, or None. Reads only; never takes the lock."""
    writer = read_writer(run_dir)
    return writer if writer is not None and writer.alive() else None


class RunLock:
    """The exclusive writer lock of one run directory; re-entrant within a process."""

    _held: ClassVar[dict[Path, tuple[int, int]]] = {}
    """Resolved run dir → (fd, depth) for the locks this process holds (flock is per open file)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self._key: Path | None = None

    def _try(self) -> bool:
        key = self.run_dir.resolve()
        if key in RunLock._held:
            fd, depth = RunLock._held[key]
            RunLock._held[key] = (fd, depth + 1)
            self._key = key
            return True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            self._record()
        except BaseException:
            os.close(fd)
            raise
        RunLock._held[key] = (fd, 1)
        self._key = key
        return True

    def _record(self) -> None:
        me = psutil.Process()
        writer = Writer(os.getpid(), current_command(), time.time(), me.create_time())
        path = self.run_dir / WRITER_FILE
        tmp = path.with_name(f".{WRITER_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(dataclasses.asdict(writer)))
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _refusal(self) -> RunDirInUseError:
        # The holder may not have written its record yet: give it a moment before quoting a stale one.
        writer = live_writer(self.run_dir)
        for _ in range(10):
            if writer is not None:
                break
            time.sleep(0.05)
            writer = live_writer(self.run_dir)
        who = (
            f"pid {writer.pid} ({writer.command}, started {writer.started})"
            if writer is not None
            else "another process"
        )
        return RunDirInUseError(
            f"run dir {self.run_dir} is in use by {who}", "wait for it, or use another --run-dir"
        )

    def acquire(self, *, wait: bool = False) -> RunLock:
        """Take the lock; refuse at once with RunDirInUseError, or with `wait` poll until it is free."""
        while not self._try():
            if not wait:
                raise self._refusal()
            time.sleep(POLL_S)
        return self

    async def acquire_async(
        self, *, wait: bool = False, on_wait: Callable[[RunDirInUseError], None] | None = None
    ) -> RunLock:
        """`acquire` that leaves the event loop free (and cancellable) while it waits; `on_wait` hears once
        who holds the lock."""
        told = False
        while not self._try():
            if not wait:
                raise self._refusal()
            if on_wait is not None and not told:
                on_wait(self._refusal())
                told = True
            await asyncio.sleep(POLL_S)
        return self

    def release(self) -> None:
        if self._key is None:
            return
        fd, depth = RunLock._held[self._key]
        if depth > 1:
            RunLock._held[self._key] = (fd, depth - 1)
        else:
            del RunLock._held[self._key]
            (self.run_dir / WRITER_FILE).unlink(missing_ok=True)
            os.close(fd)  # closing the only descriptor drops the flock
        self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
