"""`--device`, the config's `train` section and `--from-scratch` reach the trainers' settings.

Nothing trains here: the trainer entry points are replaced by recorders, and `torch.cuda.is_available` is
forced True so `--device gpu` passes its check on a CPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rolegraph.errors import TrainingError
from rolegraph.store import STORE_FILE
from tests.cli.conftest import Cli

STOP = "recorded the settings; stopping before training"


@pytest.fixture(autouse=True)
def gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Settings handed to a trainer or a loop; the command stops right after (no pool, no training)."""
    from rolegraph.cli import train_cmd
    from rolegraph.trainers import distill, em, loop, selfplay

    seen: list[Any] = []

    def stop_training(method: str, settings: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(settings)
        raise TrainingError(STOP, "none")

    def stop_distilling(run_dir: Path, settings: Any, **kwargs: Any) -> Any:
        seen.append(settings)
        raise TrainingError(STOP, "none")

    def recording(cls: type) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            seen.append(cls(*args, **kwargs))
            return seen[-1]

        return build

    monkeypatch.setattr(loop, "train_rows", stop_training)
    monkeypatch.setattr(distill, "distill", stop_distilling)
    for module, name in ((em, "EMSettings"), (selfplay, "SelfPlaySettings"), (loop, "LoopSettings")):
        monkeypatch.setattr(module, name, recording(getattr(module, name)))
    monkeypatch.setattr(train_cmd, "_with_pool", lambda cfg, body, roles=(): loop.LoopReport())
    return seen


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(tmp_path: Path, train: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"train: {train}\n")
    return path


@pytest.mark.parametrize(
    ("method", "row"),
    [
        ("sft", {"prompt": "1+1?", "completion": "2"}),
        ("dpo", {"prompt": "1+1?", "chosen": "2", "rejected": "3"}),
        ("grpo", {"prompt": "1+1?", "answer": "2"}),
    ],
)
def test_device_reaches_every_file_trainer(
    cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path, method: str, row: dict[str, Any]
) -> None:
    data = _jsonl(tmp_path / f"{method}.jsonl", [row])
    base = ["train", method, "--data", data, "--model", model_dir]
    cli(*base, "--device", "gpu").one_line_error(STOP)
    cli(*base).one_line_error(STOP)
    assert [(s.method, s.device, s.bf16) for s in recorded] == [
        (method, "gpu", False),
        (method, "cpu", False),
    ]
    assert recorded[0].common_trl_kwargs(tmp_path)["use_cpu"] is False


def test_the_config_train_section_is_the_default_and_device_overrides_it(
    cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path
) -> None:
    data = _jsonl(tmp_path / "dpo.jsonl", [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}])
    config = _config(tmp_path, "{device: gpu, bf16: true}")
    base = ["train", "dpo", "--data", data, "--model", model_dir, "--config", config]
    cli(*base).one_line_error(STOP)
    cli(*base, "--device", "cpu").one_line_error(STOP)
    assert [(s.device, s.bf16) for s in recorded] == [("gpu", True), ("cpu", True)]
    on_gpu, on_cpu = (s.common_trl_kwargs(tmp_path) for s in recorded)
    assert on_gpu["bf16"] and not on_gpu["use_cpu"]
    assert not on_cpu["bf16"] and on_cpu["use_cpu"]  # bf16 is only honoured on a GPU


def test_distillation_gets_the_device(cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / STORE_FILE).touch()
    cli("train", "sft", "--from", tmp_path, "--model", model_dir, "--device", "gpu").one_line_error(STOP)
    assert [(s.method, s.device) for s in recorded] == [("sft", "gpu")]


def test_em_gets_the_device_and_from_scratch(
    cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path
) -> None:
    seeds = _jsonl(tmp_path / "seeds.jsonl", [{"problem": "1+1", "answer": "2"}])
    base = ["train", "em", "--seeds", seeds, "--model", model_dir, "--run-dir", tmp_path / "em"]
    assert cli(*base, "--device", "gpu", "--from-scratch").code == 0
    assert cli(*base, "--config", _config(tmp_path, "{device: gpu, bf16: true}")).code == 0
    scratch, warm = recorded
    assert (scratch.sft.device, scratch.sft.bf16, scratch.from_scratch) == ("gpu", False, True)
    assert (warm.sft.device, warm.sft.bf16, warm.from_scratch) == ("gpu", True, False)


def test_selfplay_gets_the_device(cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path) -> None:
    problems = _jsonl(tmp_path / "p.jsonl", [{"problem": "1+1", "answer": "2"}])
    base = ["train", "selfplay", "--problems", problems, "--model", model_dir, "--run-dir", tmp_path / "sp"]
    assert cli(*base, "--device", "gpu").code == 0
    assert cli(*base).code == 0
    assert [(s.dpo.method, s.dpo.device) for s in recorded] == [("dpo", "gpu"), ("dpo", "cpu")]


def test_loop_gets_the_device_and_checked_options(
    cli: Cli, recorded: list[Any], tmp_path: Path, model_dir: Path
) -> None:
    base = ["loop", "promptcot", "--model", model_dir, "--run-dir", tmp_path / "loop", "--trainer", "dpo"]
    assert cli(*base, "--device", "gpu", "--set", "k=3", "--set", "difficulty=easy").code == 0
    assert cli(*base, "--config", _config(tmp_path, "{device: gpu}"), "--device", "cpu").code == 0
    first, second = recorded
    assert (first.settings.method, first.settings.device, second.settings.device) == ("dpo", "gpu", "cpu")
    assert first.options == {"k": 3, "difficulty": "easy"}
