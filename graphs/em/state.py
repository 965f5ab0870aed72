"""The EM graphs' state, options and the text shapes that make p's scores and training rows agree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolegraph.errors import ConfigError

Q_ROLE = "rationale_writer"
"""q(z|c,x): writes the rationale behind a seed problem."""
P_ROLE = "proposer"
"""p(z,x|c): writes a rationale, then a problem, from concepts."""
EXTRACT_ROLE = "concept_extractor"


class EMOptions(BaseModel):
    """Options of the EM graphs (stored with each run; `seeds` is the list of seed dicts)."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[dict[str, Any]] = Field(default_factory=list)
    """{id, problem, concepts} per seed (E-step, concepts) or {id, problem, concepts, rationale} (scoring)."""
    k: int = Field(2, ge=1, le=64)
    """Rationales sampled per seed in the E-step (one call with n=k)."""
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.9, ge=0)
    difficulty: str = "competition"
    concepts_k: int = Field(3, ge=1, le=20)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> EMOptions:
        """Validate the graph's options; errors are one-line ConfigErrors."""
        try:
            return cls.model_validate({k: v for k, v in options.items() if k in cls.model_fields})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                f"em option '{where}': {err['msg']}", f"options: {', '.join(cls.model_fields)}"
            ) from None


class EMState(TypedDict, total=False):
    episode_id: str
    options: dict[str, Any]
    """EMOptions without the seed list (k, max_tokens, temperature, difficulty)."""
    seed: str
    problem: str
    """x: the seed problem."""
    concepts: list[str]
    """c: its foundational concepts."""
    rationales: list[str]
    """E-step: the k rationales sampled from q."""
    sample_step: int
    """E-step: the id of the sampling step (per-choice rewards go on it)."""
    scores: list[float | None]
    """E-step: log p(z,x|c) of each rationale (None where the scoring call failed)."""
    best: int
    best_log_p: float
    rationale: str
    """M-step: z*, decoded greedily from q."""
    log_p_x: float
    """M-step: log p(x|z*,c) = log p(z*,x|c) − log p(z*|c)."""
    failed: str | None


def proposal_continuation(rationale: str, problem: str) -> str:
    """What follows p's prefill (`## Rationale`) when p writes z then x: scored as log p(z,x|c)."""
    return f"{problem_prefix(rationale)}{problem.strip()}"


def problem_prefix(rationale: str) -> str:
    """The part of `proposal_continuation` before x: log p(x|z,c) = score(z,x) − score(this)."""
    return f"{rationale.strip()}\n## Problem\n"


def rationale_of(text: str, parsed: dict[str, Any] | None) -> str:
    """The rationale a q sample carries (parsed when possible, else the raw text)."""
    if parsed and str(parsed.get("rationale", "")).strip():
        return str(parsed["rationale"]).strip()
    return text.strip()


def argmax(scores: Sequence[float | None]) -> int | None:
    """Index of the best score (first on ties); None and NaN never win; None when nothing was scored."""
    ranked = [
        (value, -index) for index, value in enumerate(scores) if value is not None and not math.isnan(value)
    ]
    return -max(ranked)[1] if ranked else None


def proposer_variables(state: EMState, options: EMOptions) -> dict[str, Any]:
    """c as p sees it: the concepts and the difficulty."""
    return {"concepts": list(state["concepts"]), "difficulty": options.difficulty}


def rationale_variables(state: EMState, options: EMOptions) -> dict[str, Any]:
    """(c, x) as q sees them."""
    return {**proposer_variables(state, options), "problem": state["problem"]}
