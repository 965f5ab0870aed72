"""Supervised fine-tuning (TRL SFTTrainer) on conversational prompt/completion rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset

from rolegraph.trainers.base import TrainResult, quiet, scratch_dir, train_lora
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.data import load_export, to_dataset

if TYPE_CHECKING:
    from trl import SFTConfig

from rolegraph.errors import TrainingError


def trl_config(settings: SFTSettings, output_dir: Path) -> SFTConfig:
    """The TRL SFTConfig for these settings."""
    from trl import SFTConfig

    return SFTConfig(
        **settings.common_trl_kwargs(scratch_dir(output_dir)),
        max_length=settings.max_length,
        completion_only_loss=settings.completion_only_loss,
        packing=False,
        dataset_num_proc=None,
    )


def train_sft(
    settings: SFTSettings,
    data: Dataset | Path | str,
    output_dir: Path,
    *,
    init_adapter: Path | None = None,
) -> TrainResult:
    """Fine-tune a LoRA on `data` (an export path or a prepared Dataset) and save it in `output_dir`;
    with `init_adapter`, continue training that adapter instead of a fresh LoRA."""
    started = time.perf_counter()
    quiet()
    dataset = data if isinstance(data, Dataset) else load_export(data, "sft")
    if len(dataset) == 0:
        raise TrainingError("the SFT dataset has no rows", "export a run with finished, verified episodes")
    from trl import SFTTrainer

    return train_lora(
        SFTTrainer,
        settings,
        trl_config(settings, output_dir),
        dataset,
        output_dir,
        started,
        init_adapter=init_adapter,
    )


__all__ = ["to_dataset", "train_sft", "trl_config"]
