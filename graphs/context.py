"""The contract between graph nodes and the runtime.

A node is a plain async function `node(state, ctx) -> dict` (a LangGraph state update). It reaches models
and environments only through `ctx`, which records every call as a `Step` in the store. Unit tests pass a
fake ctx.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from rolegraph.agents.role import Role
from rolegraph.errors import RolegraphError
from rolegraph.store.records import Rewards, Step

T = TypeVar("T")


class GraphContext(Protocol):
    """What nodes may use. Implemented by graphs.runtime; faked in unit tests."""

    async def call_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        prompt: Role | None = None,
        **sampling: Any,
    ) -> Step:
        """Render the role's prompt with `variables`, call its bound endpoint/model, parse each choice and
        record the step. `prompt` replaces the role's prompt and parser (not its binding); `sampling`
        overrides the binding's (role defaults < config binding < these). Endpoint failures never raise: the
        step carries `error` and `error_kind`. A wrong binding (unknown model) raises ModelNotFoundError."""
        ...

    async def complete_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        continuation_ids: Sequence[int] = (),
        append_text: str = "",
        prompt: Role | None = None,
        **sampling: Any,
    ) -> Step:
        """Token-in, token-out: continue the role's rendered chat (as the model samples after it, a final
        assistant message continued) followed by `continuation_ids` and then `append_text` (tokenized alone),
        through the completions API. Sampling merges as in `call_role`. The step's `prompt_token_ids` are the
        exact ids sent, its choices carry the generated `token_ids`, and `request` holds
        `chat_prompt_tokens` and `appended_tokens` (so the ids of `append_text` are the prompt's last ones).
        Failures never raise, as in `call_role`."""
        ...

    async def score_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        continuation: str,
        prompt: Role | None = None,
    ) -> Step:
        """log p(continuation | the role's rendered prompt) under its bound model, in exactly the context the
        role samples in (an assistant prefill is continued, not closed). Recorded as a step whose one choice
        is the continuation; `step.metrics["log_p"]` is the score, absent when the call failed (`error`)."""
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

    def add_rewards(self, step: Step, rewards: Rewards | list[Rewards]) -> None:
        """Attach named rewards to a recorded step: one dict for every choice, or one dict per choice."""
        ...


async def env_or_none(
    ctx: GraphContext,
    name: str,
    *,
    node: str,
    episode_id: str,
    request: dict[str, Any],
    fn: Callable[[], Awaitable[T]],
) -> T | None:
    """`ctx.call_env`, or None when the infrastructure failed (sandbox down, verifier timeout): the step
    records the error and the caller's reward is None, never a 0 the model earned."""
    try:
        return await ctx.call_env(name, node=node, episode_id=episode_id, request=request, fn=fn)
    except RolegraphError as exc:
        if not exc.kind.infrastructure:
            raise
        return None
