"""Sandbox pools as Ray actors on a real two-node cluster (tests/cluster/conftest.py): placement by node,
the same isolation as one machine, failover and the typed error when actors die, and `doctor --ray`.

Ray runs only inside the test's namespace, so each scenario below runs there as a script
(`python -c "from tests.cluster.test_sandbox_actors import scenario; scenario(ADDRESS)"`) and prints one JSON
line that the test checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from tests.cluster.netns import PYTHON, Netns, RayCluster

ROLEGRAPH = str(Path(PYTHON).parent / "rolegraph")
"""The installed CLI, as a user runs it."""

NETWORK_PROBE = """
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as exc:
    print("refused", exc.errno)
"""


def run_scenario(netns: Netns, name: str, address: str) -> dict[str, Any]:
    """Run `name(address)` of this module inside the namespace; returns the JSON it printed last."""
    code = f"from tests.cluster.test_sandbox_actors import {name}; {name}({address!r})"
    done = netns.run([PYTHON, "-c", code], timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]  # Ray may log to stdout too
    assert lines, f"{name} printed no JSON:\n{done.stdout[-3000:]}"
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------------------- scenarios (inside the netns)


def placement_and_isolation(address: str) -> None:
    """Actors only on the node with the `sandbox` resource; programs there are isolated as on one machine."""
    import ray

    from rolegraph.cluster.connect import connect
    from rolegraph.environments.sandbox.ray_pool import start_sandbox_actors

    connect(address)
    marked = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("sandbox")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    with start_sandbox_actors("auto", width=1) as pool:
        where = [ray.get(slot.handle.describe.remote()) for slot in pool.slots]
        network = pool.run(NETWORK_PROBE.format(port=listener.getsockname()[1]))
        wrote = pool.run("open('/tmp/left-behind', 'w').write('x'); print('wrote')")
        seen = pool.run("import os; print(os.path.exists('/tmp/left-behind'))")
        answer = pool.run("print(sum(range(10)))")
        awaited = asyncio.run(pool.arun("print('awaited')"))  # how env nodes call it, in an event loop

        @ray.remote(num_cpus=0)
        def from_a_worker(shipped: Any) -> str:
            return str(shipped.run("print(6 * 7)").stdout)

        remote = ray.get(from_a_worker.remote(pool))
    stop.set()
    thread.join()
    print(
        json.dumps(
            {
                "marked": marked,
                "actor_nodes": [w["node_id"] for w in where],
                "backends": [w["backend"] for w in where],
                "network": network.stdout.strip(),
                "accepted": len(accepted),
                "wrote": wrote.stdout.strip(),
                "seen": seen.stdout.strip(),
                "answer": answer.stdout.strip(),
                "awaited": awaited.stdout.strip(),
                "from_worker": remote.strip(),
            }
        )
    )


def failover(address: str) -> None:
    """With an actor on each node (no resource required), killing one moves calls to the other; killing
    both makes calls fail with the typed sandbox error."""
    import ray

    from rolegraph.cluster.connect import connect
    from rolegraph.environments.sandbox.ray_pool import start_sandbox_actors
    from rolegraph.errors import SandboxError

    connect(address)
    report: dict[str, Any] = {}
    with start_sandbox_actors("auto", width=1, resource=None) as pool:
        described = [ray.get(slot.handle.describe.remote()) for slot in pool.slots]
        report["actors"] = len(described)
        report["nodes"] = len({d["node_id"] for d in described})
        os.kill(described[0]["pid"], signal.SIGKILL)  # the actor process dies, as in a crash
        outputs = [pool.run("print('still here')").stdout.strip() for _ in range(4)]
        report["after_one_died"] = outputs
        report["alive"] = [slot.alive for slot in pool.slots]
        os.kill(described[1]["pid"], signal.SIGKILL)
        try:
            pool.run("print('nobody')")
            report["error"] = None
        except SandboxError as exc:
            report["error"] = type(exc).__name__
            report["infrastructure"] = exc.kind.infrastructure
    print(json.dumps(report))


# ------------------------------------------------------------------------------------------------ tests


def test_sandbox_actors_run_on_the_sandbox_node_with_one_machine_isolation(
    netns: Netns, ray_cluster: RayCluster
) -> None:
    found = run_scenario(netns, "placement_and_isolation", ray_cluster.address)
    assert len(found["marked"]) == 1
    assert found["actor_nodes"] == found["marked"]  # only the node with the `sandbox` resource
    assert found["backends"][0] in ("docker", "bwrap")
    assert found["network"].startswith("refused")  # the listener next to the actor is out of reach
    assert found["accepted"] == 0
    assert found["wrote"] == "wrote"
    assert found["seen"] == "False"  # a file one run wrote is gone for the next
    assert found["answer"] == "45"
    assert found["awaited"] == "awaited"
    assert found["from_worker"] == "42"  # a pool shipped to another Ray process reaches the same actors


def test_a_dead_sandbox_actor_fails_over_then_fails_typed(netns: Netns, ray_cluster: RayCluster) -> None:
    found = run_scenario(netns, "failover", ray_cluster.address)
    assert found["actors"] == 2 and found["nodes"] == 2
    assert found["after_one_died"] == ["still here"] * 4
    assert found["alive"].count(True) == 1
    assert found["error"] == "NoSandboxLeft"
    assert found["infrastructure"] is True  # the reward is None, never 0


def test_sandbox_doctor_ray_reports_each_node(netns: Netns, ray_cluster: RayCluster) -> None:
    command = [ROLEGRAPH, "sandbox", "doctor", "--ray", ray_cluster.address]
    done = netns.run(command, env={"COLUMNS": "200"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(nodes) == 2
    head = next(node for node in nodes if node["head"])
    second = next(node for node in nodes if not node["head"])
    assert second["sandbox_resource"] == 1
    assert head["sandbox_resource"] is None
    for node in nodes:  # the same machine: the same backends on both nodes
        assert node["bwrap"]["works"] is True, node
        assert set(node) >= {"docker", "bwrap", "sandbox_actor", "width"}
    assert second["sandbox_actor"] in ("docker", "bwrap") and second["width"] == 1
    assert head["sandbox_actor"] is None  # only the marked node would get one
    assert "sandbox backends on the Ray cluster" in done.stderr
