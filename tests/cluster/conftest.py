"""Session fixtures for Ray tests: a loopback-only namespace, a two-node Ray cluster in it (started once per
session), and bridges from inside it to the session's vLLM server. See tests/cluster/netns.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.netns import Bridge, Netns, RayCluster, bridge, temp_dir
from tests.fixtures.serving import VLLMServer


@pytest.fixture(scope="session")
def netns() -> Iterator[Netns]:
    """A network namespace with loopback alone; every process in it is ended at the end of the session."""
    ns = Netns.create()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="session")
def ray_cluster(netns: Netns) -> Iterator[RayCluster]:
    """Ray head + a second node with `{"sandbox": 1}`, both on 127.0.0.1 inside `netns`."""
    cluster = RayCluster(netns, temp_dir())
    try:
        yield cluster.start()
    finally:
        netns.close()  # ends the Ray processes of this namespace only (never `ray stop`: it ends them all)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


BridgeFactory = Callable[[int], list[Bridge]]


@pytest.fixture(scope="session")
def bridged_vllm(
    netns: Netns, vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeFactory]:
    """`bridged_vllm(n)`: n fresh bridges to the session's vLLM server, each a replica with its own base URL
    inside `netns` (`bridge.base_url`), each killable (`bridge.kill()`) to simulate a dead replica."""
    workdir = Path(tmp_path_factory.mktemp("bridges"))
    made: list[Bridge] = []

    def make(n: int) -> list[Bridge]:
        fresh = [bridge(netns, vllm_server.base_url, len(made) + i, workdir) for i in range(n)]
        made.extend(fresh)
        return fresh

    try:
        yield make
    finally:
        for each in made:
            each.close()
        shutil.rmtree(workdir, ignore_errors=True)
