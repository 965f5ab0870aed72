"""bubblewrap backend: the system Python in fresh namespaces, started as user nobody, no daemon needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rolegraph.environments.sandbox.base import LaunchPlan, Limits
from rolegraph.environments.sandbox.process import DEBIAN_SITE_DIRS, worker_argv

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1"}


def _root_links() -> list[str]:
    """/bin, /lib, /lib64: a symlink into /usr on merged-usr systems, else a read-only bind."""
    args: list[str] = []
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    return args


def bwrap_argv(limits: Limits) -> list[str]:
    """Every isolation flag in one place: all namespaces, read-only binds, private /tmp, clean env."""
    argv = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1",
        "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr", *_root_links(),
        # numpy finds its BLAS through /etc/alternatives; ld.so.cache only speeds up loading.
        "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(16 << 20), "--tmpfs", "/dev/shm",
        "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp",
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", "/tmp", "--clearenv",
    ]  # fmt: skip
    for key, value in ENV.items():
        argv += ["--setenv", key, value]
    return argv


class BwrapBackend:
    """Namespaces (user, pid, net, ipc, uts, mount) around /usr/bin/python3; limits are rlimits."""

    name = "bwrap"
    warns = False

    def check(self) -> str | None:
        if shutil.which("bwrap") is None:
            return "bubblewrap is not installed (apt-get install -y bubblewrap)"
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            return f"{SYSTEM_PYTHON} is missing (apt-get install -y python3)"
        plan = self.plan(Limits(), {})
        kwargs: dict[str, Any] = {}
        if plan.user is not None:
            kwargs.update(user=plan.user, group=plan.user, extra_groups=[])
        probe = [*plan.argv[: plan.argv.index(SYSTEM_PYTHON)], SYSTEM_PYTHON, "-c", "print('ok')"]
        try:
            proc = subprocess.run(
                probe, capture_output=True, text=True, timeout=30, env=plan.env, cwd="/", **kwargs
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap did not run: {exc}"
        if proc.stdout.strip() != "ok":
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return f"bwrap cannot create namespaces here: {detail} (user namespaces may be disabled)"
        return None

    def plan(self, limits: Limits, worker_config: dict[str, Any]) -> LaunchPlan:
        config = {
            **worker_config,
            "sandboxed": True,
            "site_dirs": DEBIAN_SITE_DIRS,
            "scratch": "/tmp",
            "wipe_dirs": ["/tmp", "/dev/shm"],
            "nproc_rlimit": True,  # each sandbox has its own user namespace, so the count is per sandbox
        }
        argv = [*bwrap_argv(limits), *worker_argv(SYSTEM_PYTHON, ["-I", "-S", "-B"], config)]
        # Started as nobody on the host too: even an escape from the namespaces lands as an unprivileged user.
        user = NOBODY if os.geteuid() == 0 else None
        return LaunchPlan(
            argv=argv, env={"PATH": "/usr/bin:/bin"}, user=user, name="bwrap", init_is_child=True
        )
