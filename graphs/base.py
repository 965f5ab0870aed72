"""What a graph is to the runtime: a GraphDef. Built-in graphs and YAML specs both produce one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel

from rolegraph.graphs.context import GraphContext


@dataclass(frozen=True)
class RunParams:
    """Options of one `rolegraph run`; graph-specific ones go in `options` (from `--set key=value`)."""

    n: int
    seed: int = 0
    run_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeInput:
    """One episode's stable key (for resuming) and its initial state."""

    key: str
    state: dict[str, Any]


@dataclass(frozen=True)
class Reward:
    """A named reward a graph declares, as TRL's `reward_funcs` with `reward_weights`.

    The training reward of a choice is the weighted sum of the `train` rewards it has (step rewards first,
    then its episode's); it is None when any of them is None (the infrastructure failed), and such samples
    are left out of training and counted.
    """

    name: str
    weight: float = 1.0
    train: bool = False
    description: str = ""


@dataclass(frozen=True)
class Outcome:
    """How an episode ended, for the summary and for exports."""

    kept: bool
    reason: str | None = None
    """Why it was rejected (None when kept)."""
    rewards: dict[str, float | None] = field(default_factory=dict)
    """Values of the graph's declared rewards; None when the infrastructure could not compute one."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Measurements that are not rewards (token counts, agreement rates): shown, never trained on."""


@dataclass(frozen=True)
class GraphDef:
    """A named graph: its roles, how to build its StateGraph, its inputs, and how to judge a final state.

    `build(ctx)` returns an uncompiled StateGraph whose nodes are plain async functions closed over `ctx`;
    the runtime compiles it with a checkpointer so unfinished episodes resume from their last node.
    `prepare(ctx, params)` runs once per run before episodes (e.g. PromptCoT's concept pool) and returns
    options merged into `params.options` for `inputs`.
    """

    name: str
    roles: tuple[str, ...]
    build: Callable[[GraphContext], StateGraph]
    inputs: Callable[[RunParams], list[EpisodeInput]]
    outcome: Callable[[dict[str, Any]], Outcome]
    prepare: Callable[[GraphContext, RunParams], Awaitable[dict[str, Any]]] | None = None
    description: str = ""
    rewards: tuple[Reward, ...] = ()
    """The rewards episodes and steps may carry; at least one is `train=True` when the graph is trained on."""
    options: type[BaseModel] | None = None
    """The pydantic model of the graph's `--set` options; None accepts any key."""
