"""Run inside the test namespace by test_ray_replicas.py: a launched endpoint with two replicas that Ray
places, an adapter handed off to both through Ray's object store, then a run on Ray against them.

`python tests/cluster/ray_replicas_probe.py ADDRESS ADAPTER_DIR WORKDIR` prints one JSON object of facts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx2

from rolegraph.cluster import activate
from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.graphs.spec import compile_spec
from rolegraph.serving import Client, EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.registry import AdapterRegistry

ROLE = "writer"


def write_graph(folder: Path) -> Path:
    """One role call per episode (JSON is YAML)."""
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    (folder / "prompts" / "writer.md").write_text("<!-- user -->\nSay hello to {{name}}.\n")
    spec = {
        "name": "hello",
        "roles": {ROLE: {"prompt": "prompts/writer.md", "parser": "text"}},
        "state": {"name": "str", "text": "str"},
        "inputs": {"items": [{"id": f"p{i}", "name": f"person {i}"} for i in range(4)], "key": "id"},
        "nodes": {"greet": {"role": ROLE, "inputs": {"name": "name"}, "output": {"text": "text"}}},
        "edges": [["START", "greet"], ["greet", "END"]],
    }
    path = folder / "graph.yaml"
    path.write_text(json.dumps(spec, indent=1))
    return path


async def probe(address: str, adapter_dir: Path, workdir: Path) -> dict[str, Any]:
    activate(address)
    launch = LaunchSpec(replicas=2, kv_cache_gib=1, max_model_len=1024, max_loras=2)
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    config = RolegraphConfig(
        endpoints={"placed": EndpointConfig(launch=launch)},
        roles={ROLE: RoleBinding(endpoint="placed", sampling=greedy)},
    )
    facts: dict[str, Any] = {}
    async with EndpointPool(config) as pool:
        replicas: list[Any] = pool.replica_servers["placed"]
        facts["nodes"] = [replica.placed.node_id for replica in replicas]
        urls = [replica.base_url for replica in replicas]
        adapter = AdapterRegistry(workdir / "adapters").publish(ROLE, adapter_dir)
        facts["source"] = str(adapter.path)
        report = await hand_off(pool, ROLE, adapter)
        facts["bound"] = pool.resolve(ROLE)[1] if report.swapped else None
        facts["adapter"] = adapter.lora_name
        async with httpx2.AsyncClient() as http:
            cards = [(await http.get(f"{url}/models")).json()["data"] for url in urls]
        facts["roots"] = [
            next(card["root"] for card in listed if card["id"] == adapter.lora_name) for listed in cards
        ]
        facts["answers"] = []
        for url in urls:  # each replica, on its own, answers with the adapter's output
            async with Client("one", url) as one:
                result = await one.chat(
                    [{"role": "user", "content": "Say hello."}], model=adapter.lora_name, sampling=greedy
                )
            facts["answers"].append(result.text)
        run_dir = workdir / "run"
        summary = await run_graph(
            compile_spec(write_graph(workdir / "graph")),
            pool,
            RunParams(n=4, run_dir=run_dir),
            run_dir,
            concurrency=4,
            progress=False,
        )
        facts["finished"] = summary.finished
        with Store(run_dir, create=False) as store:
            facts["models"] = sorted({step.model for step in store.steps() if step.kind == "role"})
    async with httpx2.AsyncClient() as http:
        facts["up_after_close"] = []
        for url in urls:
            try:
                await http.get(f"{url}/models", timeout=5.0)
                facts["up_after_close"].append(True)
            except httpx2.HTTPError:
                facts["up_after_close"].append(False)
    return facts


if __name__ == "__main__":
    address, adapter, workdir = sys.argv[1:4]
    print(json.dumps(asyncio.run(probe(address, Path(adapter), Path(workdir)))))
