"""The azr graph's typed state and run options."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolegraph.errors import ConfigError

TaskType = Literal["deduction", "abduction", "induction"]
TASK_TYPES: tuple[TaskType, ...] = ("deduction", "abduction", "induction")
PROPOSER = "proposer"
SOLVER = "solver"


class AZROptions(BaseModel):
    """Options of one azr run (stored with the run, so a resume proposes and solves the same way).

    `mode="seed"` validates the given `seeds` triplets only (they seed the buffers). `mode="propose"` proposes
    and validates without solving (`--seed-from-model`). `mode="train"` proposes, validates, estimates
    learnability with `rollouts` solver samples and solves one task per episode.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["train", "propose", "seed"] = "train"
    types: list[TaskType] = Field(default_factory=lambda: list(TASK_TYPES), min_length=1)
    batch: int = Field(1, ge=1)
    """Episodes (proposals) per task type."""
    references: int = Field(6, ge=0)
    """K: buffer triplets shown to the deduction and abduction proposer."""
    induction_inputs: int = Field(10, ge=2)
    """N: inputs the induction proposer writes; half of the valid pairs are shown, half held back."""
    rollouts: int = Field(8, ge=1)
    """n: Monte Carlo solver rollouts per valid task, for its learnability."""
    extreme_reward: float = 0.0
    """r_propose when the solve rate is 0 or 1. The paper gives 0; the reference code -0.5 (its issue #37)."""
    invalid_penalty: float = -0.5
    """r_propose of a well-formatted proposal that fails validation."""
    format_penalty: float = -1.0
    """Reward of a completion that does not follow its format (no code/input blocks; no <answer>)."""
    propose_max_tokens: int = Field(512, ge=1)
    solve_max_tokens: int = Field(512, ge=1)
    temperature: float = Field(1.0, ge=0)
    seed: int = 0
    buffer_runs: list[str] = Field(default_factory=list)
    """Run dirs (seed runs and earlier steps) whose valid tasks make up the buffers."""
    seeds: list[dict[str, Any]] = Field(default_factory=list)
    """mode=seed: the triplets to validate ({program, input} and an optional id)."""
    episodes: list[dict[str, Any]] = Field(default_factory=list)
    """Set by the graph's prepare: each episode's type, references and fallback task (kept for resuming)."""

    @classmethod
    def parse(cls, options: dict[str, Any]) -> AZROptions:
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                f"azr option '{where}': {err['msg']}",
                f"fix --set {where}=...; options: {', '.join(cls.model_fields)}",
            ) from None


class AZRState(TypedDict, total=False):
    episode_id: str
    options: dict[str, Any]
    """AZROptions without `episodes` and `seeds`, JSON-ready."""
    task_type: TaskType
    references: list[dict[str, Any]]
    """Buffer tasks shown to the proposer (deduction, abduction)."""
    program: str
    """Induction: the buffer program the proposer writes inputs for."""
    fallback: dict[str, Any] | None
    """A buffer task the solver gets when this episode's proposal is invalid (None: none of this type)."""
    seed: dict[str, Any]
    """mode=seed: the triplet to validate."""
    proposal: dict[str, Any] | None
    """The parsed proposal: {program, input} or {program, inputs, message}; None when it did not parse."""
    propose_step: int
    task: dict[str, Any] | None
    """The validated task (see graphs/azr/tasks.py `Task`), None when invalid."""
    invalid: str | None
    """Why the proposal is not a valid task."""
    infrastructure: bool
    """The sandbox failed during validation: nothing is known of the proposal."""
    solve_rate: float | None
    learnability: float | None
    solved: float | None
    solve_source: str | None
    """'proposal' or 'buffer': which task the solver solved (None: none)."""
    failed: str | None
