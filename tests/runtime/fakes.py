"""A fake pool for unit tests of the runtime (the end-to-end tests use the real vLLM server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rolegraph.config import SamplingParams
from rolegraph.errors import EndpointError
from rolegraph.serving.types import CallResult, Choice, Usage

Reply = Callable[[list[dict[str, Any]], SamplingParams], list[str]]


class FakeClient:
    def __init__(self, role: str, reply: Reply, *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.role = role
        self.reply = reply
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[tuple[list[dict[str, Any]], SamplingParams]] = []

    async def chat(
        self, messages: list[dict[str, Any]], *, model: str, sampling: SamplingParams
    ) -> CallResult:
        self.calls.append((messages, sampling))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise EndpointError("endpoint 'fake' is down", "start it")
        texts = self.reply(messages, sampling)
        return CallResult(
            choices=[Choice(text=t, finish_reason="stop", token_ids=[1, 2, 3]) for t in texts],
            model=model,
            endpoint="fake",
            usage=Usage(prompt_tokens=10, completion_tokens=3 * len(texts)),
            latency_s=self.delay_s,
        )


class FakePool:
    """Resolves every role to a FakeClient answering with `replies[role]`."""

    def __init__(self, replies: dict[str, Reply], *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.clients = {
            role: FakeClient(role, reply, delay_s=delay_s, fail=fail) for role, reply in replies.items()
        }

    def resolve(self, role: str) -> tuple[FakeClient, str, SamplingParams]:
        return self.clients[role], f"fake-{role}", SamplingParams(max_tokens=16)
