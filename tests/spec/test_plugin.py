"""A graph plugin package (tests/plugins/rolegraph_test_plugin) installed into the venv: its graph lists,
checks and runs on the real server, with its own role and a python env node; rolegraph's registry is not
edited."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import BUILTIN, check_graph, get_graph, graph_sources
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "rolegraph_test_plugin"
DIST = "rolegraph-test-plugin"
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The plugin installed (from a copy, so the build leaves nothing in the tree); uninstalled afterwards."""
    source = tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(PLUGIN, source)
    _pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(source))
    importlib.invalidate_caches()
    try:
        yield "echo_check"
    finally:
        _pip("uninstall", "--quiet", "--yes", DIST)
        importlib.invalidate_caches()


def test_the_plugin_graph_lists_with_its_source(plugin: str) -> None:
    assert plugin not in BUILTIN
    sources = {s.name: s.source for s in graph_sources()}
    assert sources["promptcot"] == "built-in"
    assert sources[plugin] == f"plugin {DIST} 0.1.0 (rolegraph_test_plugin:echo_check)"
    listed = subprocess.run(
        [Path(sys.executable).parent / "rolegraph", "graph", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plugin in listed.stdout.split()


async def test_the_plugin_graph_checks_and_runs_with_its_role(
    plugin: str, rg_config: RolegraphConfig, tmp_path: Path
) -> None:
    assert check_graph(plugin) == []
    graph = get_graph(plugin)
    assert graph.roles == ("echoer",)
    summary = await run_graph(graph, rg_config, RunParams(n=2), tmp_path, concurrency=2, progress=False)
    assert summary.finished == 2 and summary.failed == 0
    with Store(tmp_path) as store:
        steps = store.steps()
        echo = [s for s in steps if s.node == "echo"]
        assert len(echo) == 2 and all(s.role == "echoer" and s.choices[0].text for s in echo)
        assert echo[0].sampling["max_tokens"] == 16  # the plugin role's own default
        measures = [s for s in steps if s.node == "measure"]
        assert all(s.kind == "env" and s.response and s.response["length"] > 0 for s in measures)
        for episode in store.episodes():
            assert episode.rewards["short"] in (0.0, 1.0)
