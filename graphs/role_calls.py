"""The one path to a model: render a role's prompt, merge sampling, call its endpoint, parse, record a Step.

Every role call of every graph, trainer and loop goes through `RuntimeContext`; nothing else calls a model.
Sampling is merged by one rule, weakest first: the role's defaults, then what the config binding sets
explicitly, then the node's or call's overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from rolegraph.agents.role import Role
from rolegraph.config import SamplingParams
from rolegraph.environments.sandbox.base import ExecResult
from rolegraph.errors import EndpointError, ModelNotFoundError, ParseError, failure_kind
from rolegraph.serving.types import CallResult, Choice
from rolegraph.store import Rewards, Step, Store

T = TypeVar("T")
CHAT_ONLY_EXTRA = frozenset({"continue_final_message", "add_generation_prompt"})
CHAT_IDS_CACHE = 256
"""Rendered prompts whose token ids a context keeps (one per episode and role in a TIR run)."""


class RolePool(Protocol):
    """What the runtime needs of rolegraph.serving.EndpointPool (fakes implement it in unit tests)."""

    def resolve(self, role: str) -> tuple[Any, str, SamplingParams]: ...


@dataclasses.dataclass
class RunStats:
    """Live counters for the progress bar and the summary."""

    kept: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    completion_tokens: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / max(time.monotonic() - self.started, 1e-6)


def sampling_for(role: Role, binding: SamplingParams, overrides: Mapping[str, Any]) -> SamplingParams:
    """Role defaults, then what the config binding sets explicitly, then the call's overrides."""
    known = set(SamplingParams.model_fields)
    layers = [role.sampling, binding.model_dump(include=binding.model_fields_set), overrides]
    merged: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "extra":
                extra.update(value or {})
            elif key in known:
                merged[key] = value
            else:
                extra[key] = value
    return SamplingParams(**merged, extra=extra)


def current_task() -> str | None:
    """The id of the LangGraph task (one node execution) this call runs in; None outside a graph."""
    from langgraph.config import get_config

    try:
        configurable = get_config().get("configurable", {})
    except RuntimeError:  # not inside a graph run (e.g. a graph's `prepare`)
        return None
    task = configurable.get("__pregel_task_id")
    return None if task is None else str(task)


def _jsonable(value: Any) -> Any:
    """Environment results as JSON-friendly data (dataclasses and pydantic models included)."""
    if type(value) in _FLAT_DATACLASSES:
        return {name: getattr(value, name) for name in _FLAT_DATACLASSES[type(value)]}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


_FLAT_DATACLASSES: dict[type, tuple[str, ...]] = {
    ExecResult: tuple(f.name for f in dataclasses.fields(ExecResult))
}
"""Results recorded on every env call whose fields hold no dataclasses, so a shallow dict is their asdict()
(which deep-copies field by field: ~15 µs an interpreter cell)."""

_IMMUTABLE_LEAVES = (str, int, float, type(None))
"""JSON values nothing can change in place (bools are ints, a str enum is a str)."""


def _snapshot(value: Any) -> Any:
    """`value` as JSON-friendly data (see `_jsonable`) that later changes to `value` cannot reach: the step
    that records it is encoded off the call's path. A flat dict of scalars (an interpreter cell's request and
    result) is copied; anything nested is copied through JSON."""
    data = value if type(value) is dict else _jsonable(value)
    if isinstance(data, _IMMUTABLE_LEAVES):
        return data
    if type(data) is dict and all(isinstance(leaf, _IMMUTABLE_LEAVES) for leaf in data.values()):
        return dict(data) if data is value else data
    return json.loads(json.dumps(data, default=str))


def _parsed(spec: Role, choice: Choice) -> Choice:
    try:
        return dataclasses.replace(choice, parsed=spec.parse(choice.text), parse_error=None)
    except ParseError as exc:
        return dataclasses.replace(choice, parsed=None, parse_error=exc.message)


