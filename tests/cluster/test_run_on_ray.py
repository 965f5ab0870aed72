"""`rolegraph run GRAPH --ray ADDRESS` on a real two-node Ray cluster (in a namespace the session creates):
the code-repair spec, whose `test` node runs in sandbox actors on the second node, on the real vLLM server.
The store must hold what one machine's run holds, and survive the second node dying mid-run."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.netns import REPO, ROLEGRAPH, Netns, RayCluster
from tests.fixtures.serving import VLLMServer

EXAMPLE = REPO / "examples" / "code-repair"
HUMANEVAL = Path("/work/shared/data/humaneval_dev.jsonl")
FAULT_EPISODES = 8
"""Two rounds of the 4 episodes run at a time, so some run on both workers after the first finishes."""


def _graph(tmp: Path, problems: int) -> Path:
    """The code-repair example with the first `problems` HumanEval problems."""
    target = tmp / "code-repair"
    shutil.copytree(EXAMPLE, target)
    lines = HUMANEVAL.read_text().splitlines()[:problems]
    (target / "problems.jsonl").write_text("\n".join(lines) + "\n")
    return target / "graph.yaml"


def _config(tmp: Path, base_urls: list[str], model: str, name: str = "config.yaml") -> Path:
    sampling = {"max_tokens": 24, "temperature": 0.7}
    config = {
        "endpoints": {"local": {"base_url": base_urls[0] if len(base_urls) == 1 else base_urls}},
        "roles": {
            role: {"endpoint": "local", "model": model, "sampling": sampling} for role in ("coder", "critic")
        },
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


def _episodes(run_dir: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT id, status FROM episodes").fetchall())


def _attempts(run_dir: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT id, attempts FROM episodes").fetchall())


def _store_facts(run_dir: Path) -> dict[str, object]:
    """What must agree between a run on Ray and on one machine, and what must never happen on either."""
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM episodes")]
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM episodes GROUP BY status").fetchall())
        twice = db.execute(
            "SELECT episode_id, checkpoint, kind, COUNT(*) FROM steps"
            " WHERE superseded = 0 AND checkpoint IS NOT NULL"
            " GROUP BY episode_id, checkpoint, kind HAVING COUNT(*) > 1"
        ).fetchall()
        kinds = {row[0] for row in db.execute("SELECT DISTINCT kind FROM steps WHERE superseded = 0")}
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {"ids": ids, "statuses": statuses, "twice": twice, "kinds": kinds, "integrity": integrity}


def _runs_check(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROLEGRAPH, "runs", "check", str(run_dir)], capture_output=True, text=True, cwd=REPO
    )


@pytest.fixture(scope="module")
def replicas(bridged_vllm, vllm_server: VLLMServer) -> list[str]:  # type: ignore[no-untyped-def]
    return [bridge.base_url for bridge in bridged_vllm(1)]


def test_run_on_ray_matches_one_machine(
    ray_cluster: RayCluster, netns: Netns, replicas: list[str], vllm_server: VLLMServer, tmp_path: Path
) -> None:
    graph = _graph(tmp_path, 4)
    on_ray, alone = tmp_path / "on-ray", tmp_path / "alone"
    config = _config(tmp_path, replicas, vllm_server.model)
    out = netns.rolegraph(
        "run", str(graph), "--n", "4", "--run-dir", str(on_ray), "--config", str(config),
        "--concurrency", "4", "--ray", ray_cluster.address,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = " ".join(out.stdout.split())  # rich wraps long run-dir paths
    assert "episodes finished" in summary and "tokens per role" in summary, out.stdout

    local_config = _config(tmp_path, [vllm_server.base_url], vllm_server.model, "local.yaml")
    single = subprocess.run(
        [ROLEGRAPH, "run", str(graph), "--n", "4", "--run-dir", str(alone),
         "--config", str(local_config), "--concurrency", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    ray_facts, local_facts = _store_facts(on_ray), _store_facts(alone)
    assert sorted(ray_facts["ids"]) == sorted(local_facts["ids"])  # type: ignore[type-var]
    assert len(set(ray_facts["ids"])) == 4  # type: ignore[arg-type]
    assert ray_facts["statuses"].get("running", 0) == 0  # type: ignore[attr-defined]
    assert ray_facts["kinds"] == local_facts["kinds"] == {"role", "env"}  # the sandbox node ran on Ray too
    assert ray_facts["twice"] == []
    assert ray_facts["integrity"] == "ok"
    check = _runs_check(on_ray)
    assert check.returncode == 0 and check.stdout.strip().endswith("ok"), check.stdout + check.stderr


def test_second_node_dies_mid_run(
    ray_cluster: RayCluster, netns: Netns, replicas: list[str], vllm_server: VLLMServer, tmp_path: Path
) -> None:
    graph = _graph(tmp_path, FAULT_EPISODES)
    run_dir = tmp_path / "fault"
    config = _config(tmp_path, replicas, vllm_server.model)
    proc = netns.popen(
        [ROLEGRAPH, "run", str(graph), "--n", str(FAULT_EPISODES), "--run-dir",
         str(run_dir), "--config", str(config), "--concurrency", "4", "--ray", ray_cluster.address],
    )  # fmt: skip
    try:
        # Kill once an episode has finished and both workers run some: each worker runs at most 2 of the 4
        # (--concurrency 4 over 2 workers), so 3 running means the second node's worker has one in flight.
        finished_before: set[str] = set()
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, "the run ended before the kill: " + proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no episode finished with 3 running in 300 s"
            time.sleep(0.2)
            if (run_dir / "store.sqlite").is_file():
                statuses = _episodes(run_dir)
                finished_before = {k for k, s in statuses.items() if s == "finished"}
                if finished_before and sum(s == "running" for s in statuses.values()) >= 3:
                    break
        ray_cluster.kill_second_node()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ray_cluster.start_second_node()  # later tests get the two-node cluster back

    assert proc.returncode == 0, stderr[-3000:]
    assert f"{FAULT_EPISODES}/{FAULT_EPISODES} episodes finished" in " ".join(stdout.split()), stdout[-3000:]
    episodes = _episodes(run_dir)
    assert len(episodes) == FAULT_EPISODES
    assert "running" not in episodes.values()
    assert all(episodes[key] == "finished" for key in finished_before)  # no finished episode lost
    assert max(_attempts(run_dir).values()) >= 2  # the dead node's episodes resumed on the other worker
    facts = _store_facts(run_dir)
    assert facts["twice"] == []  # no step recorded twice
    assert facts["integrity"] == "ok"
    check = _runs_check(run_dir)
    assert check.returncode == 0, check.stdout + check.stderr


# --- without a cluster: the flag and the activation (Ray is never imported here) -------------------------
def test_ray_flag_activates_the_cluster_for_the_command_only() -> None:
    from rolegraph.cluster import active
    from rolegraph.cluster.cli import with_ray

    seen = []

    def command(n: int = 1) -> None:
        seen.append((n, active()))

    wrapped = with_ray(command)
    wrapped(n=2, ray="127.0.0.1:6390", ray_workers=3)
    wrapped(n=3)
    assert seen[0][0] == 2 and seen[0][1] is not None
    assert (seen[0][1].address, seen[0][1].workers) == ("127.0.0.1:6390", 3)
    assert seen[1] == (3, None) and active() is None


def test_graph_reaches_workers_by_reference() -> None:
    from rolegraph.cluster.workers import graph_ref, uses_sandbox
    from rolegraph.graphs.registry import get_graph

    spec = get_graph(str(EXAMPLE / "graph.yaml"))
    ref = graph_ref(spec)
    assert ref.spec_path == str((EXAMPLE / "graph.yaml").resolve()) and ref.graph is None
    assert uses_sandbox(spec)
    assert ref.load().name == spec.name


def test_each_worker_prefers_its_own_replica() -> None:
    from rolegraph.cluster.workers import rotate_replicas
    from rolegraph.config import EndpointConfig, RolegraphConfig

    urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(3)]
    config = RolegraphConfig(
        endpoints={"many": EndpointConfig(base_url=urls), "one": EndpointConfig(base_url=urls[0])}, roles={}
    )
    firsts = [rotate_replicas(config, turn).endpoints["many"].replica_urls[0] for turn in range(4)]
    assert firsts == [urls[0], urls[1], urls[2], urls[0]]
    assert sorted(rotate_replicas(config, 1).endpoints["many"].replica_urls) == urls
    assert rotate_replicas(config, 1).endpoints["one"].base_url == urls[0]
