"""LoRA via PEFT: the default adapter every trainer produces."""

from __future__ import annotations

from peft import LoraConfig

from rolegraph.trainers.config import LoraSettings


def lora_config(settings: LoraSettings) -> LoraConfig:
    """A causal-LM LoRA config; vLLM loads the saved adapter if `r` ≤ the server's `--max-lora-rank`."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
