"""Studio fixtures: tiny seeded stores, an in-process client, the `studio` command as a server, a browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rolegraph.studio.app import Studio, create_app
from rolegraph.studio.security import Access
from tests.studio.builders import HOSTILE, seed_run

CHROMIUM = "/usr/bin/chromium"
SERVE = (
    "import typer\n"
    "from rolegraph.cli import studio_cmd\n"
    "app = typer.Typer()\n"
    "studio_cmd.register(app)\n"
    "app()\n"
)
"""The `rolegraph studio` command on its own (the same function the root app registers)."""


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """A folder with one run whose completions are hostile."""
    seed_run(tmp_path / "runs" / "hostile", episodes=len(HOSTILE), texts=HOSTILE)
    return tmp_path / "runs"


def client_for(root: Path, host: str = "127.0.0.1", **studio: object) -> TestClient:
    app = create_app(Studio([root], Access.for_host(host, 8765), **studio))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:8765")


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $ROLEGRAPH_TEST_ARTIFACTS, else a pytest temporary folder."""
    where = os.environ.get("ROLEGRAPH_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("studio-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


StudioServer = Callable[..., str]


@pytest.fixture
def studio_server() -> Iterator[StudioServer]:
    """Start `rolegraph studio FOLDER --port 0 …` in a subprocess; returns the URL it prints."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, *args, "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"(http://\S+)", line)
            if found:
                return found.group(1)
            if not line and process.poll() is not None:
                break
        raise AssertionError(f"the studio did not start (exit {process.poll()})")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium, driven by Playwright (no browser download)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("needs Debian's chromium: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield instance
        instance.close()
