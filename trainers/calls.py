"""Role calls and scoring calls made by the training loops, each recorded as a step in the run's store.

Training data is then read back from the store, so what a trainer learns from is exactly what was logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolegraph.agents.registry import get_role
from rolegraph.agents.role import Role
from rolegraph.errors import RolegraphError
from rolegraph.store import ChoiceRecord, Store


@dataclass
class RoleOutput:
    """The texts and parsed fields of one recorded role call."""

    step_id: int
    model: str
    texts: list[str]
    parsed: list[dict[str, Any] | None]
    messages: list[dict[str, str]]


class Recorder:
    """Calls roles and scores through an endpoint pool and records every call in `run_dir`'s store."""

    def __init__(self, pool: Any, run_dir: Path | str, *, graph: str, params: dict[str, Any]) -> None:
        self.pool = pool
        self.run_dir = Path(run_dir)
        self.store = Store(self.run_dir)
        self.store.start_run(graph, {}, int(params.get("seed", 0)), params)
        self._attempts: dict[str, int] = {}

    def close(self) -> None:
        self.store.close()

    def begin(self, episode_id: str, state: dict[str, Any]) -> None:
        """Start (or restart) an episode; finished episodes are left as they are."""
        if episode_id in self.store.finished_ids():
            self._attempts[episode_id] = 0
            return
        self._attempts[episode_id] = self.store.begin_episode(episode_id, state)

    def attempt(self, episode_id: str) -> int:
        """The attempt number this process records steps under for an episode."""
        return max(self._attempts.get(episode_id, 1), 1)

    def finish(self, episode_id: str, state: dict[str, Any], *, rewards: dict[str, float]) -> None:
        if episode_id not in self.store.finished_ids():
            self.store.finish_episode(episode_id, state, kept=True, rewards=rewards)

    def render(self, role: str, variables: dict[str, Any]) -> list[dict[str, str]]:
        return get_role(role).render(variables)

    async def call(
        self,
        role: str,
        *,
        episode_id: str,
        node: str,
        variables: dict[str, Any],
        spec: Role | None = None,
        **sampling: Any,
    ) -> RoleOutput:
        """One role call (n choices) with the role's bound model; parse failures leave `parsed` None.

        `spec` replaces the role's prompt and parser (not its binding), e.g. a code prompt for the solver.
        """
        spec = spec or get_role(role)
        messages = spec.render(variables)
        client, model, params = self.pool.resolve(role)
        merged = params.merged(**{**spec.sampling, **sampling}) if hasattr(params, "merged") else params
        started = time.time()
        result = await client.chat(messages, model=model, sampling=merged)
        choices, parsed = [], []
        for choice in result.choices:
            try:
                fields: dict[str, Any] | None = spec.parse(choice.text)
                error = None
            except RolegraphError as exc:
                fields, error = None, str(exc)
            parsed.append(fields)
            choices.append(
                ChoiceRecord(
                    text=choice.text,
                    finish_reason=choice.finish_reason,
                    parsed=fields,
                    parse_error=error,
                    token_ids=choice.token_ids,
                    logprobs=choice.logprobs,
                )
            )
        step_id = self.store.record_step(
            episode_id=episode_id,
            attempt=self.attempt(episode_id),
            kind="role",
            node=node,
            role=role,
            started_at=started,
            endpoint=result.endpoint,
            model=result.model or model,
            sampling=merged.model_dump() if hasattr(merged, "model_dump") else {},
            messages=messages,
            choices=choices,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            latency_s=result.latency_s,
        )
        return RoleOutput(step_id, result.model or model, [c.text for c in result.choices], parsed, messages)

    async def score(
        self, role: str, *, episode_id: str, node: str, messages: list[dict[str, str]], continuation: str
    ) -> float:
        """Summed log-prob of `continuation` after the chat `messages` under the role's bound model, recorded
        as a step whose one choice is the continuation and whose reward `log_p` is the score."""
        client, model, _ = self.pool.resolve(role)
        started = time.time()
        value = float(await client.score_chat(messages, continuation, model=model))
        step_id = self.store.record_step(
            episode_id=episode_id,
            attempt=self.attempt(episode_id),
            kind="role",
            node=node,
            role=role,
            started_at=started,
            model=model,
            messages=messages,
            choices=[ChoiceRecord(text=continuation)],
            latency_s=time.time() - started,
            request={"score": True},
            response={"log_p": value},
        )
        self.store.add_rewards(step_id, {"log_p": value})
        return value
