"""What every trainer shares: loading the base model quietly, running TRL, saving the adapter atomically."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.trainers.config import TrainSettings


@dataclass(frozen=True)
class TrainResult:
    """A finished training run: where its adapter is, what it measured, and how it was configured."""

    method: str
    adapter_dir: Path
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    rows: int
    wall_s: float
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return float(self.metrics.get("train_steps_per_second", 0.0))


def quiet() -> None:
    """Silence library chatter (TRL keeps its progress bar); warnings do not help a user of the CLI."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("trl", "peft", "accelerate", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def load_base(settings: TrainSettings) -> tuple[Any, Any]:
    """The base model (float32 on CPU) and its tokenizer, or a TrainingError naming the missing model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(str(settings.model))
    if not str(settings.model) or not (path / "config.json").is_file():
        raise TrainingError(
            f"base model directory '{settings.model}' not found",
            "run `rolegraph models prepare` or pass --model DIR (a Hugging Face model directory)",
        )
    dtype = torch.bfloat16 if (settings.device == "gpu" and settings.bf16) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def train_lora(
    trainer_cls: Any,
    settings: TrainSettings,
    args: Any,
    dataset: Any,
    output_dir: Path,
    started: float,
    *,
    padding_side: str | None = None,
    init_adapter: Path | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Build a TRL trainer (SFT, DPO, GRPO) for a LoRA on the base model, train it and save the adapter.

    With `init_adapter` (a saved LoRA of the same base) training continues from that adapter instead of a
    fresh LoRA; the result's hyper-parameters record it.
    """
    from rolegraph.trainers.lora import lora_config

    if init_adapter is not None:
        check_adapter_dir(Path(init_adapter))  # before the slow model load
    model, tokenizer = load_base(settings)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if init_adapter is None:
        trainer_kwargs["peft_config"] = lora_config(settings.lora)
    else:
        model = load_adapter(model, Path(init_adapter))
    trainer = trainer_cls(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **trainer_kwargs
    )
    result = run_trainer(trainer, settings, output_dir, len(dataset), started)
    hyperparameters = {
        **result.hyperparameters,
        "init_adapter": None if init_adapter is None else str(init_adapter),
    }
    return dataclasses.replace(result, hyperparameters=hyperparameters)


def check_adapter_dir(adapter_dir: Path) -> None:
    """A TrainingError naming `adapter_dir` unless it holds a saved LoRA adapter."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TrainingError(
            f"adapter directory '{adapter_dir}' holds no adapter (no adapter_config.json)",
            "pass the directory of a published adapter (rolegraph adapters list)",
        )


def load_adapter(model: Any, adapter_dir: Path) -> Any:
    """`model` with the trainable LoRA saved in `adapter_dir` on top."""
    from peft import PeftModel

    check_adapter_dir(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def run_trainer(
    trainer: Any, settings: TrainSettings, output_dir: Path, rows: int, started: float
) -> TrainResult:
    """Train, then save only the LoRA adapter into `output_dir` through a temp dir and a rename."""
    output = trainer.train()
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    tmp.rename(output_dir)
    metrics = {k: float(v) for k, v in (output.metrics or {}).items() if isinstance(v, int | float)}
    metrics["global_step"] = float(output.global_step)
    history = [dict(entry) for entry in trainer.state.log_history]
    return TrainResult(
        method=settings.method,
        adapter_dir=output_dir,
        metrics=metrics,
        hyperparameters=settings.hyperparameters(),
        rows=rows,
        wall_s=time.perf_counter() - started,
        log_history=history,
    )


def scratch_dir(output_dir: Path) -> Path:
    """Where TRL may write checkpoints and logs (never the adapter dir itself)."""
    path = Path(output_dir).with_name(f".{Path(output_dir).name}.trl")
    path.mkdir(parents=True, exist_ok=True)
    return path
