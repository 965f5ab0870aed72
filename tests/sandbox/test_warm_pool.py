"""The fast warm pool: pre-forked children, the heavy (numpy/sympy) lane, and the docker FIFO channel.

Each speed-up must keep the guarantees: a pre-forked child never sees an earlier run, nothing of a run can
reach the next run's process, and the heavy lane isolates as the plain one does.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from rolegraph.environments.sandbox.base import Status
from rolegraph.environments.sandbox.pool import SandboxPool, imported_roots
from tests.fixtures.sandbox import leftover_processes, spare_child

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]

# Built from parts inside the programs, so a later run's own code never contains the whole marker.
MARKER = "prev-run-marker-5c1e"
TAMPER = f"""
import builtins, os, sys
builtins.len = lambda x: -1
sys.modules["json"] = None
sys.path.insert(0, "/tmp/evil")
os.environ["LEAK"] = "1"
secret = {{"value": {MARKER!r}}}
sys.rolegraph_secret = secret
open("/tmp/mark", "w").write("1")
open("mark-here", "w").write("1")
print("tampered")
"""
PROBE = """
import gc, os, sys
marker = "prev-run-" + "marker-5c1e"
mine = globals()
seen = [o for o in gc.get_objects() if type(o) is dict and o is not mine and marker in map(str, o.values())]
print(len([1, 2]), sys.modules.get("json", "absent") is None, "/tmp/evil" in sys.path)
print("LEAK" in os.environ, hasattr(sys, "rolegraph_secret"), len(seen))
print(sorted(os.listdir("/tmp")), sorted(os.listdir(".")))
"""


def test_workers_keep_a_pre_forked_child_ready(sandbox_pool: SandboxPool) -> None:
    assert sandbox_pool.run("print(1)").ok
    spares = [spare_child(worker) for worker in sandbox_pool.workers() if worker.alive]
    assert spares and all(pid is not None for pid in spares), "every idle worker holds a spare child"


def test_a_pre_forked_child_sees_nothing_of_the_previous_run(sandbox_pool: SandboxPool) -> None:
    for _ in range(2 * sandbox_pool.size):  # runs land on every worker, each on a child forked after a run
        tampered = sandbox_pool.run(TAMPER)
        assert tampered.status == Status.OK and tampered.stdout == "tampered\n"
        probe = sandbox_pool.run(PROBE)
        assert probe.status == Status.OK, probe.stderr
        lines = probe.stdout.splitlines()
        assert lines[0] == "2 False False"
        assert lines[1] == "False False 0", "the previous run's objects reached the next child"
        tmp_listing, cwd_listing = lines[2].split("] [")
        assert "mark" not in tmp_listing and "mark-here" not in cwd_listing


def test_a_run_shares_its_sandbox_with_no_other_run(sandbox_pool: SandboxPool) -> None:
    """While a program runs, the next run's child does not exist yet: nothing of this run can touch it."""
    code = """
import os
mine = {os.getpid()}
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine)
print(others)
"""
    for _ in range(sandbox_pool.size):
        result = sandbox_pool.run(code)
        assert result.status == Status.OK
        assert result.stdout == "[1]\n", "only the fork server (PID 1) may share a sandbox with a run"


HIDE = """
import os
for base in ("/tmp", "."):
    os.makedirs(f"{base}/hidden/deeper", exist_ok=True)
    open(f"{base}/hidden/deeper/secret", "w").write("s")
    os.chmod(f"{base}/hidden/deeper", 0)
    os.chmod(f"{base}/hidden", 0)
os.chmod(".", 0o500)  # and leave the run directory itself read-only
print("hid")
"""
LOOK = """
import os
print(sorted(os.listdir("/tmp")) == [os.path.basename(os.getcwd())], os.listdir("."), os.access(".", os.W_OK))
"""


