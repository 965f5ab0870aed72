"""Launching real vLLM servers: start-up failure, a server killed mid-run and restarted, reuse, and the CLI.

This module starts the suite's one extra server (twice: once, then again after killing it) on its own port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegraph import paths
from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.errors import EndpointDownError, EndpointError
from rolegraph.serving import EndpointPool, launch_server
from rolegraph.serving.launcher import _group_alive, _pick_port, running_servers, stop_process_group

pytestmark = pytest.mark.vllm

ENDPOINT = "killtest"
QUESTION = [{"role": "user", "content": "Count from one to ten."}]
ROLEGRAPH = [str(Path(sys.executable).parent / "rolegraph")]


@pytest.fixture(scope="module")
def spec() -> LaunchSpec:
    return LaunchSpec(port=_pick_port("127.0.0.1", None), kv_cache_gib=1, max_loras=1, startup_timeout_s=300)


@pytest.fixture(scope="module")
def config(spec: LaunchSpec) -> RolegraphConfig:
    return RolegraphConfig(
        endpoints={ENDPOINT: EndpointConfig(launch=spec, max_retries=1)},
        roles={
            "solver": RoleBinding(endpoint=ENDPOINT, sampling=SamplingParams(max_tokens=32, temperature=0))
        },
    )


@pytest.fixture(scope="module")
def config_file(config: RolegraphConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "rolegraph.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module", autouse=True)
def _stop_leftovers() -> Iterator[None]:
    """Whatever a failing test leaves running on this endpoint is stopped at the end of the module."""
    yield
    for state in running_servers():
        if state.endpoint == ENDPOINT:
            stop_process_group(state.pid, grace_s=5)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*ROLEGRAPH, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_server_dying_during_startup_is_one_line_with_its_log() -> None:
    bad = LaunchSpec(port=_pick_port("127.0.0.1", None), extra_args=["--no-such-vllm-flag"])
    with pytest.raises(EndpointError) as info:
        launch_server("dies", bad)
    message = str(info.value)
    assert "exited during start-up" in message and "last log lines" in message
    assert "--no-such-vllm-flag" in message and "\n" not in message
    assert (paths.servers_dir() / f"dies-{bad.port}.log").is_file()
    assert not list(paths.servers_dir().glob("dies-*.json"))  # no state recorded for a dead server


async def test_killed_mid_run_gives_endpoint_error_then_works_after_restart(
    config: RolegraphConfig, spec: LaunchSpec
) -> None:
    async with EndpointPool(config) as pool:
        handle = pool.servers[ENDPOINT]
        assert handle.owned and handle.alive()
        client, model, sampling = pool.resolve("solver")
        assert (await client.chat(QUESTION, model=model, sampling=sampling)).text

        calls = [
            asyncio.create_task(client.chat(QUESTION, model=model, sampling=sampling.merged(max_tokens=64)))
            for _ in range(4)
        ]
        await asyncio.sleep(0.3)
        os.killpg(handle.state.pid, signal.SIGKILL)  # the server dies with requests in flight
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors and all(isinstance(e, EndpointDownError) for e in errors)

        with pytest.raises(EndpointDownError) as info:
            await client.chat(QUESTION, model=model, sampling=sampling)
        message = str(info.value)
        assert f"127.0.0.1:{spec.port}/v1" in message and "rolegraph serve" in message and "\n" not in message

        restarted = launch_server(ENDPOINT, spec)  # the stale state file is ignored: a fresh server starts
        assert restarted.owned and restarted.state.pid != handle.state.pid
        later = await client.chat(QUESTION, model=model, sampling=sampling)  # the same client recovers
        assert later.text and later.choices[0].token_ids

        again = launch_server(ENDPOINT, spec)  # a later command reuses it instead of starting another
        assert again.reused and again.state.pid == restarted.state.pid
    assert restarted.alive()  # not the pool's: it stays up for the next tests


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches a foreground program, but a background job (`cmd &` in a script) starts with SIGINT
    ignored; the test plays the foreground case however the suite itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_reuses_the_running_server_and_stops_cleanly_on_ctrl_c(config_file: Path) -> None:
    before = {s.pid for s in running_servers() if s.endpoint == ENDPOINT}
    assert len(before) == 1
    process = subprocess.Popen(
        [*ROLEGRAPH, "serve", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=_as_in_a_terminal,
    )
    assert process.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "serving" in line or not line:
            break
    assert any("reusing" in line for line in lines), lines
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert ENDPOINT in stdout and "up" in stdout  # the endpoints table
    assert {s.pid for s in running_servers() if s.endpoint == ENDPOINT} == before  # reused, so left running


def test_endpoints_status_and_stop(config_file: Path) -> None:
    status = _cli("endpoints", "status", "--config", str(config_file))
    assert status.returncode == 0, status.stderr
    assert ENDPOINT in status.stdout and "up" in status.stdout and "smollm2-135m-instruct" in status.stdout

    pids = [s.pid for s in running_servers() if s.endpoint == ENDPOINT]
    stopped = _cli("endpoints", "stop", ENDPOINT)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not [s for s in running_servers() if s.endpoint == ENDPOINT]
    assert pids and not any(_group_alive(pid, None) for pid in pids)

    after = _cli("endpoints", "status", "--config", str(config_file))
    assert "not running" in after.stdout


def test_attaching_to_a_stopped_server_is_a_one_line_cli_error(tmp_path: Path) -> None:
    port = _pick_port("127.0.0.1", None)
    path = tmp_path / "down.yaml"
    path.write_text(f"endpoints:\n  gone:\n    base_url: http://127.0.0.1:{port}/v1\n    max_retries: 0\n")
    result = _cli("serve", "--config", str(path), timeout=60)
    assert result.returncode == 2
    # an attached endpoint is not rolegraph's to start: the hint says to check it, not to `rolegraph serve` it
    assert result.stderr.startswith("error:") and "is running" in result.stderr
    assert "rolegraph serve" not in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
