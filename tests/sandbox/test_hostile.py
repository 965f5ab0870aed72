"""Hostile programs, run on every isolating backend: each is contained and leaves the host unchanged."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rolegraph.environments.sandbox.base import Status
from rolegraph.environments.sandbox.pool import SandboxPool
from tests.data import SHARED_DATA
from tests.fixtures.sandbox import leftover_processes, worker_host_pid

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]


def run_contained(pool: SandboxPool, code: str, **kwargs: object) -> tuple[Status, str, str]:
    """Run `code`, then check that nothing of it survives: no process under any worker, and every worker
    that was destroyed is gone from the host with all its processes."""
    before = {w: worker_host_pid(w) for w in pool.workers()}
    result = pool.run(code, **kwargs)  # type: ignore[arg-type]
    assert leftover_processes(pool) == []
    alive_now = set(pool.workers())
    for worker, pid in before.items():
        if worker not in alive_now:
            assert worker.destroyed
            assert not _running(pid), (
                f"destroyed {worker.backend.name} worker {pid} still runs: {_describe(pid)}"
            )
    assert pool.run("print(1 + 1)").stdout == "2\n", "the pool must keep working after a hostile run"
    return result.status, result.stdout, result.stderr


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[object]]]:
    """A TCP listener on the host's 127.0.0.1; yields its port and the list of accepted connections."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_cannot_reach_a_listener_on_host_loopback(
    sandbox_pool: SandboxPool, loopback_listener: tuple[int, list[object]]
) -> None:
    port, accepted = loopback_listener
    # Control: the listener is reachable from the host itself.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    time.sleep(0.3)
    assert len(accepted) == 1
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("CONNECTED")
except OSError as exc:
    print("blocked", exc.errno)
"""
    status, stdout, _ = run_contained(sandbox_pool, code)
    assert status == Status.OK
    assert "blocked" in stdout and "CONNECTED" not in stdout
    time.sleep(0.3)
    assert len(accepted) == 1, "the sandbox reached the host's listener"


def test_sees_no_interface_or_route_beyond_lo(sandbox_pool: SandboxPool) -> None:
    code = """
import socket
dev = open("/proc/net/dev").read().splitlines()[2:]
print("IFACES", sorted(line.split(":")[0].strip() for line in dev))
print("ROUTES", len(open("/proc/net/route").read().splitlines()[1:]))
print("NAMES", sorted(name for _, name in socket.if_nameindex()))
"""
    status, stdout, _ = run_contained(sandbox_pool, code)
    assert status == Status.OK
    assert "IFACES ['lo']" in stdout
    assert "ROUTES 0" in stdout
    assert "NAMES ['lo']" in stdout


def test_cannot_read_a_host_file(sandbox_pool: SandboxPool, tmp_path: Path) -> None:
    secret = "host-secret-7f3a9c"
    path = tmp_path / "secret.txt"
    path.write_text(secret)
    path.chmod(0o644)
    code = f"""
for p in [{str(path)!r}, "/etc/shadow", "/root/.bashrc", {str(SHARED_DATA / "math500_dev.jsonl")!r}]:
    try:
        print(open(p).read()[:200])
    except OSError as exc:
        print("denied", p, type(exc).__name__)
"""
    status, stdout, _ = run_contained(sandbox_pool, code)
    assert status == Status.OK
    assert secret not in stdout
    assert stdout.count("denied") == 4


def test_cannot_write_a_host_file(sandbox_pool: SandboxPool, tmp_path: Path) -> None:
    targets = [tmp_path / "written.txt", Path("/tmp") / f"rolegraph-escape-{os.getpid()}.txt"]
    tmp_path.chmod(0o777)
    code = f"""
for p in {[str(t) for t in targets]!r} + ["/usr/rolegraph-escape.txt", "/etc/rolegraph-escape"]:
    try:
        open(p, "w").write("escaped")
        print("wrote", p)
    except OSError as exc:
        print("denied", p, type(exc).__name__)
"""
    run_contained(sandbox_pool, code)
    for target in [*targets, Path("/usr/rolegraph-escape.txt"), Path("/etc/rolegraph-escape")]:
        assert not target.exists(), f"the sandbox wrote {target} on the host"


def test_sees_none_of_the_host_environment(
    sandbox_image: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "env-secret-91bd2e"
    monkeypatch.setenv("ROLEGRAPH_TEST_SECRET", secret)
    code = """
import os
print(sorted(os.environ.items()))
for p in ["/proc/self/environ", "/proc/1/environ"]:
    try:
        print(open(p, "rb").read())
    except OSError as exc:
        print("denied", p)
