"""Distillation: SFT a student role on a teacher role's verified traces from a run's store.

A trace is verified when its training reward (rolegraph/store/rewards.py: the run's declared `train`
rewards, step rewards over the episode's) is positive. A trace whose reward is None (the infrastructure could
not compute it) is left out and counted, never taken as a failure or a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.store import Store
from rolegraph.store.rewards import choice_rewards, training_reward
from rolegraph.trainers.base import TrainResult
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion
from rolegraph.trainers.sft import train_sft


@dataclass
class TeacherTraces:
    """SFT rows of a teacher's verified completions, and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    unverified: int = 0
    """Completions whose training reward is None (infrastructure failure): excluded."""
    rejected: int = 0
    """Completions with a reward ≤ 0, no training reward at all, or no parse."""


def verified_traces(run_dir: Path, teacher_role: str) -> TeacherTraces:
    """The teacher's parsed completions in finished episodes whose training reward is positive."""
    traces = TeacherTraces()
    with Store(run_dir, create=False) as store:
        run = store.run()
        declared = run.rewards if run is not None else []
        train_names = [spec["name"] for spec in declared if spec.get("train")]
        episodes = {e.id: e for e in store.episodes()}
        for step in store.steps(role=teacher_role, kind="role", finished_only=True):
            if step.error:
                continue
            prompt = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in step.messages]
            for index, choice in enumerate(step.choices):
                rewards = choice_rewards(step, index, episodes.get(step.episode_id))
                reward = training_reward(rewards, declared)
                if any(name in rewards and rewards[name] is None for name in train_names):
                    traces.unverified += 1
                elif (
                    reward is None or reward <= 0 or choice.parse_error is not None or not choice.text.strip()
                ):
                    traces.rejected += 1
                else:
                    traces.rows.append(
                        {"prompt": prompt, "completion": [{"role": "assistant", "content": choice.text}]}
                    )
    return traces


def distill(
    run_dir: Path,
    settings: SFTSettings,
    *,
    teacher_role: str,
    student_role: str,
    registry: AdapterRegistry | None = None,
) -> tuple[TrainResult, AdapterVersion]:
    """Train the student's adapter on verified teacher traces, publish it and record the run in the store
    (with `teacher_rows` and `unverified`, the traces left out because their reward is None)."""
    from datasets import Dataset

    from rolegraph.trainers.recording import record_training

    traces = verified_traces(run_dir, teacher_role)
    if not traces.rows:
        raise TrainingError(
            f"{run_dir} has no verified completions of role '{teacher_role}' "
            f"({traces.unverified} unverified, {traces.rejected} not positive)",
            "pick the role that solved problems (--teacher-role) or a run whose episodes were verified",
        )
    registry = registry or AdapterRegistry()
    result = train_sft(settings, Dataset.from_list(traces.rows), registry.staging(student_role))
    adapter = registry.publish(student_role, result.adapter_dir)
    record_training(
        run_dir,
        result,
        inputs=[str(run_dir)],
        adapter=adapter,
        extra_metrics={"teacher_rows": float(len(traces.rows)), "unverified": float(traces.unverified)},
    )
    return result, adapter
