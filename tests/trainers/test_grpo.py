"""GRPO end to end: real TRL steps on the built-in model, generating its own completions and scoring them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rolegraph.trainers.config import GRPOSettings
from rolegraph.trainers.grpo import train_grpo


def test_grpo_trains_a_lora_on_its_own_generations(model_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, str | None]] = []

    def parity_reward(prompts: list[Any], completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
        """Rewards differ within a group (odd vs even length), so GRPO has an advantage to learn from."""
        texts = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
        seen.extend(zip(texts, answer, strict=True))
        return [float(len(text) % 2) for text in texts]

    rows = [
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
        for a, b in ((1, 2), (2, 3))
    ]
    settings = GRPOSettings(
        model=model_dir, max_steps=2, batch_size=2, num_generations=2, max_completion_length=8
    )
    result = train_grpo(settings, rows, tmp_path / "grpo", reward_fn=parity_reward)

    assert result.method == "grpo" and result.metrics["global_step"] == 2
    assert result.rows == 2
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == settings.lora.r
    assert len(seen) >= 4, "each step scores num_generations completions per prompt"
    assert {answer for _, answer in seen} <= {"3", "5"}, "the dataset's answer column reaches the reward"
    assert any(text.strip() for text, _ in seen), "the model generated the completions it is scored on"
    assert any("reward" in entry for entry in result.log_history)