class RuntimeContext:
    """The GraphContext nodes get: role, scoring and environment calls, each recorded as a Step."""

    def __init__(
        self,
        pool: RolePool,
        store: Store,
        *,
        roles: Mapping[str, Role] | None = None,
        prompts_dir: Path | None = None,
        stats: RunStats | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.roles = dict(roles or {})
        self.prompts_dir = prompts_dir
        self.stats = stats or RunStats()
        self.attempts: dict[str, int] = {}
        self.endpoint_errors: dict[str, EndpointError] = {}
        """Episode id → the last endpoint error of its current attempt; such episodes are retried."""
        self._chat_ids_cache: dict[str, list[int]] = {}

    def role(self, name: str) -> Role:
        if name not in self.roles:
            from rolegraph.agents.registry import get_role

            self.roles[name] = get_role(name, self.prompts_dir)
        return self.roles[name]

    def _new_step(self, kind: str, *, role: str, node: str, episode_id: str, **fields: Any) -> Step:
        # Calls outside a started episode (a graph's prepare) are recorded as attempt 1 with no episode row.
        return Step(
            id=0,
            episode_id=episode_id,
            attempt=self.attempts.get(episode_id, 1),
            kind=kind,
            node=node,
            role=role,
            started_at=time.time(),
            checkpoint=current_task(),
            **fields,
        )

    def _failed(self, step: Step, exc: EndpointError) -> Step:
        self.endpoint_errors[step.episode_id] = exc
        return dataclasses.replace(
            step, error=exc.message, error_kind=exc.kind.value, latency_s=time.time() - step.started_at
        )

    async def _generated(self, step: Step, spec: Role, result: CallResult, **fields: Any) -> Step:
        """Record a call that produced completions: its parsed choices, usage and the exact model."""
        self.stats.completion_tokens += result.usage.completion_tokens
        recorded: dict[str, Any] = {
            "endpoint": result.endpoint,
            "model": result.model or step.model,
            "choices": [_parsed(spec, c) for c in result.choices],
            "response": {"unavailable": result.unavailable} if result.unavailable else None,
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "latency_s": result.latency_s,
        }
        return await self.store.arecord_step(dataclasses.replace(step, **{**recorded, **fields}))

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
        spec = prompt or self.role(role)
        messages = spec.render(variables)
        client, model, binding = self.pool.resolve(role)
        params = sampling_for(spec, binding, sampling)
        step = self._new_step(
            "role",
            role=role,
            node=node,
            episode_id=episode_id,
            model=model,
            sampling=params.model_dump(),
            messages=messages,
        )
        try:
            result = await client.chat(messages, model=model, sampling=params)
        except ModelNotFoundError:
            raise  # a wrong binding fails every call: stop the run with its message
        except EndpointError as exc:
            return await self.store.arecord_step(self._failed(step, exc))
        return await self._generated(step, spec, result, prompt_token_ids=result.prompt_token_ids)

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
        """Token-in, token-out continuation through the completions API (see GraphContext.complete_role)."""
        spec = prompt or self.role(role)
        messages = spec.render(variables)
        client, model, binding = self.pool.resolve(role)
        params = sampling_for(spec, binding, sampling)
        # Chat-template options mean nothing to the completions API (the prompt is already token ids).
        extra = {k: v for k, v in params.extra.items() if k not in CHAT_ONLY_EXTRA}
        params = params.model_copy(update={"extra": extra})
        step = self._new_step(
            "role",
            role=role,
            node=node,
            episode_id=episode_id,
            model=model,
            sampling=params.model_dump(),
            messages=messages,
        )
        try:
            chat_ids = await self._chat_ids(client, model, messages)
            appended: list[int] = []
            if append_text:
                appended = await client.tokenize(append_text, model=model, add_special_tokens=False)
            prompt_ids = [*chat_ids, *continuation_ids, *appended]
            result = await client.complete(prompt_ids, model=model, sampling=params)
        except ModelNotFoundError:
            raise
        except EndpointError as exc:
            return await self.store.arecord_step(self._failed(step, exc))
        return await self._generated(
            step,
            spec,
            result,
            prompt_token_ids=prompt_ids,
            prompt_tokens=len(prompt_ids),
            request={"chat_prompt_tokens": len(chat_ids), "appended_tokens": len(appended)},
        )

    async def _chat_ids(self, client: Any, model: str, messages: list[dict[str, str]]) -> list[int]:
        """The rendered chat as the model samples after it (a final assistant message is continued)."""
        key = json.dumps([model, messages], sort_keys=True)
        if key not in self._chat_ids_cache:
            prefilled = bool(messages) and messages[-1].get("role") == "assistant"
            ids = await client.tokenize_chat(messages, model=model, continue_final_message=prefilled)
            if len(self._chat_ids_cache) >= CHAT_IDS_CACHE:
                self._chat_ids_cache.pop(next(iter(self._chat_ids_cache)))
            self._chat_ids_cache[key] = ids
        return list(self._chat_ids_cache[key])

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
        spec = prompt or self.role(role)
        messages = spec.render(variables)
        client, model, _ = self.pool.resolve(role)
        step = self._new_step(
            "role",
            role=role,
            node=node,
            episode_id=episode_id,
            model=model,
            messages=messages,
            choices=[Choice(text=continuation)],
            request={"score": True},
        )
        try:
            log_p = float(await client.score_chat(messages, continuation, model=model))
        except ModelNotFoundError:
            raise
        except EndpointError as exc:
            return await self.store.arecord_step(self._failed(step, exc))
        return await self.store.arecord_step(
            dataclasses.replace(
                step,
                endpoint=getattr(client, "name", None),
                metrics={"log_p": log_p},
                latency_s=time.time() - step.started_at,
            )
        )

    async def call_env(
        self,
        name: str,
        *,
        node: str,
        episode_id: str,
        request: dict[str, Any],
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        """Await `fn()` and record it as one `env` step, failed or not. The step is built, encoded and
        committed off this call's path (`Store.record_step_soon`: on the event loop's next turn, while the
        node awaits its next call) from snapshots of the request and result, and always before the node's
        writes are checkpointed."""
        where = (name, node, episode_id, self.attempts.get(episode_id, 1), current_task())
        recorded_request = _snapshot(request)
        started = time.time()
        try:
            value = await fn()
        except Exception as exc:
            kind = failure_kind(exc)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.store.record_step_soon(
                functools.partial(
                    self._env_step,
                    where,
                    started,
                    time.time(),
                    request=recorded_request,
                    error=message,
                    error_kind=kind.value,
                )
            )
            raise
        response = _snapshot(value)
        self.store.record_step_soon(
            functools.partial(
                self._env_step, where, started, time.time(), request=recorded_request, response=response
            )
        )
        return value

    @staticmethod
    def _env_step(
        where: tuple[str, str, str, int, str | None], started: float, ended: float, **fields: Any
    ) -> Step:
        """An environment call's step, built when it is committed from what was snapshotted when the call was
        over; `where` is (name, node, episode id, attempt, LangGraph task) as they were when the call started
        (see `_new_step`)."""
        name, node, episode_id, attempt, checkpoint = where
        return Step(
            id=0,
            episode_id=episode_id,
            attempt=attempt,
            kind="env",
            node=node,
            role=name,
            started_at=started,
            checkpoint=checkpoint,
            latency_s=ended - started,
            **fields,
        )

    def add_rewards(self, step: Step, rewards: Rewards | list[Rewards]) -> None:
        self.store.add_rewards(step.id, rewards)
