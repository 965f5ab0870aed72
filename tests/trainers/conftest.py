"""Fixtures for trainer tests: a session-wide adapters dir (versions keep increasing) and tiny settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.registry import AdapterRegistry

DISTINCT = "ZEBRA OCTOPUS ZEBRA OCTOPUS"
MARK = "ZEBRA OCTOPUS"
"""A target no base model says unprompted: greedy output containing it proves the adapter is in use."""


@pytest.fixture(scope="session")
def adapter_registry(tmp_path_factory: pytest.TempPathFactory) -> AdapterRegistry:
    return AdapterRegistry(tmp_path_factory.mktemp("adapters"))


def distinct_rows(n: int = 4) -> list[dict[str, object]]:
    """SFT rows teaching the model to answer a greeting with DISTINCT."""
    prompt = [{"role": "user", "content": "Say hello."}]
    return [{"prompt": prompt, "completion": [{"role": "assistant", "content": DISTINCT}]} for _ in range(n)]


@pytest.fixture(scope="session")
def distinct_adapter(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA trained for a few high-learning-rate steps on DISTINCT (shared by the hand-off tests)."""
    from datasets import Dataset

    from rolegraph.trainers.sft import train_sft

    settings = SFTSettings(model=model_dir, max_steps=4, learning_rate=2e-2, batch_size=4)
    out = tmp_path_factory.mktemp("trained") / "distinct"
    result = train_sft(settings, Dataset.from_list(distinct_rows()), out)
    assert result.metrics["global_step"] == 4
    return result.adapter_dir
