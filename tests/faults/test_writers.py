"""One writer per run directory; kill -9, SIGTERM and SIGINT mid-run lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.faults.conftest import Faults, assert_resumed, finished, query, wait_until

pytestmark = [pytest.mark.timeout(900)]


@pytest.mark.vllm
def test_a_second_writer_is_refused_readers_never_block_and_wait_waits(
    faults: Faults, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # The first writer's calls are long, so it still holds the run dir while the others start and read (each
    # is a Python start-up, several seconds on a loaded CI core).
    first = faults.start(run_dir, 6, faults.config(tokens=96))
    wait_until(lambda: len(query(run_dir, "SELECT id FROM steps")) >= 1, first)
    waiter = faults.start(run_dir, 6, None, "--wait")  # started while the first has most of its run ahead

    second = faults.run(run_dir, 6)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    pattern = (
        rf"error: run dir {re.escape(str(run_dir))} is in use by pid {first.pid} \(rolegraph run .*, started"
        r" \d\d:\d\d\) \(fix: wait for it, or use another --run-dir\)"
    )
    assert re.fullmatch(pattern, lines[0]), lines[0]

    # Readers take no lock: they answer while the writer holds it, and `runs list` names the live writer.
    listed = faults.cli("runs", "list", tmp_path)
    assert listed.returncode == 0 and f"pid {first.pid}" in listed.stdout, listed.stdout
    assert faults.cli("runs", "show", run_dir).returncode == 0
    assert first.poll() is None, "the first writer ended before the readers ran: proved nothing"
    assert first.wait(timeout=300) == 0
    assert waiter.wait(timeout=120) == 0, faults.log(waiter)[-2000:]
    assert f"in use by pid {first.pid}" in faults.log(waiter) and "waiting for it (--wait)" in faults.log(
        waiter
    )
    assert query(run_dir, "SELECT MAX(attempts) FROM episodes") == [(1,)]  # nothing was run twice
    assert_resumed(faults, run_dir, 6, {})
    assert f"pid {first.pid}" not in faults.cli("runs", "list", tmp_path).stdout  # no longer live


@pytest.mark.vllm
@pytest.mark.parametrize("steps_before_kill", [1, 2, 3])
def test_kill_9_at_several_points_of_an_episode_loses_nothing(
    faults: Faults, tmp_path: Path, steps_before_kill: int
) -> None:
    """The writer dies with no warning right after its k-th recorded step (mid-episode, between nodes)."""
    run_dir = tmp_path / "run"
    n = 2
    first = faults.start(run_dir, n)
    wait_until(lambda: len(query(run_dir, "SELECT id FROM steps")) >= steps_before_kill, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = finished(run_dir)
    assert len(before) < n, "the kill should land mid-run"
    second = faults.run(run_dir, n)  # the kernel dropped the lock with the process: no stale lock
    assert second.returncode == 0, second.stderr[-2000:]
    assert_resumed(faults, run_dir, n, before)


@pytest.mark.vllm
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_run_within_seconds_and_it_resumes(
    faults: Faults, tmp_path: Path, signum: int
) -> None:
    run_dir = tmp_path / "run"
    n = 3
    first = faults.start(run_dir, n)
    wait_until(lambda: len(finished(run_dir)) >= 1, first)
    sent = time.monotonic()
    first.send_signal(signum)
    code = first.wait(timeout=30)
    assert time.monotonic() - sent < 10
    assert code == 128 + signum
    last = faults.log(first).strip().splitlines()[-1]
    assert last.startswith(f"error: {signal.Signals(signum).name} stopped the run in {run_dir}"), last
    before = finished(run_dir)
    assert len(before) < n
    second = faults.run(run_dir, n)
    assert second.returncode == 0, second.stderr[-2000:]
    assert_resumed(faults, run_dir, n, before)


@pytest.mark.vllm
def test_sigterm_stops_a_server_the_run_launched_but_not_one_it_reused(
    faults: Faults, tmp_path: Path, vllm_server: object, model_dir: Path
) -> None:
    from rolegraph.config import LaunchSpec
    from rolegraph.serving.launcher import spec_hash

    # Reused: a state file for the session's server makes a `launch` endpoint reuse it, like a later command.
    base_url: str = vllm_server.base_url  # type: ignore[attr-defined]
    model: str = vllm_server.model  # type: ignore[attr-defined]
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    server_pid = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == "LISTEN"
    )
    spec = LaunchSpec(model=str(model_dir), port=port, served_model_name=model)
    digest = spec_hash(spec, str(model_dir.resolve()))
    servers = faults.home / "servers"
    servers.mkdir(parents=True)
    state = {
        "endpoint": "local", "pid": server_pid, "host": "127.0.0.1", "port": port, "spec_hash": digest,
        "model": model, "model_path": str(model_dir.resolve()), "log_path": str(tmp_path / "server.log"),
        "started_at": time.time(),
    }  # fmt: skip
    (servers / f"local-{digest}.json").write_text(json.dumps(state))
    run_dir = tmp_path / "reused"
    first = faults.start(run_dir, 3, faults.config({"launch": spec.model_dump(mode="json")}))
    wait_until(lambda: len(query(run_dir, "SELECT id FROM steps")) >= 1, first)
    assert "reusing vLLM server 'local'" in faults.log(first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 128 + signal.SIGTERM
    assert psutil.pid_exists(server_pid), "a reused server must outlive the command"

    # Launched: SIGTERM while the run's own server starts; its whole process group is gone afterwards.
    launch = {"model": str(model_dir), "port": port + 1000, "kv_cache_gib": 0.5}
    second = faults.start(tmp_path / "launched", 1, faults.config({"launch": launch}))
    server = _wait_for_child(second, "vllm.entrypoints")
    group = os.getpgid(server.pid)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 128 + signal.SIGTERM
    assert not [p for p in psutil.process_iter() if _in_group(p, group)], (
        "the launched server was left running"
    )


def _wait_for_child(process: subprocess.Popen[str], marker: str) -> psutil.Process:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the command ended before its server started"
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                if any(marker in part for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("the command never started its server")


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


async def test_stop_scopes_nest_and_leave_the_signal_handlers_as_they_were(tmp_path: Path) -> None:
    """A command around several runs (EM, self-play) and the runs inside it: one signal, one clean stop."""
    from rolegraph.graphs.runtime import RunInterruptedError, stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with (
        pytest.raises(RunInterruptedError, match=r"SIGTERM stopped the run in .*inner"),
        stop_on_signals(tmp_path / "outer"),
        stop_on_signals(tmp_path / "inner"),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) == before
