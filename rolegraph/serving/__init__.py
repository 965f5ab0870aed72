"""Serving: launching vLLM endpoints, the async client, endpoint capabilities, and the pool that binds roles
to endpoints."""

from rolegraph.serving.capabilities import Capabilities, CapabilityError, require
from rolegraph.serving.client import Client
from rolegraph.serving.launcher import ServerHandle, launch_server, running_servers
from rolegraph.serving.pool import EndpointPool
from rolegraph.serving.types import CallResult, Choice, Usage

__all__ = [
    "CallResult",
    "Capabilities",
    "CapabilityError",
    "Choice",
    "Client",
    "EndpointPool",
    "ServerHandle",
    "Usage",
    "launch_server",
    "require",
    "running_servers",
]
