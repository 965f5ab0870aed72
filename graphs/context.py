"""The contract between graph nodes and the runtime.

A node is a plain async function `node(state, ctx) -> dict` (a LangGraph state update). It reaches models and
environments only through `ctx`, which records every call as a Step in the store. Unit tests pass a fake ctx.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from rolegraph.serving.types import CallResult

T = TypeVar("T")


@dataclass
class RoleCall:
    """One role invocation: the raw call plus one parsed result (or parse error) per choice."""

    role: str
    node: str
    result: CallResult | None
    parsed: list[dict[str, Any] | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    """Per-choice parse error ('' / None when parsed); a failed call sets `error` instead."""
    error: str | None = None
    """Set when the call itself failed after retries (endpoint down, timeout); never raised into nodes."""

    @property
    def ok(self) -> bool:
        return self.error is None and any(p is not None for p in self.parsed)

    @property
    def first(self) -> dict[str, Any] | None:
        """The first successfully parsed choice, or None."""
        return next((p for p in self.parsed if p is not None), None)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.result.choices] if self.result else []


class GraphContext(Protocol):
    """What nodes may use. Implemented by graphs.runtime; faked in unit tests."""

    async def call_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        **sampling: Any,
    ) -> RoleCall:
        """Render the role's prompt with `variables`, call its bound endpoint/model, parse each choice,
        and record the step. `sampling` overrides the binding's sampling params (e.g. n=4, temperature=0)."""
        ...

    async def call_env(
        self,
        name: str,
        *,
        node: str,
        episode_id: str,
        request: dict[str, Any],
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        """Run the environment call `fn()` and record it as a step named `name` with `request` and result."""
        ...
