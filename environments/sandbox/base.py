"""What every sandbox backend shares: limits, statuses, results, and the backend interface."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol


class Status(StrEnum):
    """How an execution ended. Only `sandbox_error` means the sandbox itself failed."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"


# A worker that ended a run with one of these is destroyed, never reused.
MISBEHAVED = frozenset({Status.TIMEOUT, Status.MEMORY, Status.OUTPUT_LIMIT, Status.SANDBOX_ERROR})


@dataclass(frozen=True)
class Limits:
    """Per-execution limits. Container-level ones (memory cgroup, pids, tmpfs) are fixed at worker start."""

    timeout_s: float = 10.0
    cpu_s: float | None = None
    """CPU-time limit; defaults to the wall-clock limit plus one second."""
    memory_mb: int = 512
    max_processes: int = 64
    max_output_bytes: int = 1_000_000
    """Combined stdout+stderr beyond this kills the run with status `output_limit`."""
    keep_output_bytes: int = 64_000
    """Output kept per stream: the first and last half of this many bytes."""
    tmpfs_mb: int = 64
    max_file_mb: int = 16
    max_open_files: int = 256

    def to_wire(self) -> dict[str, Any]:
        """The limits as the in-sandbox worker reads them."""
        return dict(self._wire)

    @cached_property
    def _wire(self) -> dict[str, Any]:
        # Computed once per (frozen) instance: every execution sends it.
        wire = {item.name: getattr(self, item.name) for item in fields(self)}
        wire["cpu_s"] = self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1
        return wire

    def with_(self, **changes: Any) -> Limits:
        return replace(self, **changes)


@dataclass
class ExecResult:
    """The outcome of one execution (a program, a call of `f`, a test run, or a session cell)."""

    status: Status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    value: str | None = None
    """For calls: repr() of the returned value, produced inside the sandbox."""
    passed: bool = False
    """For test runs: the tests ran to the end without failing."""
    backend: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of `rolegraph sandbox run`."""
        return {
            "status": str(self.status),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 6),
        }

    @classmethod
    def from_reply(cls, reply: dict[str, Any], backend: str) -> ExecResult:
        try:
            status = Status(reply.get("status", "sandbox_error"))
        except ValueError:
            status = Status.SANDBOX_ERROR
        return cls(
            status=status,
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            exit_code=reply.get("exit_code"),
            duration_s=float(reply.get("duration_s") or 0.0),
            error=reply.get("error"),
            value=reply.get("value"),
            passed=bool(reply.get("passed", False)),
            backend=backend,
        )

    @classmethod
    def sandbox_failure(cls, message: str, backend: str, status: Status = Status.SANDBOX_ERROR) -> ExecResult:
        return cls(status=status, error=message, backend=backend)


@dataclass(frozen=True)
class Channel:
    """Two host FIFOs in a private folder that is bind-mounted into the sandbox (read-only) at `mount`.

    They bypass the docker client/daemon/shim relay of `docker attach`. Once the worker has opened them the
    host unlinks them, so nothing in the sandbox can open them again by path.
    """

    folder: str
    mount: str

    @property
    def requests(self) -> str:
        return f"{self.folder}/requests"

    @property
    def replies(self) -> str:
        return f"{self.folder}/replies"

    def worker_view(self) -> dict[str, str]:
        """The FIFOs' paths as the worker sees them inside the sandbox."""
        return {"requests": f"{self.mount}/requests", "replies": f"{self.mount}/replies"}


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one worker process: argv, environment, host user, and how to tear it down."""

    argv: list[str]
    env: dict[str, str]
    user: int | None = None
    """Host uid/gid to start the process as (None: the current user)."""
    cleanup_argv: list[str] | None = None
    """A command that removes what the process leaves outside itself (e.g. `docker rm -f NAME`)."""
    pid_probe_argv: list[str] | None = None
    """A command printing the host pid of the sandbox's PID 1 (docker inspect)."""
    init_is_child: bool = False
    """The sandbox's PID 1 is the launched process's only child (bwrap)."""
    channel: Channel | None = None
    """FIFOs that carry requests and replies instead of the launcher's stdin/stdout (docker)."""
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """A way to start isolated worker processes."""

    name: str
    warns: bool
    """True for the unisolated backend: every run prints a warning."""

    def check(self) -> str | None:
        """None when the backend works on this machine, else the reason it does not."""
        ...

    def plan(self, limits: Limits, worker_config: dict[str, Any]) -> LaunchPlan:
        """The command that starts one worker with these container-level limits."""
        ...
