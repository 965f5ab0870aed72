"""Pick a backend (`auto`: docker when its daemon answers and the image exists or builds, else bwrap)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from rolegraph.environments.sandbox.base import Backend
from rolegraph.errors import SandboxError

BACKEND_NAMES = ("auto", "docker", "bwrap", "unsafe-local")


@dataclass(frozen=True)
class BackendReport:
    name: str
    works: bool
    reason: str


def make_backend(name: str) -> Backend:
    """The backend called `name`, without checking that it works."""
    from rolegraph.environments.sandbox.bwrap_backend import BwrapBackend
    from rolegraph.environments.sandbox.docker_backend import DockerBackend
    from rolegraph.environments.sandbox.local_backend import LocalBackend

    backends: dict[str, type[Backend]] = {
        "docker": DockerBackend,
        "bwrap": BwrapBackend,
        "unsafe-local": LocalBackend,
        "local": LocalBackend,
    }
    if name not in backends:
        raise SandboxError(f"unknown sandbox backend {name!r}", f"use one of: {', '.join(BACKEND_NAMES)}")
    return backends[name]()


def resolve_backend(name: str = "auto", *, build_image: bool = True) -> Backend:
    """A working backend. `auto` prefers docker (building the image when it can) and falls back to bwrap."""
    if name != "auto":
        backend = make_backend(name)
        reason = backend.check()
        if reason and name == "docker" and "image" in reason and build_image:
            reason = _build(reason)
        if reason:
            raise SandboxError(f"the {name} sandbox backend does not work: {reason}", _hint_for(name))
        return backend
    docker = make_backend("docker")
    docker_reason = docker.check()
    if docker_reason and "image" in docker_reason and build_image and shutil.which("mmdebstrap"):
        docker_reason = _build(docker_reason)
    if docker_reason is None:
        return docker
    bwrap = make_backend("bwrap")
    bwrap_reason = bwrap.check()
    if bwrap_reason is None:
        return bwrap
    raise SandboxError(
        f"no sandbox backend works (docker: {docker_reason}; bwrap: {bwrap_reason})",
        "start dockerd or install bubblewrap; `--backend unsafe-local` runs WITHOUT isolation",
    )


def _build(reason: str) -> str | None:
    from rolegraph.environments.sandbox.image import build_image

    try:
        build_image()
    except SandboxError as exc:
        return f"{reason}; building it failed: {exc.message}"
    return None


def _hint_for(name: str) -> str:
    return {
        "docker": "start dockerd and run `rolegraph sandbox build-image`, or use --backend bwrap",
        "bwrap": "apt-get install -y bubblewrap, or use --backend docker",
    }.get(name, "run `rolegraph sandbox doctor`")


def doctor() -> list[BackendReport]:
    """Which backends work on this machine, and why the others do not."""
    reports = []
    for name in ("docker", "bwrap", "unsafe-local"):
        reason = make_backend(name).check()
        if name == "unsafe-local":
            reports.append(
                BackendReport(name, True, "always available; runs WITHOUT isolation (rlimits only)")
            )
        else:
            reports.append(BackendReport(name, reason is None, reason or "works"))
    return reports
