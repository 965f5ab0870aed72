"""GRPO on TIR episodes: TRL's GRPOTrainer with a `rollout_func` that runs the `cort` graph.

Each training step's prompts (problems, each repeated `num_generations` times by TRL) become one cort graph
run in `run_dir/rollouts/step-N` (resumable, every call recorded). The rollout returns each episode's exact
ids: the prompt's, the trajectory's (model tokens, interpreter output, hints), and `env_mask`, which TRL
multiplies into its loss mask, so interpreter output and hints are masked out of the loss. The reward is the
graph's training reward: 1 for a correct answer, 0 otherwise, −0.1 when every cell failed or no code was
written (None when it could not be checked: TRL leaves it out).

Rollouts are sampled by the role's served model (its binding: the base model or the last handed-off adapter),
as in TRL's server mode without weight sync; on CPU a run is a step or two, after which the adapter is
handed off like every trainer's.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.cort.samples import TIRSample, read_samples
from rolegraph.graphs.selfplay.problems import Problem, load_problems
from rolegraph.trainers.base import TrainResult, quiet, train_lora
from rolegraph.trainers.config import GRPOSettings
from rolegraph.trainers.handoff import HandOffReport, hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

ROLLOUTS_DIR = "rollouts"


@dataclass
class TIRGRPOSettings:
    problems: Path
    run_dir: Path
    model_dir: Path
    role: str = "cort_solver"
    max_problems: int = 2
    max_calls: int = 12
    max_tokens: int = 256
    segment_tokens: int = 256
    temperature: float = 1.0
    seed: int | None = None
    sandbox: str = "auto"
    concurrency: int = 4
    hand_off: bool = True
    keep: int = 2
    grpo: GRPOSettings = field(default_factory=GRPOSettings)

    def graph_options(self, problems: Path, samples: int) -> dict[str, Any]:
        return {
            "problems": str(problems),
            "modes": ["tir"],
            "samples": samples,
            "role": self.role,
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "segment_tokens": self.segment_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }


@dataclass
class TIRGRPOReport:
    adapter: str | None
    rollouts: int
    mean_reward: float | None
    result: TrainResult | None = None
    handoff: HandOffReport | None = None


def tir_reward(prompts: list[Any], completions: list[Any], tir_reward: list[float | None], **_: Any) -> list:
    """The graph's training reward of each rollout, passed through from `rollout_func`."""
    return list(tir_reward)


class TIRRollouts:
    """TRL's `rollout_func`: one cort graph run per step, on the event loop that owns the endpoint pool."""

    def __init__(
        self, pool: Any, settings: TIRGRPOSettings, problems: list[Problem], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.by_prompt = {p.problem: p for p in problems}
        self.loop = loop
        self.step = 0
        self.samples: list[TIRSample] = []

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        from rolegraph.graphs.cort import SessionProvider, cort_graph
        from rolegraph.graphs.runtime import run_graph

        counts: dict[str, int] = {}
        for prompt in prompts:
            counts[prompt] = counts.get(prompt, 0) + 1
        samples = max(counts.values())
        run_dir = self.settings.run_dir / ROLLOUTS_DIR / f"step-{self.step}"
        self.step += 1
        run_dir.mkdir(parents=True, exist_ok=True)
        problems_file = run_dir / "problems.jsonl"
        problems_file.write_text(
            "".join(
                json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                for p in (self.by_prompt[text] for text in counts)
            )
        )

        async def rollout() -> None:
            async with SessionProvider(self.settings.sandbox) as sessions:
                await run_graph(
                    cort_graph(sessions),
                    self.pool,
                    RunParams(n=len(counts), options=self.settings.graph_options(problems_file, samples)),
                    run_dir,
                    concurrency=self.settings.concurrency,
                    progress=False,
                )

        asyncio.run_coroutine_threadsafe(rollout(), self.loop).result()
        done = {(s.problem_id, s.sample): s for s in read_samples(run_dir)}
        eos = trainer.processing_class.eos_token_id
        seen: dict[str, int] = {}
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "env_mask": [], "tir_reward": []}
        for prompt in prompts:
            index = seen.get(prompt, 0)
            seen[prompt] = index + 1
            sample = done.get((self.by_prompt[prompt].id, index))
            if sample is None or not sample.ids:  # the episode failed: no ids, no reward (left out)
                out["prompt_ids"].append(sample.prompt_ids if sample and sample.prompt_ids else [eos])
                out["completion_ids"].append([eos])
                out["env_mask"].append([0])
                out["tir_reward"].append(None)
                continue
            self.samples.append(sample)
            out["prompt_ids"].append(sample.prompt_ids)
            out["completion_ids"].append(sample.ids)
            out["env_mask"].append(sample.mask)
            out["tir_reward"].append(sample.reward)
        return {**out, "logprobs": None}


def prompts_dataset(problems: list[Problem]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.problem} for p in problems])


def train_tir_grpo(
    settings: GRPOSettings, rollouts: TIRRollouts, dataset: Any, output_dir: Path
) -> TrainResult:
    """Train a LoRA with GRPO whose rollouts are TIR episodes (see the module docstring)."""
    from trl import GRPOTrainer

    from rolegraph.trainers.grpo import trl_config

    started = time.perf_counter()
    quiet()
    return train_lora(
        GRPOTrainer,
        settings,
        trl_config(settings, output_dir),
        dataset,
        output_dir,
        started,
        padding_side="left",
        reward_funcs=[tir_reward],
        rollout_func=rollouts,
    )


class TIRGRPO:
    """GRPO on TIR episodes, then publish and hand off the adapter."""

    def __init__(self, pool: Any, settings: TIRGRPOSettings, registry: AdapterRegistry | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()

    async def run(self) -> TIRGRPOReport:
        settings = self.settings
        problems = [
            p for p in load_problems(settings.problems, settings.max_problems) if p.answer is not None
        ]
        if not problems:
            raise TrainingError(
                f"{settings.problems} has no math problem with an answer",
                "give each line a 'problem' and an 'answer'",
            )
        grpo = settings.grpo
        grpo.model = settings.model_dir
        rollouts = TIRRollouts(self.pool, settings, problems, asyncio.get_running_loop())
        staging = self.registry.staging(settings.role)
        result = await asyncio.to_thread(train_tir_grpo, grpo, rollouts, prompts_dataset(problems), staging)
        adapter = self.registry.publish(settings.role, result.adapter_dir)
        handoff = (
            await hand_off(self.pool, settings.role, adapter, keep=settings.keep)
            if settings.hand_off
            else None
        )
        rewards = [s.reward for s in rollouts.samples if s.reward is not None]
        mean = sum(rewards) / len(rewards) if rewards else None
        record_training(
            settings.run_dir,
            result,
            inputs=[str(settings.problems)],
            adapter=adapter,
            extra_metrics={"rollouts": float(len(rollouts.samples))}
            | ({} if mean is None else {"mean_tir_reward": mean}),
        )
        return TIRGRPOReport(adapter.lora_name, len(rollouts.samples), mean, result, handoff)
