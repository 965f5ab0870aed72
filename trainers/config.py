"""One config dataclass per trainer. CPU is the default; GPU is a change of `device` (and `bf16`) only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rolegraph.errors import ConfigError

Device = Literal["cpu", "gpu"]


def check_device(device: Device) -> None:
    """A ConfigError when training should run on a GPU torch cannot see (TRL would quietly use the CPU)."""
    if device != "gpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "the training device is gpu, but torch sees no CUDA GPU",
            "train with --device cpu (or `train: {device: cpu}` in the config), or install the GPU build: "
            "pip install -e '.[gpu]'",
        )


@dataclass
class LoraSettings:
    """PEFT LoRA settings. r=8 on q_proj/v_proj fits vLLM's `--max-lora-rank 16`."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainSettings:
    """Settings every trainer shares. `max_steps` bounds the run; tiny defaults suit CPU."""

    model: str | Path = ""
    """Base model: a Hugging Face directory (the built-in model's dir by default, filled by the caller)."""
    max_steps: int = 2
    learning_rate: float = 1e-4
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    device: Device = "cpu"
    bf16: bool = False
    """Only honoured on GPU; CPU training runs in float32."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False
    """Off by default: with LoRA on a small model it costs speed and saves little."""
    logging_steps: int = 1

    def hyperparameters(self) -> dict[str, Any]:
        """A JSON-ready record of the settings, for the store."""
        data = asdict(self)
        data["model"] = str(self.model)
        data["method"] = self.method
        return data

    @property
    def method(self) -> str:
        return "base"

    def common_trl_kwargs(self, output_dir: Path) -> dict[str, Any]:
        """TrainingArguments shared by SFTConfig, DPOConfig and GRPOConfig."""
        on_gpu = self.device == "gpu"
        return {
            "output_dir": str(output_dir),
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "seed": self.seed,
            "use_cpu": not on_gpu,
            "bf16": bool(self.bf16 and on_gpu),
            "gradient_checkpointing": self.gradient_checkpointing,
            "logging_steps": self.logging_steps,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": False,
            "dataloader_num_workers": 0,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
        }


@dataclass
class SFTSettings(TrainSettings):
    """Supervised fine-tuning on prompt/completion rows; loss masked to the completion by default."""

    completion_only_loss: bool = True

    @property
    def method(self) -> str:
        return "sft"


@dataclass
class DPOSettings(TrainSettings):
    """Direct preference optimisation on prompt/chosen/rejected rows."""

    beta: float = 0.1
    learning_rate: float = 5e-5

    @property
    def method(self) -> str:
        return "dpo"


@dataclass
class GRPOSettings(TrainSettings):
    """GRPO on prompt-only rows. Rewards come from the store (`stored`) or a math verifier (`verifier`)."""

    num_generations: int = 2
    max_completion_length: int = 32
    temperature: float = 1.0
    beta: float = 0.0
    reward: Literal["stored", "verifier"] = "stored"
    """`stored`: look up the reward the store recorded for (prompt, completion), falling back to the
    verifier on the row's `answer` for completions the store never saw; `verifier`: always verify."""

    @property
    def method(self) -> str:
        return "grpo"
