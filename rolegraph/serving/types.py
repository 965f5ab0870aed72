"""What a model call returns. Plain dataclasses: picklable, and easy to build in unit-test fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Choice:
    """One sampled completion: what the client returns and, once parsed, what the store keeps."""

    text: str
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    """Per-token log-probabilities of the completion, when requested."""
    parsed: dict[str, Any] | None = None
    """The role parser's fields (None until parsed, or when parsing failed)."""
    parse_error: str | None = None


@dataclass(frozen=True)
class CallResult:
    """The result of one chat or completion call (possibly with n > 1 choices)."""

    choices: list[Choice]
    model: str
    endpoint: str
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    prompt_token_ids: list[int] | None = None
    raw: dict[str, Any] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    """What the call asked for (or records by default: token ids) and the endpoint did not give, each with a
    one-line reason naming the endpoint, e.g. {"token_ids": "endpoint 'x' does not return token ids"}."""

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].text if self.choices else ""
