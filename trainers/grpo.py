"""GRPO (TRL GRPOTrainer) on prompt-only rows, rewarded from the store or by a math verifier.

An export row (`rolegraph export --format grpo`) is `{"prompt": [msgs], "input": "<episode input JSON>",
"reward": mean, ...}`. What the reward function uses:
- stored rewards: every (prompt, completion) the store recorded, with its scalar reward, read from the run's
  steps (`StoreReward.from_store`) or from rows that carry `completion` + `reward`;
- a reference answer for the verifier: the row's `answer` column, else `answer` in the episode `input`
  (1.0 when the completion's \\boxed{} answer matches, else 0.0).
Rows sharing a prompt become one training prompt. A generated completion gets its stored reward when the store
saw exactly that text for that prompt; otherwise the verifier's reward when the prompt has an answer;
otherwise 0.
With `reward="verifier"` stored rewards are ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from rolegraph.trainers.base import TrainResult, quiet, scratch_dir, train_lora
from rolegraph.trainers.config import GRPOSettings
from rolegraph.trainers.data import read_rows

if TYPE_CHECKING:
    from trl import GRPOConfig

from rolegraph.errors import TrainingError


def _text(value: Any) -> str:
    """A completion as plain text (conversational completions are a list of messages)."""
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def prompt_key(prompt: Any) -> str:
    """A prompt's identity: its messages' roles and contents (other message keys are ignored)."""
    if isinstance(prompt, list):
        prompt = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def row_answer(row: dict[str, Any]) -> str | None:
    """The reference answer of an export row: its `answer` column, else the episode input's `answer`."""
    if row.get("answer") is not None:
        return str(row["answer"])
    raw = row.get("input")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("answer") is not None:
        return str(data["answer"])
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


class StoreReward:
    """The GRPO reward function: stored reward first, verifier second, 0 last (see the module docstring)."""

    __name__ = "store_reward"

    def __init__(self, rows: list[dict[str, Any]], *, use_stored: bool = True) -> None:
        self.table: dict[tuple[str, str], float] = {}
        if use_stored:
            for row in rows:
                if "completion" in row and row.get("reward") is not None:
                    self.table[(prompt_key(row["prompt"]), _text(row["completion"]))] = float(row["reward"])

    @classmethod
    def from_store(cls, run_dirs: list[Path], rows: list[dict[str, Any]]) -> StoreReward:
        """Stored rewards of every recorded completion in the given runs, plus those in `rows`."""
        from rolegraph.store import Store
        from rolegraph.store.rewards import step_training_reward

        reward = cls(rows)
        for run_dir in run_dirs:
            with Store(run_dir, create=False) as store:
                run = store.run()
                declared = run.rewards if run else []
                episodes = {e.id: e for e in store.episodes()}
                for step in store.steps(kind="role", finished_only=True):
                    key = prompt_key(step.messages)
                    for index, choice in enumerate(step.choices):
                        value = step_training_reward(step, index, episodes.get(step.episode_id), declared)
                        if value is not None:  # None: the infrastructure failed; the verifier decides
                            reward.table[(key, choice.text)] = value
        return reward

    def __call__(
        self, prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **_: Any
    ) -> list[float]:
        from rolegraph.environments.math_verify import verify

        rewards: list[float] = []
        for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            text = _text(completion)
            stored = self.table.get((prompt_key(prompt), text))
            if stored is not None:
                rewards.append(stored)
                continue
            gold = answer[index] if answer else None
            rewards.append(1.0 if gold and verify(extract_boxed(text) or text, str(gold)) else 0.0)
        return rewards


def prompts_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """One row per distinct prompt, with its reference answer (or None)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = seen.setdefault(prompt_key(row["prompt"]), {"prompt": row["prompt"], "answer": None})
        answer = row_answer(row)
        if answer is not None:
            entry["answer"] = answer
    return Dataset.from_list(list(seen.values()))


def trl_config(settings: GRPOSettings, output_dir: Path) -> GRPOConfig:
    from trl import GRPOConfig

    kwargs = settings.common_trl_kwargs(scratch_dir(output_dir))
    # GRPO needs the generation batch to be a multiple of num_generations.
    kwargs["per_device_train_batch_size"] = max(settings.batch_size, settings.num_generations)
    return GRPOConfig(
        **kwargs,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
    )


def train_grpo(
    settings: GRPOSettings,
    data: list[dict[str, Any]] | Path | str,
    output_dir: Path,
    reward_fn: Callable[..., list[float]] | None = None,
    run_dirs: list[Path] | None = None,
) -> TrainResult:
    """Train a LoRA with GRPO on the prompts in `data` (an export path or its rows)."""
    started = time.perf_counter()
    quiet()
    rows = data if isinstance(data, list) else read_rows(data, "grpo")
    if not rows:
        raise TrainingError("the GRPO dataset has no prompts", "export a run with finished episodes")
    dataset = prompts_dataset(rows)
    reward: Any
    if reward_fn is not None:
        reward = reward_fn
    elif settings.reward == "stored":
        reward = StoreReward.from_store(list(run_dirs or []), rows)
    else:
        reward = StoreReward(rows, use_stored=False)
    from trl import GRPOTrainer

    args = trl_config(settings, output_dir)
    return train_lora(
        GRPOTrainer, settings, args, dataset, output_dir, started, padding_side="left", reward_funcs=reward
    )
