"""Docker backend: one long-lived container per worker, from the `rolegraph sandbox build-image` image."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any

from rolegraph.environments.sandbox.base import LaunchPlan, Limits
from rolegraph.environments.sandbox.image import image_exists, image_tag
from rolegraph.environments.sandbox.process import DEBIAN_SITE_DIRS, make_channel, worker_argv

LABEL = "rolegraph.sandbox"
NOBODY = "65534:65534"
NOBODY_UID = 65534
CHANNEL_MOUNT = "/run/rolegraph"
WORKER_OVERHEAD_MB = 256
"""Memory for the fork server itself (with numpy and sympy preloaded) on top of one run's limit."""
ENV = {"HOME": "/tmp", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def daemon_answers() -> str | None:
    """None when `docker info` answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed (apt-get install -y docker.io)"
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer within 20 s"
    if proc.returncode != 0:
        return "the Docker daemon does not answer (start it: setsid dockerd >/var/log/dockerd.log 2>&1 &)"
    return None


def container_run_argv(name: str, limits: Limits, image: str) -> list[str]:
    """`docker run` options shared by warm workers and one-shot runs: every isolation flag in one place."""
    argv = [
        "docker", "run", "--rm", "--name", name, "--label", f"{LABEL}=1",
        "--network", "none", "--read-only",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777",
        "--shm-size", "16m",
        "--user", NOBODY, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", f"{limits.memory_mb + WORKER_OVERHEAD_MB}m",
        "--memory-swap", f"{limits.memory_mb + WORKER_OVERHEAD_MB}m",
        "--pids-limit", str(limits.max_processes + 8),
        "--ulimit", "nofile=1024:1024", "--ulimit", "core=0",
        "--hostname", "sandbox", "--log-driver", "none", "--workdir", "/tmp",
    ]  # fmt: skip
    for key, value in ENV.items():
        argv += ["--env", f"{key}={value}"]
    return [*argv, image]


class DockerBackend:
    """Containers with no network, a read-only root, a tmpfs /tmp, user nobody and cgroup limits."""

    name = "docker"
    warns = False

    def __init__(self, image: str | None = None) -> None:
        self.image = image or image_tag()

    def check(self) -> str | None:
        reason = daemon_answers()
        if reason:
            return reason
        if not image_exists(self.image):
            return f"the image {self.image} is missing (run `rolegraph sandbox build-image`)"
        return None

    def plan(self, limits: Limits, worker_config: dict[str, Any]) -> LaunchPlan:
        name = f"rolegraph-sbx-{uuid.uuid4().hex[:12]}"
        channel = make_channel(CHANNEL_MOUNT, NOBODY_UID)
        config = {
            **worker_config,
            "sandboxed": True,
            "site_dirs": DEBIAN_SITE_DIRS,
            "scratch": "/tmp",
            "wipe_dirs": ["/tmp", "/dev/shm"],
            # Without a user namespace RLIMIT_NPROC would count every container's nobody processes together;
            # the per-container pids cgroup is the process limit here.
            "nproc_rlimit": False,
            "channel": channel.worker_view(),
        }
        run = container_run_argv(name, limits, self.image)
        # Read-only: the sandbox can open the two FIFOs (a FIFO ignores a read-only mount) and nothing else.
        run[2:2] = ["-i", "--mount", f"type=bind,source={channel.folder},target={CHANNEL_MOUNT},readonly"]
        argv = [*run, *worker_argv("python3", ["-I", "-S", "-B"], config)]
        return LaunchPlan(
            argv=argv,
            env=_client_env(),
            cleanup_argv=["docker", "rm", "-f", name],
            pid_probe_argv=["docker", "inspect", "--format", "{{.State.Pid}}", name],
            name=name,
            channel=channel,
        )


def _client_env() -> dict[str, str]:
    """The docker client needs only PATH (and DOCKER_HOST if set); nothing else of ours reaches it."""
    import os

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key in ("DOCKER_HOST", "DOCKER_CONFIG"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def leftover_containers() -> list[str]:
    """Names of rolegraph sandbox containers that still exist (for tests and `doctor`)."""
    proc = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line for line in proc.stdout.split() if line]
