"""What the store returns: plain, picklable records of runs, episodes, steps and training runs.

`Step` is the one record of a role or environment call: the runtime builds it, the store keeps it, graph
nodes read it, exports and the studio show it. Its choices are `rolegraph.serving.types.Choice`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rolegraph.serving.types import Choice

Rewards = dict[str, float | None]
"""Named rewards; None means the infrastructure could not compute it (left out of training, counted)."""


@dataclass(frozen=True)
class RunRecord:
    """One run directory: the graph it runs, the config snapshot and the seed."""

    graph: str
    config: dict[str, Any]
    seed: int
    params: dict[str, Any]
    created_at: float
    rewards: list[dict[str, Any]] = field(default_factory=list)
    """The graph's declared rewards (`rolegraph.graphs.base.Reward` as dicts)."""


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
    rewards: Rewards
    error: str | None
    started_at: float
    finished_at: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    error_kind: str | None = None


@dataclass(frozen=True)
class Step:
    """One model call (kind 'role', all n choices in one step) or one environment call (kind 'env').

    `id` is 0 until the store has recorded it. A failed call has `error` and `error_kind` (a FailureKind
    value) and no choices; a choice that did not parse has `parse_error`.
    """

    id: int
    episode_id: str
    attempt: int
    kind: str
    node: str
    role: str
    endpoint: str | None = None
    model: str | None = None
    """The exact model or adapter version that produced the step."""
    sampling: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    prompt_token_ids: list[int] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    request: Any = None
    response: Any = None
    started_at: float = 0.0
    checkpoint: str | None = None
    """The LangGraph task the step ran in; resume supersedes steps of tasks that never completed."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Step-level measurements that are not rewards (e.g. a scoring call's `log_p`)."""
    rewards: list[Rewards] = field(default_factory=list)
    """Per-choice rewards recorded with `Store.add_rewards` (one dict per choice, possibly empty)."""

    @property
    def ok(self) -> bool:
        """The call succeeded and at least one choice parsed."""
        return self.error is None and any(c.parsed is not None for c in self.choices)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]

    @property
    def parsed(self) -> list[dict[str, Any] | None]:
        return [c.parsed for c in self.choices]

    @property
    def parse_errors(self) -> list[str | None]:
        return [c.parse_error for c in self.choices]

    @property
    def first(self) -> dict[str, Any] | None:
        """The first successfully parsed choice, or None."""
        return next((c.parsed for c in self.choices if c.parsed is not None), None)


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
