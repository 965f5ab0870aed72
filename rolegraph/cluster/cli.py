"""`--ray ADDRESS` (and `--ray-workers N`), defined once and added to every command that runs a graph."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

RAY_HELP = (
    "Run the episodes on the Ray cluster at ADDRESS (`auto`: the one `ray start` started on this machine)."
)


def with_ray(command: F) -> F:
    """`command` with `--ray ADDRESS` and `--ray-workers N`, which activate the cluster before it runs."""
    signature = inspect.signature(command)
    extra = [
        inspect.Parameter(
            "ray",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--ray", metavar="ADDRESS", help=RAY_HELP),
            annotation=str | None,
        ),
        inspect.Parameter(
            "ray_workers",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None, "--ray-workers", min=1, help="Episode workers on the cluster (default: one per node)."
            ),
            annotation=int | None,
        ),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]

    @functools.wraps(command)
    def wrapper(*args: Any, ray: str | None = None, ray_workers: int | None = None, **kwargs: Any) -> Any:
        from rolegraph.cluster.settings import activate, deactivate

        if ray is None:
            return command(*args, **kwargs)
        activate(ray, workers=ray_workers)
        try:
            return command(*args, **kwargs)
        finally:
            deactivate()

    wrapper.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
