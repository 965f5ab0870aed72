"""What an endpoint can do: probed with minimal requests on first use, or declared in the config.

vLLM does everything rolegraph asks for; other OpenAI-compatible servers (llama.cpp, TGI, Ollama, gateways,
`transformers serve`) may list no models, ignore `n` and `logprobs`, reject fields they do not know, and
offer no `/tokenize`. A probe finds out which, once per endpoint per run, and the client adapts: `n` is
emulated, rejected fields are never sent again, and what cannot be emulated (scoring, runtime LoRA) is
refused up front with a one-line error naming the endpoint and what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from rolegraph.config.schema import EndpointCapabilities
from rolegraph.errors import ConfigError, ModelNotFoundError, RequestRejectedError

if TYPE_CHECKING:
    from rolegraph.serving.client import Client

Capability = Literal[
    "lists_models", "n", "logprobs", "token_ids", "prompt_logprobs", "structured_outputs", "runtime_lora",
    "tokenize",
]  # fmt: skip

DESCRIPTIONS: dict[str, str] = {
    "lists_models": "list its models in /v1/models",
    "n": "return n > 1 choices per request",
    "logprobs": "return logprobs",
    "token_ids": "return token ids",
    "prompt_logprobs": "return prompt logprobs",
    "structured_outputs": "decode under structured outputs",
    "runtime_lora": "load LoRA adapters at run time",
    "tokenize": "offer /tokenize",
}
"""What each capability means, as the tail of "endpoint 'x' does not ..."."""

CHAT_PROBED = frozenset({"n", "logprobs", "token_ids", "structured_outputs"})
"""What one chat request finds out (the other capabilities have a probe each)."""
PROBE_CHOICE = "A"
"""The structured-outputs probe constrains the answer to exactly this; a server that ignores the constraint
is caught by answering anything else."""


class CapabilityError(ConfigError):
    """An endpoint lacks a capability a call needs; raised before any work starts."""


@dataclass(frozen=True)
class Capabilities:
    """One endpoint's capabilities: True, False, or None (not known yet: the client assumes vLLM's)."""

    lists_models: bool | None = None
    n: bool | None = None
    logprobs: bool | None = None
    token_ids: bool | None = None
    prompt_logprobs: bool | None = None
    structured_outputs: bool | None = None
    runtime_lora: bool | None = None
    tokenize: bool | None = None

    @classmethod
    def vllm(cls, *, runtime_lora: bool) -> Capabilities:
        """A server rolegraph launched: vLLM, with runtime LoRA when the launch enabled it."""
        return cls(True, True, True, True, True, True, runtime_lora, True)

    @classmethod
    def declared(cls, config: EndpointCapabilities) -> Capabilities:
        return cls(**config.model_dump())

    def over(self, base: Capabilities) -> Capabilities:
        """These capabilities where known, `base`'s elsewhere."""
        return replace(base, **{k: v for k, v in asdict(self).items() if v is not None})

    @property
    def unknown(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is None]

    def missing(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is False]

    def summary(self) -> str:
        """One line, e.g. `has: n logprobs; lacks: tokenize; unknown: runtime_lora`."""
        have = [f.name for f in fields(self) if getattr(self, f.name)]
        parts = [f"has: {' '.join(have)}"] if have else []
        if self.missing():
            parts.append(f"lacks: {' '.join(self.missing())}")
        if self.unknown:
            parts.append(f"unknown: {' '.join(self.unknown)}")
        return "; ".join(parts)


def require(client: Any, *needed: Capability, purpose: str) -> None:
    """A CapabilityError, naming the endpoint and what it lacks, unless it has every `needed` capability
    (unknown ones pass: the first call finds out; so does a client without capabilities, e.g. a test fake).
    Call it before any work that needs them starts."""
    capabilities = getattr(client, "capabilities", None)
    if capabilities is None:
        return
    lacking = [name for name in needed if getattr(capabilities, name) is False]
    if lacking:
        what = " or ".join(DESCRIPTIONS[name] for name in lacking)
        raise CapabilityError(
            f"{purpose} needs endpoint '{client.name}' at {client.base_url} to {what}, and it does not",
            "bind the role to a vLLM endpoint (or one with those capabilities); check with "
            "`rolegraph endpoints status`",
        )


async def probe(client: Client, model: str, *, skip: Capabilities | None = None) -> Capabilities:
    """Probe what `skip` leaves unknown, with minimal concurrent requests (1-token generations)."""
    known = skip or Capabilities()
    todo = set(known.unknown)
    found: dict[str, bool] = {}

    async def listing() -> None:
        found["lists_models"] = model in (await client.listed_models() or [])

    async def chat() -> None:
        found.update(await _probe_chat(client, model, todo))

    async def tokenize() -> None:
        found["tokenize"] = await _answers(client.tokenize("a", model=model))

    async def prompt_logprobs() -> None:
        found["prompt_logprobs"] = await _answers(_probe_prompt_logprobs(client, model))

    async def runtime_lora() -> None:
        found["runtime_lora"] = await client.has_route("/v1/load_lora_adapter")

    probes = {
        "lists_models": listing,
        "tokenize": tokenize,
        "prompt_logprobs": prompt_logprobs,
        "runtime_lora": runtime_lora,
    }
    jobs = [job() for name, job in probes.items() if name in todo]
    if todo & CHAT_PROBED:
        jobs.append(chat())
    await asyncio.gather(*jobs)
    return known.over(Capabilities(**{k: v for k, v in found.items() if k in todo}))


async def _probe_chat(client: Client, model: str, todo: set[str]) -> dict[str, bool]:
    """One 1-token chat request asking for everything at once; fields the server rejects are dropped (and
    remembered by the client), so the answer says what it ignored."""
    from rolegraph.config import SamplingParams

    extra: dict[str, Any] = {}
    if "structured_outputs" in todo:
        extra["structured_outputs"] = {"choice": [PROBE_CHOICE]}
    # Not greedy: vLLM refuses n > 1 at temperature 0. The structured answer is one token either way.
    sampling = SamplingParams(temperature=1.0, max_tokens=1, n=2, logprobs=True, extra=extra)
    messages = [{"role": "user", "content": f"Answer {PROBE_CHOICE}."}]
    result = await client.chat(messages, model=model, sampling=sampling, emulate_n=False)
    choices = result.choices
    return {
        "n": len(choices) >= 2,
        "logprobs": bool(choices) and all(c.logprobs for c in choices),
        "token_ids": bool(choices) and all(c.token_ids for c in choices),
        "structured_outputs": "structured_outputs" not in client.rejected_fields
        and bool(choices)
        and all(c.text == PROBE_CHOICE for c in choices),
    }


async def _probe_prompt_logprobs(client: Client, model: str) -> None:
    positions = await client.prompt_logprobs("a b", model=model)
    if not positions or len(positions) < 2:
        raise RequestRejectedError("no prompt logprobs in the answer", None)


async def _answers(call: Any) -> bool:
    """Whether a probing call succeeded; a rejection or a missing route means the capability is absent."""
    with contextlib.suppress(RequestRejectedError, ModelNotFoundError, ValueError, KeyError, TypeError):
        await call
        return True
    return False
