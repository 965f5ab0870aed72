"""CoRT rejection fine-tuning: sample N TIR trajectories per problem, keep the correct ones that show neither
flagged behaviour, and fine-tune on their exact token ids with interpreter tokens masked out of the loss.

Sampling is a run of the `cort` graph (graphs/cort/) in `run_dir`, resumable like every graph run, with hints
off so detectors only flag. The SFT rows are pre-tokenized: `input_ids` = the prompt's ids + the trajectory's
ids, `completion_mask` = 0 over the prompt + the trajectory's mask (1 model token, 0 interpreter output or
hint), so TRL's SFTTrainer turns every masked position's label into -100. Nothing is re-tokenized.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.cort.samples import TIRSample, read_samples
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.handoff import HandOffReport, hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry


@dataclass
class RFTSettings:
    problems: Path
    """A JSONL of problems with answers (`problem`, `answer`)."""
    run_dir: Path
    model_dir: Path
    role: str = "cort_solver"
    max_problems: int = 2
    samples: int = 4
    """Trajectories sampled per problem (CoRT's N)."""
    max_calls: int = 12
    max_tokens: int = 512
    segment_tokens: int = 256
    temperature: float = 1.0
    seed: int | None = None
    sandbox: str = "auto"
    concurrency: int = 4
    hand_off: bool = True
    keep: int = 2
    sft: SFTSettings = field(default_factory=SFTSettings)

    def graph_options(self) -> dict[str, Any]:
        return {
            "problems": str(self.problems),
            "modes": ["tir"],
            "samples": self.samples,
            "role": self.role,
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "segment_tokens": self.segment_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "insert_hints": False,
        }


@dataclass(frozen=True)
class RFTSelection:
    """What the filter kept and why the rest was dropped."""

    kept: list[TIRSample]
    sampled: int
    wrong: int
    unchecked: int
    flagged: dict[str, int]


@dataclass
class RFTReport:
    selection: RFTSelection
    adapter: str | None
    train_loss: float | None = None
    handoff: HandOffReport | None = None


def select(samples: list[TIRSample]) -> RFTSelection:
    """Correct TIR trajectories where no detector fired."""
    tir = [s for s in samples if s.mode == "tir" and s.ids]
    flagged: dict[str, int] = {}
    kept = []
    for s in tir:
        if not s.correct:
            continue
        for name, count in s.flags.items():
            if count:
                flagged[name] = flagged.get(name, 0) + 1
        if not s.flagged:
            kept.append(s)
    return RFTSelection(
        kept=kept,
        sampled=len(tir),
        wrong=sum(s.correct is False for s in tir),
        unchecked=sum(s.correct is None for s in tir),
        flagged=flagged,
    )


def masked_rows(samples: list[TIRSample]) -> list[dict[str, list[int]]]:
    """Pre-tokenized SFT rows: the loss covers exactly the model's own tokens."""
    return [
        {
            "input_ids": [*s.prompt_ids, *s.ids],
            "completion_mask": [0] * len(s.prompt_ids) + list(s.mask),
        }
        for s in samples
    ]


def masked_dataset(samples: list[TIRSample]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(masked_rows(samples))


class RFT:
    """One RFT round: sample (a cort graph run), select, SFT with the mask, publish, hand off."""

    def __init__(self, pool: Any, settings: RFTSettings, registry: AdapterRegistry | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()

    async def sample(self) -> list[TIRSample]:
        from rolegraph.graphs.cort import SessionProvider, cort_graph
        from rolegraph.graphs.runtime import run_graph

        settings = self.settings
        async with SessionProvider(settings.sandbox) as sessions:
            await run_graph(
                cort_graph(sessions),
                self.pool,
                RunParams(n=settings.max_problems, options=settings.graph_options()),
                settings.run_dir,
                concurrency=settings.concurrency,
            )
        return read_samples(settings.run_dir)

    async def run(self) -> RFTReport:
        from rolegraph.trainers.sft import train_sft

        settings = self.settings
        selection = select(await self.sample())
        if not selection.kept:
            return RFTReport(selection, None)
        sft = settings.sft
        sft.model = settings.model_dir
        if not sft.completion_only_loss:
            raise TrainingError(
                "RFT needs completion_only_loss: without it interpreter tokens would be trained on",
                "leave SFTSettings.completion_only_loss at True",
            )
        dataset = masked_dataset(selection.kept)
        staging = self.registry.staging(settings.role)
        result = await asyncio.to_thread(train_sft, sft, dataset, staging)
        adapter = self.registry.publish(settings.role, result.adapter_dir)
        handoff = (
            await hand_off(self.pool, settings.role, adapter, keep=settings.keep)
            if settings.hand_off
            else None
        )
        record_training(
            settings.run_dir,
            result,
            inputs=[str(settings.problems), str(settings.run_dir)],
            adapter=adapter,
            extra_metrics={
                "trajectories": float(selection.sampled),
                "kept": float(len(selection.kept)),
                "model_tokens": float(sum(sum(s.mask) for s in selection.kept)),
                "interpreter_tokens": float(sum(len(s.mask) - sum(s.mask) for s in selection.kept)),
            },
        )
        return RFTReport(selection, adapter.lora_name, result.metrics.get("train_loss"), handoff)
