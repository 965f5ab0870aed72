"""The PromptCoT graph's typed state and its run options (`--set key=value`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rolegraph.errors import ConfigError

Verdict = Literal["perfect", "acceptable", "bad"]
DEFAULT_ACCEPT: tuple[Verdict, ...] = ("perfect", "acceptable")


class PromptCotOptions(BaseModel):
    """Options of a `promptcot` run. Values may arrive as strings from the command line."""

    model_config = ConfigDict(extra="forbid")

    seeds: Path | None = None
    """JSONL of seed problems (`problem` field); default $ROLEGRAPH_SEEDS or the shared MATH-500 dev set."""
    seed_limit: int = Field(8, ge=1)
    concepts_per_seed: int = Field(5, ge=1, le=20)
    concepts_per_problem: int = Field(3, ge=1, le=10)
    concept_temperature: float = Field(0.5, gt=0)
    similarity_weight: float = Field(1.0, ge=0)
    use_embeddings: bool = True
    difficulty: str = "competition"
    recover_problem: bool = True
    """When the proposer writes a rationale but no problem, ask problem_writer for the problem (p(x|z,c))."""
    k: int = Field(2, ge=1, le=64)
    """Solver attempts per problem (one call with n=k)."""
    min_agreement: float = Field(0.5, ge=0, le=1)
    accept_verdicts: list[Verdict] = Field(default_factory=lambda: list(DEFAULT_ACCEPT))
    require_parsed: bool = True
    """Reject when the judge's output could not be parsed (a proposer failure always rejects)."""
    judge_rule: Literal["promptcot", "strict"] = "promptcot"
    max_tokens: int | None = Field(None, ge=1)
    """Overrides every role call's max_tokens (for tiny test and bench runs)."""

    @field_validator("accept_verdicts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.strip("[]").split(",") if part.strip()]
        return value

    @classmethod
    def parse(cls, options: dict[str, Any]) -> PromptCotOptions:
        """Validate the graph's options, ignoring keys `prepare` adds; errors are one-line ConfigErrors."""
        own = {k: v for k, v in options.items() if k in cls.model_fields}
        try:
            return cls.model_validate(own)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                f"promptcot option '{where}': {err['msg']}",
                f"fix --set {where}=...; options: {', '.join(cls.model_fields)}",
            ) from None


class PromptCotState(TypedDict, total=False):
    episode_id: str
    options: dict[str, Any]
    """PromptCotOptions.model_dump(mode='json'): nodes read k, difficulty and the keep rule from here."""
    concepts: list[str]
    difficulty: str
    rationale: str
    problem: str
    problem_source: str
    """'proposer', or 'problem_writer' when the problem was recovered from the proposer's rationale."""
    attempts: list[str]
    """Solver completions, one per attempt."""
    answers: list[str | None]
    """Extracted final answers (None where an attempt gave none)."""
    majority_answer: str | None
    agreement: float
    """The majority answer's share of all attempts (math-verify equivalence)."""
    mean_reasoning_tokens: float
    verdict: Verdict | None
    criteria: dict[str, str]
    failed: str | None
    """Why a step could not continue (unparseable output, failed call); routes straight to `decide`."""
    failed_kind: str | None
    """The FailureKind value of `failed` (parse for unparseable output, else the call's failure kind)."""
    kept: bool
    reject_reason: str | None
