"""The training reward: the weighted sum of a graph's declared `train` rewards, or None.

A reward is None when the infrastructure could not compute it (sandbox down, verifier timeout, endpoint
down). Such a sample is never a 0 the model earned: it is left out of training and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rolegraph.store.records import EpisodeRecord, Rewards, Step


def choice_rewards(step: Step, index: int, episode: EpisodeRecord | None) -> Rewards:
    """A choice's named rewards: its episode's outcome rewards, overridden by those recorded on the step."""
    merged: Rewards = dict(episode.rewards) if episode is not None else {}
    if index < len(step.rewards):
        merged.update(step.rewards[index])
    return merged


def training_reward(
    rewards: Mapping[str, float | None], declared: Sequence[Mapping[str, Any]]
) -> float | None:
    """Σ weight·value over the declared `train` rewards present in `rewards`.

    None when one of them is None (an infrastructure failure) or when none of them is present (the sample
    carries no training signal).
    """
    total = 0.0
    seen = False
    for spec in declared:
        if not spec.get("train") or spec["name"] not in rewards:
            continue
        value = rewards[spec["name"]]
        if value is None:
            return None
        total += float(spec.get("weight", 1.0)) * float(value)
        seen = True
    return total if seen else None


DEFAULT_DECLARED: tuple[dict[str, Any], ...] = ({"name": "kept", "weight": 1.0, "train": True},)
"""What a graph that declares no training reward trains on: whether its episode was kept (1.0 or 0.0)."""


def declared_rewards(declared: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """The run's declared rewards, or `kept` when none of them is a training reward."""
    return declared if any(spec.get("train") for spec in declared) else DEFAULT_DECLARED


def step_training_reward(
    step: Step, index: int, episode: EpisodeRecord | None, declared: Sequence[Mapping[str, Any]]
) -> float | None:
    """The training reward of one choice of a recorded step (see `training_reward`)."""
    rewards = choice_rewards(step, index, episode)
    if episode is not None and episode.kept is not None:
        rewards.setdefault("kept", 1.0 if episode.kept else 0.0)
    return training_reward(rewards, declared_rewards(declared))
