"""PromptCoT 2.0's EM loop: a rationale model q(z|c,x) and a problem model p(z,x|c), two LoRA adapters
on one base.

E-step: sample k rationales per seed from q, score each by log p(z,x|c) under p (one scoring call of the
proposer's output format "## Rationale z ## Problem x"), keep the best, SFT q on the kept ones.
M-step: decode rationales greedily from the updated q, SFT p on (c → z, x). Both adapters are handed off each
iteration. Every generation and scoring call is recorded in the run's store; training rows are read from it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import TrainingError
from rolegraph.store import Store
from rolegraph.trainers.calls import Recorder
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.data import jsonl_values
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.sft import train_sft

Q_ROLE = "rationale_writer"
P_ROLE = "proposer"


@dataclass(frozen=True)
class Seed:
    """One seed problem x with its concepts c (empty until extracted)."""

    id: str
    problem: str
    concepts: tuple[str, ...] = ()
    answer: str | None = None


@dataclass
class EMSettings:
    """The EM loop's knobs. Tiny CPU defaults; `sft` holds the trainer settings used for both q and p."""

    seeds: Path
    run_dir: Path
    model_dir: Path
    iterations: int = 1
    num_seeds: int = 2
    k: int = 2
    max_tokens: int = 64
    temperature: float = 0.9
    difficulty: str = "competition"
    concepts_k: int = 3
    keep: int = 2
    sft: SFTSettings = field(default_factory=SFTSettings)


@dataclass
class IterationReport:
    """Per-iteration figures: mean best log p(z,x|c), and mean log p(x|c,z*) before and after the M-step."""

    iteration: int
    mean_best_reward: float
    mean_log_p_x_before: float
    mean_log_p_x_after: float
    q_adapter: str
    p_adapter: str
    selected: list[int] = field(default_factory=list)


def load_seeds(path: Path, limit: int) -> list[Seed]:
    """Seeds from a JSONL of problems (math500_dev.jsonl's format; `concepts` optional)."""
    if not Path(path).is_file():
        raise TrainingError(
            f"seed file {path} does not exist", "pass a JSONL of problems, e.g. math500_dev.jsonl"
        )
    seeds: list[Seed] = []
    for number, row in jsonl_values(path, "fix or drop it"):
        if not isinstance(row, dict) or not str(row.get("problem", "")).strip():
            raise TrainingError(
                f"{path}: line {number} has no 'problem'", "give every line a 'problem' field"
            )
        concepts = row.get("concepts") or []
        seeds.append(
            Seed(
                id=str(row.get("id", f"seed{number}")),
                problem=str(row["problem"]),
                concepts=tuple(str(c) for c in concepts),
                answer=None if row.get("answer") is None else str(row["answer"]),
            )
        )
        if len(seeds) >= limit:
            break
    if not seeds:
        raise TrainingError(f"seed file {path} has no problems", "pass a JSONL with one problem per line")
    return seeds


def proposal_text(rationale: str, problem: str) -> str:
    """z and x in the proposer's output format, so log p(z,x|c) is one continuation."""
    return f"## Rationale\n{rationale.strip()}\n## Problem\n{problem.strip()}"


def problem_prefix(rationale: str) -> str:
    """The part of `proposal_text` before x: log p(x|c,z) = score(full) − score(prefix)."""
    return f"## Rationale\n{rationale.strip()}\n## Problem\n"


def argmax(scores: Sequence[float]) -> int:
    """Index of the best score (first on ties); NaN never wins."""
    if not scores:
        raise TrainingError("no candidates to select from", "sample at least one rationale (k ≥ 1)")
    best = 0
    for index, value in enumerate(scores):
        if not math.isnan(value) and (math.isnan(scores[best]) or value > scores[best]):
            best = index
    return best


async def select_candidate(
    candidates: Sequence[str], score: Callable[[str], Awaitable[float]]
) -> tuple[int, list[float]]:
    """Score every candidate and return the argmax index with all scores."""
    scores = list(await asyncio.gather(*(score(c) for c in candidates)))
    return argmax(scores), scores


def rationale_of(text: str, parsed: dict[str, Any] | None) -> str:
    """The rationale a q sample carries (parsed when possible, else the raw text)."""
    if parsed and str(parsed.get("rationale", "")).strip():
        return str(parsed["rationale"])
    return text.strip()


