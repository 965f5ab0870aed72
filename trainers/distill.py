"""Distillation: SFT a student role on a teacher role's verified traces from a run's store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.store import Store
from rolegraph.store.export import choice_reward, scalar_reward
from rolegraph.trainers.base import TrainResult
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion
from rolegraph.trainers.sft import train_sft


def verified_rows(run_dir: Path, teacher_role: str) -> list[dict[str, Any]]:
    """SFT rows of the teacher's parsed completions whose reward (step, else episode outcome) is positive."""
    rows = []
    with Store(run_dir, create=False) as store:
        episodes = {e.id: e for e in store.episodes()}
        for step in store.steps(role=teacher_role, kind="role", finished_only=True):
            if step.error:
                continue
            for index, choice in enumerate(step.choices):
                if choice.parse_error is not None or not choice.text.strip():
                    continue
                rewards = choice_reward(step, index, episodes.get(step.episode_id))
                if rewards and scalar_reward(rewards) > 0:
                    prompt = [
                        {"role": str(m.get("role")), "content": str(m.get("content"))} for m in step.messages
                    ]
                    rows.append(
                        {"prompt": prompt, "completion": [{"role": "assistant", "content": choice.text}]}
                    )
    return rows


def distill(
    run_dir: Path,
    settings: SFTSettings,
    *,
    teacher_role: str,
    student_role: str,
    registry: AdapterRegistry | None = None,
) -> tuple[TrainResult, AdapterVersion]:
    """Train the student's adapter on verified teacher traces, publish it and record the run in the store."""
    from datasets import Dataset

    from rolegraph.trainers.recording import record_training

    rows = verified_rows(run_dir, teacher_role)
    if not rows:
        raise TrainingError(
            f"{run_dir} has no verified completions of role '{teacher_role}'",
            "pick the role that solved problems (--teacher-role) or a run whose episodes were verified",
        )
    registry = registry or AdapterRegistry()
    result = train_sft(settings, Dataset.from_list(rows), registry.staging(student_role))
    adapter = registry.publish(student_role, result.adapter_dir)
    record_training(
        run_dir,
        result,
        inputs=[str(run_dir)],
        adapter=adapter,
        extra_metrics={"teacher_rows": float(len(rows))},
    )
    return result, adapter
