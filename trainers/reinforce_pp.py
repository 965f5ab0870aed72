"""Task-relative REINFORCE++ (Absolute Zero): one advantage per stored completion, normalised per (task type,
role) group, and one policy-gradient update of a LoRA on TRL.

Advantages. The batch holds one completion per prompt (no GRPO groups). Its rewards are split into six groups,
one per task type (deduction, abduction, induction) and role (proposer, solver); within a group

    A = (r - mean(r)) / (std(r) + EPS)        (std: the population standard deviation of the group's rewards)

so a group of one sample, or of equal rewards, gets advantage 0.

How it maps onto TRL: `TaskRelativeTrainer` is a `GRPOTrainer` whose rollouts are the stored completions (the
exact prompt and completion token ids the endpoint sampled) with these advantages, instead of generations
scored by reward functions. Everything else is GRPO's: the per-token policy-gradient loss (with one update per
batch the importance ratio is 1, so the loss is -A·log π per token, normalised like `loss_type`), LoRA through
`peft_config`, the device from the settings. No KL term (beta 0), as in the paper.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.trainers.base import TrainResult, quiet, scratch_dir, train_lora
from rolegraph.trainers.config import TrainSettings

EPS = 1e-6
MICRO_BATCH = 2
"""Rows per forward/backward; GRPOConfig wants the batch a multiple of its num_generations (2)."""


@dataclass(frozen=True)
class Sample:
    """One stored completion with its reward, and the group (task type, role) its baseline comes from."""

    task_type: str
    role: str
    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float

    @property
    def group(self) -> tuple[str, str]:
        return (self.task_type, self.role)


def task_relative_advantages(samples: Sequence[Sample]) -> list[float]:
    """(r - group mean) / (group std + EPS) per sample, with one group per (task type, role)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample.reward)
    stats = {}
    for key, rewards in groups.items():
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        stats[key] = (mean, std)
    return [(s.reward - stats[s.group][0]) / (stats[s.group][1] + EPS) for s in samples]


@dataclass
class ReinforcePPSettings(TrainSettings):
    """Task-relative REINFORCE++: one optimizer step over the whole batch of stored completions per call."""

    max_steps: int = 1
    learning_rate: float = 1e-5
    loss_type: str = "dapo"
    """TRL's token-level normalisation of the policy-gradient loss (see GRPOConfig.loss_type)."""

    @property
    def method(self) -> str:
        return "reinforce_pp"


def _trainer_class() -> Any:
    from trl import GRPOTrainer
    from trl.trainer.utils import pad

    class TaskRelativeTrainer(GRPOTrainer):
        """A GRPOTrainer over stored completions and their precomputed advantages (module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.num_generations = 1  # one completion per prompt; GRPOConfig itself insists on 2

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            # The batch once per accumulation step, in order, as GRPO's RepeatSampler gives it: the trainer
            # draws one batch per micro-step, and GRPO uses the first and serves its micro-batches from it.
            rows = len(dataset if dataset is not None else self.train_dataset)  # type: ignore[arg-type]
            repeats = self.args.steps_per_generation  # type: ignore[attr-defined]
            return [index for _ in range(repeats) for index in range(rows)]

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            device = self.accelerator.device
            pad_id = self._tokenizer.pad_token_id

            def padded(key: str, side: str, *, mask: bool = False) -> Any:
                rows = [torch.tensor([1] * len(x[key]) if mask else x[key]) for x in inputs]
                return pad(rows, padding_value=0 if mask else pad_id, padding_side=side).to(device)

            completion_mask = padded("completion_ids", "right", mask=True)
            return {
                "prompt_ids": padded("prompt_ids", "left"),
                "prompt_mask": padded("prompt_ids", "left", mask=True),
                "completion_ids": padded("completion_ids", "right"),
                "completion_mask": completion_mask,
                "advantages": torch.tensor([float(x["advantage"]) for x in inputs], device=device),
                "num_items_in_batch": completion_mask.sum(),
            }

    return TaskRelativeTrainer


def stored_advantages_only(*_: Any, **__: Any) -> list[float]:
    """GRPOTrainer requires reward functions; this trainer never generates, so it never calls one."""
    raise TrainingError("task-relative REINFORCE++ trains on stored completions only", "report this as a bug")


def dataset_rows(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """One row per sample: its token ids and its task-relative advantage."""
    advantages = task_relative_advantages(samples)
    return [
        {
            "prompt": [
                {"role": "user", "content": ""}
            ],  # GRPOTrainer inspects it; the ids are what is trained
            "prompt_ids": list(s.prompt_ids),
            "completion_ids": list(s.completion_ids),
            "advantage": advantage,
            "group": f"{s.task_type}/{s.role}",
        }
        for s, advantage in zip(samples, advantages, strict=True)
    ]


def trl_config(settings: ReinforcePPSettings, output_dir: Path, rows: int) -> Any:
    """The whole batch (`rows`, even) is one generation batch and one optimizer step, accumulated over
    micro-batches of MICRO_BATCH rows: a forward and backward over every row at once (prompts of a thousand
    tokens and more) took 18 GB on the built-in model."""
    from trl import GRPOConfig

    kwargs = settings.common_trl_kwargs(scratch_dir(output_dir))
    kwargs["per_device_train_batch_size"] = MICRO_BATCH
    kwargs["gradient_accumulation_steps"] = rows // MICRO_BATCH
    return GRPOConfig(**kwargs, num_generations=2, beta=0.0, loss_type=settings.loss_type)


def train_reinforce_pp(
    settings: ReinforcePPSettings,
    samples: Sequence[Sample],
    output_dir: Path,
    *,
    init_adapter: Path | None = None,
) -> TrainResult:
    """One task-relative REINFORCE++ update of a LoRA (fresh, or continuing `init_adapter`) on `samples`."""
    started = time.perf_counter()
    if not samples:
        raise TrainingError("no rewarded completions to train on", "run more episodes (a larger --batch)")
    quiet()
    from datasets import Dataset

    rows = dataset_rows(samples)
    if len(rows) % MICRO_BATCH:  # a copy with advantage 0 evens the batch: it adds no gradient
        rows.append({**rows[-1], "advantage": 0.0})
    args = trl_config(settings, output_dir, len(rows))
    return train_lora(
        _trainer_class(),
        settings,
        args,
        Dataset.from_list(rows),
        output_dir,
        started,
        padding_side="left",
        init_adapter=init_adapter,
        reward_funcs=stored_advantages_only,
    )
