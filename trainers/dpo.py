"""Direct preference optimisation (TRL DPOTrainer) on prompt/chosen/rejected rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset

from rolegraph.trainers.base import TrainResult, quiet, scratch_dir, train_lora
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.data import load_export

if TYPE_CHECKING:
    from trl import DPOConfig

from rolegraph.errors import TrainingError


def trl_config(settings: DPOSettings, output_dir: Path) -> DPOConfig:
    """The TRL DPOConfig for these settings."""
    from trl import DPOConfig

    return DPOConfig(
        **settings.common_trl_kwargs(scratch_dir(output_dir)),
        max_length=settings.max_length,
        beta=settings.beta,
        dataset_num_proc=None,
    )


def train_dpo(settings: DPOSettings, data: Dataset | Path | str, output_dir: Path) -> TrainResult:
    """Train a LoRA with DPO on `data`; with PEFT the frozen base model is the reference model."""
    started = time.perf_counter()
    quiet()
    dataset = data if isinstance(data, Dataset) else load_export(data, "dpo")
    if len(dataset) == 0:
        raise TrainingError(
            "the DPO dataset has no pairs", "run self-play on problems that some rollouts pass"
        )
    from trl import DPOTrainer

    return train_lora(DPOTrainer, settings, trl_config(settings, output_dir), dataset, output_dir, started)
