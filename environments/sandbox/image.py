"""Build the docker sandbox image offline: mmdebstrap a Debian rootfs, then `docker import` it.

The tag is a content hash of the package list and the build recipe, so a changed recipe gives a new tag and an
unchanged one is never rebuilt. The rootfs tar is cached under $ROLEGRAPH_HOME/cache/sandbox.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from rolegraph.errors import SandboxError
from rolegraph.paths import cache_dir

IMAGE_REPO = "rolegraph-sandbox"
SUITE = "bookworm"
PACKAGES = ("python3-minimal", "python3", "python3-numpy", "python3-sympy")
# Everything that shapes the rootfs goes into the tag; bump RECIPE_VERSION when the recipe changes meaning.
RECIPE_VERSION = 1
MMDEBSTRAP_OPTIONS = (
    "--variant=apt",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)


def image_tag() -> str:
    """`rolegraph-sandbox:<hash>`, the hash of the package list and the build recipe."""
    recipe = {
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "options": MMDEBSTRAP_OPTIONS,
        "v": RECIPE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{IMAGE_REPO}:{digest}"


def image_exists(tag: str | None = None) -> bool:
    """True when the docker daemon answers and holds the image."""
    if shutil.which("docker") is None:
        return False
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag or image_tag()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0


def rootfs_cache_path(tag: str | None = None) -> Path:
    digest = (tag or image_tag()).split(":", 1)[1]
    folder = cache_dir() / "sandbox"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"rootfs-{digest}.tar"


def build_image(*, force: bool = False, log: Callable[[str], None] | None = None) -> str:
    """Build (or find) the sandbox image and return its tag. Idempotent and safe across processes."""
    say = log or (lambda _msg: None)
    tag = image_tag()
    if not force and image_exists(tag):
        say(f"image {tag} already exists")
        return tag
    for tool, package in (("docker", "docker.io"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            raise SandboxError(
                f"cannot build the sandbox image: `{tool}` is not installed", f"apt-get install -y {package}"
            )
    lock_path = cache_dir() / "sandbox" / "build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same tag right now
        if not force and image_exists(tag):
            say(f"image {tag} already exists")
            return tag
        tar = rootfs_cache_path(tag)
        if force or not tar.exists():
            _mmdebstrap(tar, say)
        else:
            say(f"using cached rootfs {tar}")
        say(f"docker import {tar.name} {tag}")
        proc = subprocess.run(
            ["docker", "import", str(tar), tag], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise SandboxError(
                f"`docker import` failed: {_last_line(proc.stderr)}",
                "check that the Docker daemon runs (`docker info`) and has disk space",
            )
    say(f"built {tag}")
    return tag


def _mmdebstrap(tar: Path, say: Callable[[str], None]) -> None:
    partial = tar.with_suffix(f".partial-{os.getpid()}.tar")
    cmd = ["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={','.join(PACKAGES)}", SUITE, str(partial)]
    say("mmdebstrap " + " ".join(cmd[1:]) + " (20-60 s)")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SandboxError(
            f"mmdebstrap failed: {_last_line(proc.stderr)}",
            "check that a Debian mirror is reachable (apt-get update) and there is disk space",
        )
    partial.replace(tar)  # only a complete tar ever carries the final name
    say(f"rootfs built in {time.monotonic() - started:.0f} s ({tar.stat().st_size / 1e6:.0f} MB)")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
