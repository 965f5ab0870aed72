"""The mask reaches the loss: changing only interpreter tokens leaves the SFT loss and gradients unchanged.

A causal model's later predictions see interpreter output as context (as they must: the model reads it), so
the interpreter tokens changed here are the trajectory's last ones (an episode that ended on a cell's output);
the labels test checks every masked position, wherever it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rolegraph.graphs.cort.samples import TIRSample
from rolegraph.trainers.base import load_base
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.cort_rft import masked_dataset
from rolegraph.trainers.lora import lora_config
from rolegraph.trainers.sft import trl_config

PROMPT = [1, 504, 3060, 28, 1790, 314, 216, 34, 1004, 216, 35, 47, 2]
MODEL = [1350, 253, 2840, 1130, 28, 216, 34, 1004, 216, 35, 446, 216, 41]
INTERPRETER = [46, 46, 46, 3104, 198, 41, 198, 46, 46, 46]
OTHER_INTERPRETER = [46, 46, 46, 3104, 198, 1789, 1790, 1791, 198, 46]


def sample(interpreter: list[int], mask_interpreter: bool = True) -> TIRSample:
    mask = [1] * len(MODEL) + [0 if mask_interpreter else 1] * len(interpreter)
    return TIRSample("e", "p", "tir", 0, PROMPT, [*MODEL, *interpreter], mask, True, 1.0)


VARIANTS = [
    sample(INTERPRETER),
    sample(OTHER_INTERPRETER),
    sample(INTERPRETER, mask_interpreter=False),
    sample(OTHER_INTERPRETER, mask_interpreter=False),
]


def loss_and_grads(trainer: Any, row: int, grads: bool = True) -> tuple[float, dict[str, torch.Tensor]]:
    """The training loss of one prepared row (TRL's own collator and compute_loss) and its LoRA gradients."""
    batch = trainer.data_collator([trainer.train_dataset[row]])
    model = trainer.model
    model.zero_grad()
    batch = {k: v.to(model.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not grads:
        with torch.no_grad():
            return float(trainer.compute_loss(model, batch)), {}
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    found = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), found


@pytest.fixture(scope="module")
def trainer(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from trl import SFTTrainer

    settings = SFTSettings(model=model_dir, max_steps=1)
    model, tokenizer = load_base(settings)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rft") / "adapter"
    return SFTTrainer(
        model=model,
        args=trl_config(settings, out),
        train_dataset=masked_dataset(VARIANTS),
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora),
    )


def test_masked_positions_get_no_label(trainer: Any) -> None:
    row = trainer.train_dataset[0]
    expected = [-100] * len(PROMPT) + MODEL + [-100] * len(INTERPRETER)
    assert row["labels"] == expected


def test_changing_interpreter_tokens_leaves_loss_and_gradients_unchanged(trainer: Any) -> None:
    loss_a, grads_a = loss_and_grads(trainer, 0)
    loss_b, grads_b = loss_and_grads(trainer, 1)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert any(g.abs().sum() > 0 for g in grads_a.values())
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-7), name
    # Without the mask the same change does move the loss: the test above can fail.
    unmasked_a, _ = loss_and_grads(trainer, 2, grads=False)
    unmasked_b, _ = loss_and_grads(trainer, 3, grads=False)
    assert abs(unmasked_a - unmasked_b) > 1e-3
