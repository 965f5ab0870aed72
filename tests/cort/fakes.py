"""A scripted completions model for unit tests of the TIR loop: one token per character, so ids decode back.

The integration tests use the real vLLM server instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rolegraph.config import SamplingParams
from rolegraph.serving.types import CallResult, Choice, Usage

Script = Callable[[str], str]
"""Given the decoded prompt so far (chat + continuation), the text the model writes next."""


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


class ScriptedClient:
    """Implements the client calls `RuntimeContext.complete_role` makes; stops like vLLM on stop strings."""

    name = "scripted"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.prompts: list[list[int]] = []

    async def tokenize_chat(
        self, messages: list[dict[str, Any]], *, model: str, continue_final_message: bool = False
    ) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return encode(text if continue_final_message else text + "<assistant>")

    async def tokenize(self, text: str, *, model: str, add_special_tokens: bool = True) -> list[int]:
        return encode(text)

    async def complete(self, prompt: list[int], *, model: str, sampling: SamplingParams) -> CallResult:
        self.prompts.append(list(prompt))
        text = self.script(decode(prompt))
        finish = "stop"
        for stop in sampling.stop or []:
            at = text.find(stop)
            if at >= 0:
                text = text[: at + len(stop)]
                break
        if len(text) > sampling.max_tokens:
            text, finish = text[: sampling.max_tokens], "length"
        return CallResult(
            choices=[Choice(text=text, finish_reason=finish, token_ids=encode(text))],
            model=model,
            endpoint=self.name,
            usage=Usage(len(prompt), len(text)),
        )


class ScriptedPool:
    def __init__(self, script: Script) -> None:
        self.client = ScriptedClient(script)

    def resolve(self, role: str) -> tuple[ScriptedClient, str, SamplingParams]:
        return self.client, f"scripted-{role}", SamplingParams(max_tokens=4096)
