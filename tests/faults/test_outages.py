"""The disk fills up mid-run, and the endpoint dies and comes back mid-run: nothing is lost, nothing
half-written is read as finished, and a re-run completes the run without duplicating anything."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import ROOT, Faults, assert_resumed, assert_sound, finished, query, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (we run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_stops_the_run_with_one_line_and_a_rerun_resumes(faults: Faults, small_disk: Path) -> None:
    run_dir = small_disk / "run"
    n = 4
    first = faults.start(run_dir, n)
    wait_until(lambda: len(finished(run_dir)) >= 1, first)
    early = finished(run_dir)
    _fill(small_disk / "filler")
    assert first.wait(timeout=120) == 2, faults.log(first)[-2000:]
    last = faults.log(first).strip().splitlines()[-1]
    assert last.startswith("error: the disk is full: cannot write ") and "(fix: free space" in last, last

    db = sqlite3.connect(f"{(run_dir / 'store.sqlite').as_uri()}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    before = finished(run_dir)
    assert len(before) < n, "the disk should fill mid-run"
    for episode, record in early.items():
        assert before[episode] == record  # finished before the fault: intact
    assert_sound(faults, run_dir)

    (small_disk / "filler").unlink()
    second = faults.run(run_dir, n)
    assert second.returncode == 0, second.stderr[-2000:]
    assert_resumed(faults, run_dir, n, before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy(listen: int, target: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.proxy", str(listen), str(target)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "listening"
    return process


def test_the_endpoint_dies_and_comes_back_mid_run(faults: Faults, tmp_path: Path) -> None:
    target = int(faults.base_url.rsplit(":", 1)[1].split("/")[0])
    port = _free_port()
    proxy = _proxy(port, target)
    config = faults.config({"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "timeout_s": 60})
    run_dir = tmp_path / "run"
    n = 3
    first = faults.start(run_dir, n, config)
    try:
        wait_until(lambda: len(finished(run_dir)) >= 1, first)
        wait_until(lambda: bool(query(run_dir, "SELECT 1 FROM episodes WHERE status = 'running'")), first)
        os.kill(proxy.pid, signal.SIGKILL)  # the endpoint dies with a request in flight
        proxy.wait()
        time.sleep(4)  # longer than the client's retries
        proxy = _proxy(port, target)
        first.wait(timeout=300)
    finally:
        first.kill()
    statuses = query(run_dir, "SELECT status, error_kind FROM episodes WHERE status != 'finished'")
    assert statuses, "some episode should have been waiting on the endpoint when it died"
    for status, kind in statuses:
        assert status == "failed" and kind in ("endpoint_down", "timeout"), (
            statuses
        )  # typed, retried on re-run
    assert_sound(faults, run_dir)  # no half-written episode is read as finished
    before = finished(run_dir)
    try:
        second = faults.run(run_dir, n, config)
        assert second.returncode == 0, second.stderr[-2000:]
    finally:
        proxy.kill()
    assert_resumed(faults, run_dir, n, before)
