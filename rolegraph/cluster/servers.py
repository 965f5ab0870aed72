"""Launched endpoints on a cluster: each replica of a `launch:` block runs under a Ray actor that Ray places
(spread over the nodes; `num_gpus` GPUs each on GPU), and LoRA adapters reach every replica through Ray's
object store, unpacked on the replica's own node: nothing needs to be shared between nodes.

The actor owns its server: the server is stopped when the actor stops, and dies with the actor's process
(PR_SET_PDEATHSIG) if the actor is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from rolegraph.config import LaunchSpec
from rolegraph.serving.launcher import VISIBLE_GPUS, launch_server

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


@dataclasses.dataclass(frozen=True)
class PlacedServer:
    """Where Ray placed one replica: its address as the other nodes reach it, its model, its node."""

    base_url: str
    model: str
    node_id: str


class ReplicaServer:
    """The actor (see `launch_on_ray`): one replica's vLLM server on the node Ray chose, and its adapters."""

    def __init__(self, endpoint: str, spec: LaunchSpec, replica: int) -> None:
        self.endpoint, self.spec, self.replica = endpoint, spec, replica
        self.handle: Any = None
        self.adapters = Path(tempfile.mkdtemp(prefix=f"rolegraph-{endpoint}-{replica}-adapters-"))

    def start(self) -> PlacedServer:
        import ray

        spec = self.spec
        gpus = os.environ.get(VISIBLE_GPUS)
        if spec.device == "gpu" and gpus:  # the GPUs Ray assigned this actor, not a slice by replica index
            spec = spec.model_copy(update={"env": {VISIBLE_GPUS: gpus, **spec.env}})
        self.handle = launch_server(
            self.endpoint, spec, reuse=False, replica=self.replica, die_with_parent=True
        )
        base_url = self.handle.base_url
        if spec.host in WILDCARD_HOSTS:  # reached from other nodes at this node's address
            node_ip = ray.util.get_node_ip_address()
            base_url = f"http://{node_ip}:{self.handle.state.port}/v1"
        return PlacedServer(base_url, self.handle.model, ray.get_runtime_context().get_node_id())

    def receive_adapter(self, name: str, archive: bytes) -> str:
        """Unpack an adapter shipped as a tar archive into this node's adapter directory; returns its path
        there. Names are never reused, so an adapter already unpacked under `name` is that adapter."""
        target = self.adapters / name
        if not target.is_dir():
            unpacking = Path(tempfile.mkdtemp(dir=self.adapters, prefix=".unpacking-"))
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(unpacking, filter="data")
            unpacking.rename(target)
        return str(target)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None
        shutil.rmtree(self.adapters, ignore_errors=True)


def pack_adapter(path: Path) -> bytes:
    """An adapter directory as an uncompressed tar archive (safetensors do not compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(path.iterdir()):
            tar.add(item, arcname=item.name)
    return buffer.getvalue()


class RayReplica:
    """The driver's handle on a placed replica: what the endpoint pool keeps of a launched server."""

    owned = True
    reused = False

    def __init__(self, actor: Any, placed: PlacedServer | None) -> None:
        self.actor = actor
        self.placed = placed

    @property
    def base_url(self) -> str:
        assert self.placed is not None
        return self.placed.base_url

    @property
    def model(self) -> str:
        assert self.placed is not None
        return self.placed.model

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get(self.actor.stop.remote(), timeout=60)
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)


class AdapterShipper:
    """Gives each replica its own copy of an adapter: packed once, put in Ray's object store, and unpacked
    by the replica's actor on its node (see `Client.adapter_paths`)."""

    def __init__(self, replicas: list[RayReplica]) -> None:
        self.replicas = replicas
        self._archives: dict[tuple[str, str], Any] = {}

    async def __call__(self, replica: int, name: str, path: str) -> str:
        import ray

        key = (name, path)
        if key not in self._archives:
            archive = await asyncio.to_thread(pack_adapter, Path(path))
            self._archives[key] = ray.put(archive)
        there: str = await self.replicas[replica].actor.receive_adapter.remote(name, self._archives[key])
        return there


def _placement(spec: LaunchSpec, replica: int) -> dict[str, Any]:
    """On GPU, Ray places each replica where its `num_gpus` are free, spreading over the nodes. On CPU a
    replica asks for no resource, which Ray does not spread: replica i goes to alive node i (round robin).
    The affinity is hard: Ray 2.60 placed about half of soft-affinity actors on the other node even when
    the target was alive (a node that dies before placement fails the launch instead)."""
    if spec.device == "gpu":
        return {"num_gpus": spec.num_gpus or 1, "scheduling_strategy": "SPREAD"}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rolegraph.cluster.connect import alive_nodes

    nodes = alive_nodes()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[replica % len(nodes)], soft=False)}


async def launch_on_ray(endpoint: str, spec: LaunchSpec, address: str) -> list[RayReplica]:
    """Start every replica of `spec` under a Ray actor, spread over the cluster's nodes; all or none."""
    import ray

    from rolegraph.cluster.connect import connect, remote_error
    from rolegraph.cluster.settings import ClusterError

    connect(address)
    actors: list[Any] = [
        ray.remote(ReplicaServer)
        .options(num_cpus=0, max_restarts=0, **_placement(spec, replica))
        .remote(endpoint, spec, replica)
        for replica in range(spec.replicas)
    ]
    try:
        placed = await asyncio.gather(*(a.start.remote() for a in actors))
    except BaseException as exc:  # also cancellation: never leave a replica's server behind
        for a in actors:
            await asyncio.to_thread(RayReplica(a, None).stop)
        if isinstance(exc, ray.exceptions.ActorUnschedulableError):
            raise ClusterError(
                f"endpoint {endpoint!r}: a replica's node left the cluster before it was placed",
                "run again; replicas are placed on the nodes alive then",
            ) from None
        raise remote_error(exc) from None
    return [RayReplica(a, where) for a, where in zip(actors, placed, strict=True)]
