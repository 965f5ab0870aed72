"""What the store returns: plain, picklable records of runs, episodes, steps and training runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """One run directory: the graph it runs, the config snapshot and the seed."""

    graph: str
    config: dict[str, Any]
    seed: int
    params: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class EpisodeRecord:
    """One run of a graph on one input. `status` is running, finished or failed."""

    id: str
    status: str
    attempts: int
    input: dict[str, Any]
    final_state: dict[str, Any] | None
    kept: bool | None
    reason: str | None
    rewards: dict[str, float]
    error: str | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class ChoiceRecord:
    """One sampled completion of a step, with its parse result."""

    text: str
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    parsed: dict[str, Any] | None = None
    parse_error: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """One model call (kind 'role', all n choices in one step) or one environment call (kind 'env')."""

    id: int
    episode_id: str
    attempt: int
    kind: str
    node: str
    role: str
    endpoint: str | None
    model: str | None
    sampling: dict[str, Any]
    messages: list[dict[str, Any]]
    choices: list[ChoiceRecord]
    prompt_token_ids: list[int] | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    error: str | None
    request: Any
    response: Any
    started_at: float
    rewards: list[dict[str, float]] = field(default_factory=list)
    """Per-choice rewards recorded with `Store.add_rewards` (one dict per choice, possibly empty)."""


@dataclass(frozen=True)
class TrainingRunRecord:
    """One trainer run: its inputs, hyper-parameters, metrics and the adapter it produced."""

    id: int
    trainer: str
    inputs: list[str]
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    adapter_name: str | None
    adapter_version: str | None
    adapter_path: str | None
    created_at: float
