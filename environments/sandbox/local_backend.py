"""Unisolated backend: the same fork server as a plain host process, rlimits only. Only on request."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from rolegraph.environments.sandbox.base import LaunchPlan, Limits
from rolegraph.environments.sandbox.process import worker_argv

NOBODY = 65534
WARNING = (
    "warning: running model code WITHOUT isolation (backend unsafe-local): it can read your files, "
    "reach the network and see other processes"
)


class LocalBackend:
    """rlimits, a scratch directory and a clean environment; no namespaces. Every run prints a warning."""

    name = "unsafe-local"
    warns = True

    def check(self) -> str | None:
        return None

    def plan(self, limits: Limits, worker_config: dict[str, Any]) -> LaunchPlan:
        user = NOBODY if os.geteuid() == 0 else None
        scratch = tempfile.mkdtemp(prefix="rolegraph-local-")
        if user is not None:
            os.chown(scratch, user, user)
        config = {
            **worker_config,
            "sandboxed": False,
            "scratch": scratch,
            "wipe_dirs": [scratch],
            "nproc_rlimit": True,
        }
        argv = worker_argv(sys.executable if user is None else "/usr/bin/python3", ["-I", "-B"], config)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1"}
        return LaunchPlan(argv=argv, env=env, user=user, cleanup_argv=["rm", "-rf", scratch], name="local")