def test_files_hidden_behind_removed_permissions_do_not_reach_the_next_run(sandbox_pool: SandboxPool) -> None:
    """A run can chmod what it leaves behind to 000, and its own directory read-only; the wipe undoes it."""
    for _ in range(2 * sandbox_pool.size):
        assert sandbox_pool.run(HIDE).stdout == "hid\n"
        look = sandbox_pool.run(LOOK)
        assert look.status == Status.OK, look.stderr
        assert look.stdout == "True [] True\n"


RETUNE_FORK_SERVER = """
import os, resource
server = os.getppid()
resource.prlimit(server, resource.RLIMIT_NOFILE, (20, 20))
resource.prlimit(server, resource.RLIMIT_AS, (100 * 2**20, 100 * 2**20))
os.setpriority(os.PRIO_PROCESS, server, 19)
print("retuned", server)
"""
LIMITS_PROBE = """
from os import getpriority
from resource import RLIMIT_AS, RLIMIT_NOFILE, getrlimit
print(getrlimit(RLIMIT_NOFILE), getrlimit(RLIMIT_AS), getpriority(0, 0))
"""


def test_a_run_cannot_retune_the_fork_server_for_later_runs(sandbox_pool: SandboxPool) -> None:
    """A run has the fork server's uid, so it may prlimit or renice it; the worker is then replaced, since
    every later run would inherit the change."""
    memory = sandbox_pool.limits.memory_mb * 2**20
    expected = f"(256, 256) ({memory}, {memory}) 0\n"
    assert sandbox_pool.run(LIMITS_PROBE).stdout == expected
    for _ in range(sandbox_pool.size):
        retuned = sandbox_pool.run(RETUNE_FORK_SERVER)
        assert retuned.stdout.startswith("retuned"), retuned.stderr
    for _ in range(2 * sandbox_pool.size):
        probe = sandbox_pool.run(LIMITS_PROBE)
        assert probe.status == Status.OK, probe.stderr
        assert probe.stdout == expected


