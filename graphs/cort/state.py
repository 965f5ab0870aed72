"""The cort graph's run options and typed state (the TIR loop's keys start with `tir_`)."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rolegraph.errors import ConfigError
from rolegraph.graphs.cort.detectors import BUILTIN_DETECTORS
from rolegraph.graphs.cort.transcript import CODE_STOP, OUTPUT_CAP, PROMPT_HINT

Mode = Literal["tir", "plain"]
MAX_TURNS_LIMIT = 45
"""Turns an episode may take: the runtime's LangGraph recursion limit (50) less the other nodes."""


class CortOptions(BaseModel):
    """Options of a cort run (stored with the run, so a resumed run samples the same way)."""

    model_config = ConfigDict(extra="forbid")

    problems: str = ""
    """A JSONL of problems (`problem`, `answer`), e.g. ../shared/data/math500_dev.jsonl."""
    modes: list[Mode] = Field(default_factory=lambda: list[Mode](["tir"]))
    """`tir`: the interpreter loop; `plain`: the plain solver on the same problems (for comparisons)."""
    samples: int = Field(1, ge=1)
    """Trajectories per problem and mode (RFT samples N)."""
    role: str = "cort_solver"
    plain_role: str = "solver"
    max_calls: int = Field(15, ge=0)
    """Code executions allowed per episode (CoRT: 15 at evaluation, 12 in training)."""
    max_tokens: int = Field(1024, ge=1)
    """Model tokens per episode (interpreter output and hints not counted)."""
    segment_tokens: int = Field(256, ge=1)
    """Model tokens per generation call: detectors look at the transcript after every segment."""
    max_context: int = Field(2048, ge=64)
    """The served model's context length; an episode stops before its prompt would exceed it."""
    max_turns: int = Field(40, ge=1, le=MAX_TURNS_LIMIT)
    output_cap: int = Field(OUTPUT_CAP, ge=16)
    cell_timeout_s: float = Field(10.0, gt=0)
    prompt_hint: str = PROMPT_HINT
    """Text the solver's turn starts with after `<think>` (empty: none)."""
    detectors: list[str] = Field(default_factory=lambda: list(BUILTIN_DETECTORS))
    insert_hints: bool = True
    """Insert a detector's hint when it fires; False only flags the episode (RFT filters flagged ones)."""
    hints_per_kind: int = Field(1, ge=0)
    stop: list[str] = Field(default_factory=lambda: list(CODE_STOP))
    temperature: float | None = Field(None, ge=0)
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> CortOptions:
        from rolegraph.graphs.cort.detectors import get_detectors

        get_detectors(self.detectors)
        if not self.modes:
            raise ValueError("give at least one mode (tir, plain)")
        return self

    @classmethod
    def parse(cls, options: dict[str, Any]) -> CortOptions:
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "options"
            raise ConfigError(
                f"cort option '{where}': {err['msg']}",
                f"fix --set {where}=...; options: {', '.join(cls.model_fields)}",
            ) from None


class TIRState(TypedDict, total=False):
    """What the TIR loop keeps per episode; any graph that embeds the loop carries these keys."""

    episode_id: str
    options: dict[str, Any]
    problem: dict[str, Any]
    """`id`, `problem`, `answer` (None when unknown)."""
    mode: Mode
    tir_prompt_ids: list[int]
    """The rendered chat prompt's ids (the model continues them)."""
    tir_ids: list[int]
    """Everything after the prompt, in order: model tokens, interpreter output and hints."""
    tir_mask: list[int]
    """Per id of `tir_ids`: 1 for a model token, 0 for an interpreter or hint token."""
    tir_segments: list[dict[str, str]]
    """The transcript as `{kind: model|output|hint, text}` pieces."""
    tir_cells: list[dict[str, Any]]
    """Executed cells: code, status, output, duration_s, use (calculation or verification)."""
    tir_pending: list[dict[str, str]]
    """Segments (an output block, hints) the next generation call appends before sampling."""
    tir_fired_at: dict[str, int]
    """Detector name → cells run when it last fired (it fires once per stretch between cells)."""
    tir_session: int
    """How many times the kernel was restarted (a cell killed it); cells record the session they ran in."""
    sample: int
    tir_refused: int
    """Code blocks written after the call cap (not run)."""
    tir_turns: int
    tir_model_tokens: int
    tir_flags: dict[str, int]
    """Detector name → times it fired."""
    tir_hints: list[str]
    tir_done: str | None
    """Why generation ended: eos, length, context, turns, cap."""
    answer: str | None
    correct: bool | None
    failed: str | None
