"""Joining a Ray cluster (never starting one): the driver connects to `ray start`'s cluster or an address."""

from __future__ import annotations

import logging
import os

from rolegraph.cluster.settings import AUTO, ClusterError

START_HINT = "start one with `ray start --head` (then `ray start --address=HEAD:PORT` on the other nodes)"


def connect(address: str = AUTO) -> None:
    """Connect this process to the cluster at `address` (`auto`: the local `ray start` cluster) once."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address,
            log_to_driver=False,  # workers' logs would tear the progress bar; failures come back as errors
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "on this machine" if address == AUTO else f"at {address}"
        raise ClusterError(
            f"cannot reach a Ray cluster {where}: {_first_line(exc)}",
            START_HINT,
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def driver_node() -> str:
    """The Ray node id of this (connected) process."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def alive_nodes() -> list[str]:
    """Ids of the cluster's alive nodes, the driver's first."""
    import ray

    here = driver_node()
    ids = [str(node["NodeID"]) for node in ray.nodes() if node.get("Alive")]
    return sorted(ids, key=lambda node: node != here)


def remote_error(exc: BaseException) -> BaseException:
    """The error an actor raised (a RolegraphError keeps its type, message and fix), else `exc` itself."""
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return exc