LEAVE_IPC_OBJECTS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
made = [libc.shmget(0x5EC1, 4096, 0o1600), libc.msgget(0x5EC2, 0o1600), libc.semget(0x5EC3, 1, 0o1600)]
queue = libc.mq_open(b"/rolegraph-leak", 0o102, 0o600, None)  # O_CREAT | O_RDWR
print(min(made) >= 0, queue)
"""
FIND_IPC_OBJECTS = """
import ctypes
tables = [open(f"/proc/sysvipc/{kind}").read().count("\\n") - 1 for kind in ("shm", "msg", "sem")]
print(tables, ctypes.CDLL(None).mq_open(b"/rolegraph-leak", 0o2))
"""


def test_ipc_objects_do_not_reach_the_next_run(sandbox_pool: SandboxPool) -> None:
    """System V objects outlive their maker in the sandbox's IPC namespace: a run that leaves one gets its
    worker replaced. POSIX message queues cannot be made at all (RLIMIT_MSGQUEUE is 0)."""
    for _ in range(sandbox_pool.size):
        left = sandbox_pool.run(LEAVE_IPC_OBJECTS)
        assert left.stdout == "True -1\n", left.stderr
    for _ in range(2 * sandbox_pool.size):
        found = sandbox_pool.run(FIND_IPC_OBJECTS)
        assert found.status == Status.OK, found.stderr
        assert found.stdout == "[0, 0, 0] -1\n"


def test_a_spare_that_died_is_replaced(sandbox_pool: SandboxPool) -> None:
    sandbox_pool.run("print(1)")
    for worker in sandbox_pool.workers():
        spare = spare_child(worker)
        assert spare is not None
        os.kill(spare, signal.SIGKILL)
        _wait_dead(spare)
    for _ in range(2 * sandbox_pool.size):
        assert sandbox_pool.run("print(6 * 7)").stdout == "42\n"
    assert leftover_processes(sandbox_pool) == []


def test_imported_roots_are_parsed_not_run() -> None:
    assert imported_roots("import sympy.abc as a\nfrom numpy.linalg import inv\nimport os") == {
        "sympy",
        "numpy",
        "os",
    }
    assert imported_roots("from . import x\nprint('import sympy')", None) == set()
    assert imported_roots("def broken(:") == set()


def test_code_importing_sympy_runs_on_a_preloaded_isolated_worker(sandbox_pool: SandboxPool) -> None:
    plain = sandbox_pool.run("import sys\nprint('sympy' in sys.modules)")
    assert plain.stdout == "False\n", "plain code runs on a worker without sympy"
    preloaded = sandbox_pool.run(
        "import sys\nprint('sympy' in sys.modules, 'numpy' in sys.modules)\nimport sympy\n"
        "x = sympy.Symbol('x')\nprint(sympy.factor(x**2 - 1))"
    )
    assert preloaded.status == Status.OK, preloaded.stderr
    assert preloaded.stdout == "True True\n(x - 1)*(x + 1)\n"
    # The heavy lane keeps every guarantee: no state between runs, user nobody, read-only root, no network.
    for _ in range(2 * sandbox_pool.size):
        hacked = sandbox_pool.run(
            "import sympy, numpy\nsympy.expand = lambda *a, **k: 'hacked'\nnumpy.pi = 3\n"
            "sympy.core.cache.cached_marker = 1\nprint('ok')"
        )
        assert hacked.stdout == "ok\n"
        clean = sandbox_pool.run(
            "import os, socket, sympy, numpy\nx = sympy.Symbol('x')\n"
            "print(sympy.expand((x + 1) ** 2), numpy.pi > 3.1, hasattr(sympy.core.cache, 'cached_marker'))\n"
            "print(os.getuid())\n"
            "try:\n    open('/usr/x', 'w')\nexcept OSError:\n    print('ro')\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError as e:\n"
            "    print('net', e.errno)"
        )
        lines = clean.stdout.splitlines()
        assert lines[0] == "x**2 + 2*x + 1 True False"
        assert lines[1] == "65534" and lines[2] == "ro" and lines[3].startswith("net ")
    assert leftover_processes(sandbox_pool) == []


def test_numpy_runs_do_not_share_a_random_sequence(sandbox_pool: SandboxPool) -> None:
    code = "import numpy, random\nprint(numpy.random.randint(1 << 30), random.randint(0, 1 << 30))"
    outputs = {sandbox_pool.run(code).stdout for _ in range(4)}
    assert len(outputs) == 4


def test_a_heavy_worker_that_misbehaves_is_replaced(sandbox_pool: SandboxPool) -> None:
    sandbox_pool.warm(heavy=True)
    result = sandbox_pool.run(
        "import numpy\nwhile True:\n    pass", limits=sandbox_pool.limits.with_(timeout_s=1)
    )
    assert result.status == Status.TIMEOUT
    assert sandbox_pool.run("import numpy\nprint(numpy.arange(3).sum())").stdout == "3\n"


def test_docker_channel_leaves_no_path_or_descriptor_behind(docker_pool: SandboxPool) -> None:
    worker = docker_pool.workers()[0]
    assert worker.plan.channel is not None
    assert not Path(worker.plan.channel.folder).exists(), "the host removed the FIFOs once they were open"
    code = """
import os
print([os.path.exists(f"/run/rolegraph/{name}") for name in ("requests", "replies")])
print(len(os.listdir("/proc/self/fd")))
try:
    os.listdir("/proc/1/fd")
    print("open")
except OSError:
    print("denied")
"""
    for _ in range(docker_pool.size):
        result = docker_pool.run(code)
        assert result.status == Status.OK
        # stdin, stdout, stderr, the result pipe and listdir's own descriptor: no channel end.
        assert result.stdout.splitlines() == ["[False, False]", "5", "denied"], result.stderr
    host_fifos = [p for p in psutil.Process().open_files() if "rolegraph-sbx-chan" in p.path]
    assert host_fifos == []


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    """A signal is delivered asynchronously: wait until the process is a zombie or gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not die")