class EMLoop:
    """Runs EM iterations over a pool whose rationale_writer and proposer roles share one base model."""

    def __init__(self, pool: Any, settings: EMSettings, registry: AdapterRegistry | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()
        self.rec = Recorder(
            pool, settings.run_dir, graph="em", params={"k": settings.k, "seeds": str(settings.seeds)}
        )

    def close(self) -> None:
        self.rec.close()

    async def ensure_concepts(self, seeds: list[Seed]) -> list[Seed]:
        """Extract concepts with the concept_extractor role for seeds that have none."""

        async def one(seed: Seed) -> Seed:
            if seed.concepts:
                return seed
            episode = f"concepts-{seed.id}"
            self.rec.begin(episode, {"problem": seed.problem})
            out = await self.rec.call(
                "concept_extractor",
                episode_id=episode,
                node="extract",
                variables={"problem": seed.problem, "k": self.settings.concepts_k},
                max_tokens=self.settings.max_tokens,
                temperature=0.0,
                n=1,
            )
            items = (out.parsed[0] or {}).get("items") or [
                line for line in out.texts[0].splitlines() if line.strip()
            ]
            concepts = tuple(str(c) for c in items[: self.settings.concepts_k]) or ("problem solving",)
            self.rec.finish(episode, {"concepts": list(concepts)}, rewards={})
            return Seed(seed.id, seed.problem, concepts, seed.answer)

        return list(await asyncio.gather(*(one(s) for s in seeds)))

    def _vars(self, seed: Seed, with_problem: bool) -> dict[str, Any]:
        variables: dict[str, Any] = {"concepts": list(seed.concepts), "difficulty": self.settings.difficulty}
        if with_problem:
            variables["problem"] = seed.problem
        return variables

    async def e_sample(self, iteration: int, seed: Seed) -> tuple[str, int, list[str]]:
        """Sample k rationales from q(z|c,x) for one seed; returns (episode, step id, rationales)."""
        episode = f"it{iteration}-e-{seed.id}"
        self.rec.begin(episode, {"seed": seed.id, "concepts": list(seed.concepts), "problem": seed.problem})
        sample = await self.rec.call(
            Q_ROLE,
            episode_id=episode,
            node="e_sample",
            variables=self._vars(seed, with_problem=True),
            n=self.settings.k,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
        )
        return (
            episode,
            sample.step_id,
            [rationale_of(t, p) for t, p in zip(sample.texts, sample.parsed, strict=True)],
        )

    async def e_select(
        self, seed: Seed, episode: str, step_id: int, rationales: list[str]
    ) -> tuple[int, float]:
        """Score each rationale by log p(z,x|c) under the current p, mark the best in the store."""
        p_prompt = self.rec.render(P_ROLE, self._vars(seed, with_problem=False))

        async def score(rationale: str) -> float:
            return await self.rec.score(
                P_ROLE,
                episode_id=episode,
                node="e_score",
                messages=p_prompt,
                continuation=proposal_text(rationale, seed.problem),
            )

        best, scores = await select_candidate(rationales, score)
        self.rec.store.add_rewards(
            step_id, [{"log_p": s, "selected": float(i == best)} for i, s in enumerate(scores)]
        )
        self.rec.finish(episode, {"best": best, "scores": scores}, rewards={"best_log_p": scores[best]})
        return best, scores[best]

    async def m_decode(self, iteration: int, seed: Seed) -> str:
        """Greedy z* from the updated q."""
        episode = f"it{iteration}-m-{seed.id}"
        self.rec.begin(episode, {"seed": seed.id, "concepts": list(seed.concepts), "problem": seed.problem})
        out = await self.rec.call(
            Q_ROLE,
            episode_id=episode,
            node="m_decode",
            variables=self._vars(seed, with_problem=True),
            n=1,
            temperature=0.0,
            max_tokens=self.settings.max_tokens,
        )
        return rationale_of(out.texts[0], out.parsed[0])

    async def m_score(self, iteration: int, seed: Seed, z: str, phase: str) -> float:
        """log p(x|c,z*) under the current p = log p(z*,x|c) − log p(z*|c), both recorded."""
        episode = f"it{iteration}-m-{seed.id}"
        p_prompt = self.rec.render(P_ROLE, self._vars(seed, with_problem=False))
        full, prefix = await asyncio.gather(
            self.rec.score(
                P_ROLE,
                episode_id=episode,
                node=f"m_target_{phase}",
                messages=p_prompt,
                continuation=proposal_text(z, seed.problem),
            ),
            self.rec.score(
                P_ROLE,
                episode_id=episode,
                node=f"m_prefix_{phase}",
                messages=p_prompt,
                continuation=problem_prefix(z),
            ),
        )
        if phase == "after":
            self.rec.finish(episode, {"rationale": z}, rewards={"log_p_x": full - prefix})
        return full - prefix

    def rows(self, iteration: int, node: str, *, selected_only: bool) -> list[dict[str, Any]]:
        """SFT rows read back from the store: prompt = the step's messages, completion = the chosen text."""
        rows = []
        prefix = f"it{iteration}-"
        for step in self.rec.store.steps(kind="role"):
            if step.node != node or not step.episode_id.startswith(prefix):
                continue
            if step.attempt != self.rec.attempt(step.episode_id):
                continue  # left over from an interrupted earlier attempt
            for index, choice in enumerate(step.choices):
                rewards = step.rewards[index] if index < len(step.rewards) else {}
                if selected_only and rewards.get("selected") != 1.0:
                    continue
                rows.append(
                    {"prompt": step.messages, "completion": [{"role": "assistant", "content": choice.text}]}
                )
        return rows

    async def train_and_hand_off(self, role: str, rows: list[dict[str, Any]], iteration: int) -> str:
        from datasets import Dataset

        if not rows:
            raise TrainingError(
                f"EM iteration {iteration}: no training rows for {role}", "check the run's store"
            )
        settings = self.settings.sft
        settings.model = self.settings.model_dir
        staging = self.registry.staging(role)
        dataset = Dataset.from_list(rows)
        result = await asyncio.to_thread(train_sft, settings, dataset, staging)
        adapter = self.registry.publish(role, result.adapter_dir)
        report = await hand_off(self.pool, role, adapter, keep=self.settings.keep)
        record_training(
            self.settings.run_dir,
            result,
            inputs=[str(self.settings.run_dir)],
            adapter=adapter,
            extra_metrics={"handoff_s": report.load_s, "iteration": float(iteration)},
        )
        return adapter.lora_name

    async def iteration(self, iteration: int, seeds: list[Seed]) -> IterationReport:
        samples = await asyncio.gather(*(self.e_sample(iteration, s) for s in seeds))
        e_results = await asyncio.gather(
            *(self.e_select(seed, *sample) for seed, sample in zip(seeds, samples, strict=True))
        )
        q_name = await self.train_and_hand_off(
            Q_ROLE, self.rows(iteration, "e_sample", selected_only=True), iteration
        )
        decoded = await asyncio.gather(*(self.m_decode(iteration, s) for s in seeds))
        before = await asyncio.gather(
            *(self.m_score(iteration, s, z, "before") for s, z in zip(seeds, decoded, strict=True))
        )
        p_rows = self.rows(iteration, "m_target_before", selected_only=False)
        p_name = await self.train_and_hand_off(P_ROLE, p_rows, iteration)
        after = await asyncio.gather(
            *(self.m_score(iteration, s, z, "after") for s, z in zip(seeds, decoded, strict=True))
        )
        return IterationReport(
            iteration=iteration,
            mean_best_reward=sum(score for _, score in e_results) / len(e_results),
            mean_log_p_x_before=sum(before) / len(before),
            mean_log_p_x_after=sum(after) / len(after),
            q_adapter=q_name,
            p_adapter=p_name,
            selected=[index for index, _ in e_results],
        )

    async def run(
        self, on_iteration: Callable[[IterationReport], None] | None = None
    ) -> list[IterationReport]:
        seeds = await self.ensure_concepts(load_seeds(self.settings.seeds, self.settings.num_seeds))
        start = 1 + _finished_iterations(self.rec.store)
        reports = []
        for iteration in range(start, start + self.settings.iterations):
            report = await self.iteration(iteration, seeds)
            reports.append(report)
            if on_iteration is not None:
                on_iteration(report)
        return reports


def _finished_iterations(store: Store) -> int:
    """Iterations already completed in this run dir (a re-run continues after them)."""
    done = [
        int(r.metrics.get("iteration", 0))
        for r in store.training_runs()
        if r.adapter_name and r.adapter_name.startswith(f"{P_ROLE}-v")
    ]
    return max(done, default=0)
