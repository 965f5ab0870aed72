"""The self-play graph's typed state and its run options."""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rolegraph.errors import ConfigError


class SelfPlayOptions(BaseModel):
    """Options of a self-play rollout run (stored with the run, so a resume samples the same way)."""

    model_config = ConfigDict(extra="forbid")

    problems: str
    """A promptcot run dir or a JSONL problem file (see graphs/selfplay/problems.py); the run's `n` is the
    most problems it takes."""
    policy_role: str = "solver"
    teacher_role: str | None = None
    """Role whose majority answer is the reference when a math problem has none. It answers the policy's
    prompt (same parser) with its own binding, e.g. a bigger model."""
    n: int = Field(4, ge=1)
    teacher_n: int = Field(3, ge=1)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0)
    seed: int | None = None
    """Sampling seed for the rollouts (reproducible rollouts on a quiet server)."""

    @model_validator(mode="after")
    def _sampling_can_differ(self) -> SelfPlayOptions:
        # vLLM answers HTTP 400 to n > 1 at temperature 0, and identical rollouts make no pairs anyway.
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 rollouts need a temperature above 0 (pass --temperature above 0)")
        return self

    @classmethod
    def parse(cls, options: dict[str, Any]) -> SelfPlayOptions:
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if not where:  # a rule across options
                message = f"selfplay options: {err['ctx']['error']}"
                raise ConfigError(message, "change the options named") from None
            raise ConfigError(
                f"selfplay option '{where}': {err['msg']}",
                f"fix --set {where}=...; options: {', '.join(cls.model_fields)}",
            ) from None


class SelfPlayState(TypedDict, total=False):
    episode_id: str
    options: dict[str, Any]
    """SelfPlayOptions.model_dump(mode='json')."""
    problem: dict[str, Any]
    """Problem.to_state()."""
    reference: str | None
    """The math reference answer: the problem's own, or the teacher's majority (None for code)."""
    reference_source: str | None
    """'problem', 'teacher' or None."""
    verdicts: list[str | None]
    """Per rollout: the extracted answer for math, the sandbox status for code (None: the sandbox failed)."""
    passed: list[bool | None]
    """Per rollout: the verdict; None when the check could not run (sandbox failure, verifier timeout)."""
    failed: str | None
    """Why the episode could not be checked (no reference, a failed call)."""
