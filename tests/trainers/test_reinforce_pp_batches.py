"""Task-relative REINFORCE++ trains a batch in micro-batches (memory) as one optimizer step over every row:
the update must equal the one a single full-batch forward gives. Real TRL steps on the built-in model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rolegraph.trainers import reinforce_pp
from rolegraph.trainers.reinforce_pp import ReinforcePPSettings, Sample, train_reinforce_pp


def _samples() -> list[Sample]:
    """Five rows (odd: one zero-advantage copy evens the batch), two groups with distinct rewards each."""
    rows = []
    for i, (task, role, reward) in enumerate(
        [("deduction", "solver", 1.0), ("deduction", "solver", 0.0), ("deduction", "solver", 0.0),
         ("abduction", "proposer", 0.7), ("abduction", "proposer", 0.1)]
    ):  # fmt: skip
        prompt = [1, 504 + i, 3000 + 7 * i, 42, 2]
        completion = [300 + 11 * i, 900 + i, 77, 2][: 2 + i % 3]
        rows.append(Sample(task, role, prompt, completion, reward))
    return rows


def _update(model_dir: Path, out: Path) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One update: its loss, its gradient norm and the saved LoRA weights."""
    settings = ReinforcePPSettings(model=model_dir, learning_rate=1e-3, seed=0)
    result = train_reinforce_pp(settings, _samples(), out)
    assert result.metrics["global_step"] == 1.0
    step = next(entry for entry in result.log_history if "grad_norm" in entry)
    return float(step["loss"]), float(step["grad_norm"]), load_file(str(out / "adapter_model.safetensors"))


def test_micro_batches_give_the_full_batch_update(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loss, grad_norm, micro = _update(model_dir, tmp_path / "micro")
    monkeypatch.setattr(reinforce_pp, "MICRO_BATCH", 6)  # the whole (evened) batch in one forward
    whole_loss, whole_grad_norm, whole = _update(model_dir, tmp_path / "whole")
    assert loss == pytest.approx(whole_loss, rel=1e-4) and loss != 0
    assert grad_norm == pytest.approx(whole_grad_norm, rel=1e-4)  # the same gradient, not the first rows'
    # Adam's first step moves each weight by ±lr along its gradient's sign: weights whose gradient is ~0 may
    # round to either sign, every other one must agree.
    for key in (key for key in micro if "lora_B" in key):
        agree = (torch.sign(micro[key]) == torch.sign(whole[key])).float().mean().item()
        assert agree > 0.99, (key, agree)
