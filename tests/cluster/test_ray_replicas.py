"""A launched endpoint on a cluster: Ray places its two replicas on the two nodes, the hand-off ships the
adapter to each through Ray's object store (each replica loads its own node's copy), and a run on Ray uses
them. The probe (tests/cluster/ray_replicas_probe.py) runs inside the test namespace."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cluster.netns import PYTHON, Netns, RayCluster
from tests.trainers.conftest import MARK, distinct_adapter  # noqa: F401 (the fixture)

PROBE = Path(__file__).with_name("ray_replicas_probe.py")


def test_ray_places_launched_replicas_and_ships_the_adapter_to_each(
    ray_cluster: RayCluster,
    netns: Netns,
    distinct_adapter: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    assert ray_cluster.nodes_alive() == 2
    command = [PYTHON, str(PROBE), ray_cluster.address, str(distinct_adapter), str(tmp_path)]
    out = netns.run(command, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])

    assert len(set(facts["nodes"])) == 2, facts  # spread: one replica on each node
    assert facts["bound"] == facts["adapter"]  # the binding moved once both had it
    source = Path(facts["source"]).resolve()
    roots = [Path(root) for root in facts["roots"]]
    assert len(set(roots)) == 2 and source not in roots, facts  # each loaded its own node's copy
    assert all(root.name == facts["adapter"] for root in roots), facts
    assert all(MARK in answer for answer in facts["answers"]), facts["answers"]
    assert facts["finished"] == 4
    assert facts["models"] == [facts["adapter"]]  # every episode ran on the handed-off adapter
    assert facts["up_after_close"] == [False, False]  # the pool's close stopped both servers
