"""Serving: launching vLLM endpoints, the async client, and the pool that binds roles to endpoints."""

from rolegraph.serving.client import Client
from rolegraph.serving.launcher import ServerHandle, launch_server, running_servers
from rolegraph.serving.pool import EndpointPool
from rolegraph.serving.types import CallResult, Choice, Usage

__all__ = [
    "CallResult",
    "Choice",
    "Client",
    "EndpointPool",
    "ServerHandle",
    "Usage",
    "launch_server",
    "running_servers",
]