"""
    for backend in ("docker", "bwrap"):
        with SandboxPool(backend, size=1) as pool:  # started after the secret was set
            result = pool.run(code)
        assert result.status == Status.OK
        assert secret not in result.stdout and "ROLEGRAPH_TEST_SECRET" not in result.stdout
        assert "HOME" in result.stdout  # the sandbox has its own small environment


def test_fork_bomb_is_contained(sandbox_pool: SandboxPool) -> None:
    code = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    status, _, _ = run_contained(sandbox_pool, code)
    assert status == Status.TIMEOUT


def test_memory_bomb_is_contained(sandbox_pool: SandboxPool) -> None:
    status, _, _ = run_contained(sandbox_pool, "x = bytearray(8 * 1024 ** 3)")
    assert status == Status.MEMORY
    status, _, _ = run_contained(
        sandbox_pool, "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))"
    )
    assert status == Status.MEMORY


def test_infinite_loop_times_out(sandbox_pool: SandboxPool) -> None:
    started = time.monotonic()
    status, _, _ = run_contained(sandbox_pool, "while True:\n    pass")
    assert status == Status.TIMEOUT
    assert time.monotonic() - started < 15


def test_output_flood_is_cut(sandbox_pool: SandboxPool) -> None:
    status, stdout, _ = run_contained(sandbox_pool, "while True:\n    print('x' * 4096)")
    assert status == Status.OUTPUT_LIMIT
    assert len(stdout) < 100_000


def test_disk_fill_is_contained(sandbox_pool: SandboxPool) -> None:
    host_free = psutil.disk_usage("/").free
    code = """
import itertools
block = b"x" * (1 << 20)
for i in itertools.count():
    with open(f"/tmp/fill-{i}", "wb") as handle:
        for _ in range(8):
            handle.write(block)
"""
    status, _, stderr = run_contained(sandbox_pool, code)
    assert status == Status.ERROR
    assert "OSError" in stderr or "No space" in stderr or "File too large" in stderr
    assert abs(psutil.disk_usage("/").free - host_free) < 512 << 20
    # The next run in the same pool sees a clean /tmp.
    listing = sandbox_pool.run("import os; print(sorted(os.listdir('/tmp')))")
    assert "fill-" not in listing.stdout


def test_killing_everything_or_the_parent_is_contained(sandbox_pool: SandboxPool) -> None:
    kill_all = (
        "import os, signal, time\nif os.fork() == 0:\n    time.sleep(100)\n"
        "os.kill(-1, signal.SIGKILL)\nprint('alive')"
    )
    status, stdout, _ = run_contained(sandbox_pool, kill_all)
    assert status == Status.OK and stdout == "alive\n"
    status, _, _ = run_contained(
        sandbox_pool, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('x')"
    )
    assert status in (Status.OK, Status.ERROR)
    status, _, _ = run_contained(
        sandbox_pool, "import os, signal\nos.kill(1, signal.SIGKILL)\nos.killpg(0, 9)"
    )
    assert status in (Status.OK, Status.ERROR, Status.MEMORY)


def test_daemonized_child_does_not_survive(sandbox_pool: SandboxPool) -> None:
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
print("parent done")
"""
    status, stdout, _ = run_contained(sandbox_pool, code)
    assert status == Status.OK
    assert stdout == "parent done\n"


def test_runs_do_not_see_each_others_files_or_state(sandbox_pool: SandboxPool) -> None:
    first = sandbox_pool.run(
        "import builtins, os\nbuiltins.len = lambda x: -1\nopen('/tmp/mark', 'w').write('1')"
    )
    assert first.status == Status.OK
    for _ in range(4):  # every worker of the pool
        later = sandbox_pool.run("import os\nprint(len([1, 2]), os.path.exists('/tmp/mark'))")
        assert later.stdout == "2 False\n"


def test_runs_as_nobody_with_a_read_only_root(sandbox_pool: SandboxPool) -> None:
    code = """
import os
print(os.getuid(), os.getgid())
try:
    open("/usr/x", "w")
except OSError as exc:
    print("ro", type(exc).__name__)
"""
    status, stdout, _ = run_contained(sandbox_pool, code)
    assert status == Status.OK
    assert stdout.splitlines()[0] == "65534 65534"
    assert "ro " in stdout


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{proc.status()} {proc.name()} ppid={proc.ppid()}"
    except psutil.NoSuchProcess:
        return "gone"
