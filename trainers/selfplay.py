"""Self-play with DPO (PromptCoT 2.0): roll out the policy on problems, verify, pair passes with
failures, train.

Problems come from a promptcot run dir (kept episodes' `problem`) or a JSONL file (`problem` and optional
`answer`). Math rollouts are checked with math-verify against the reference answer, or, when a problem
has none,
against the majority answer of a teacher role (no teacher and no answer: the problem is skipped).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rolegraph.trainers.calls import Recorder
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.dpo import train_dpo
from rolegraph.trainers.grpo import extract_boxed
from rolegraph.trainers.handoff import HandOffReport, hand_off
from rolegraph.trainers.pairs import PairReport, ProblemRollouts, Rollout, build_pairs
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

from rolegraph.errors import TrainingError
from rolegraph.store import STORE_FILE, Store


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str | None = None


@dataclass
class SelfPlaySettings:
    problems: Path
    """A promptcot run dir or a JSONL problem file."""
    run_dir: Path
    model_dir: Path
    policy_role: str = "solver"
    teacher_role: str | None = None
    """Role whose majority answer is the reference when a problem has none."""
    max_problems: int = 4
    n: int = 4
    teacher_n: int = 3
    max_tokens: int = 64
    temperature: float = 1.0
    max_pass_rate: float = 0.5
    max_pairs_per_problem: int = 4
    keep: int = 2
    hand_off: bool = True
    dpo: DPOSettings = field(default_factory=DPOSettings)


@dataclass
class SelfPlayReport:
    problems: int
    pairs: int
    pairs_report: PairReport
    adapter: str | None
    pass_rates: dict[str, float]
    handoff: HandOffReport | None = None


def load_problems(source: Path, limit: int) -> list[Problem]:
    """Problems from a promptcot run dir (kept episodes) or a JSONL file."""
    source = Path(source)
    if source.is_dir():
        if not (source / STORE_FILE).is_file():
            raise TrainingError(
                f"{source} holds no rolegraph run", "pass a promptcot --run-dir or a JSONL file"
            )
        with Store(source, create=False) as store:
            episodes = store.episodes(status="finished", kept=True)
        problems = [
            Problem(e.id, str(e.final_state["problem"]), _answer(e.final_state))
            for e in episodes
            if e.final_state and str(e.final_state.get("problem", "")).strip()
        ]
    elif source.is_file():
        problems = []
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(
                    f"{source}: line {number} is not valid JSON ({exc.msg})", "fix it"
                ) from None
            if not isinstance(row, dict) or not str(row.get("problem", "")).strip():
                raise TrainingError(
                    f"{source}: line {number} has no 'problem'", "give every line a 'problem'"
                )
            problems.append(Problem(str(row.get("id", f"p{number}")), str(row["problem"]), _answer(row)))
    else:
        raise TrainingError(
            f"problem source {source} does not exist", "pass a promptcot run dir or a JSONL file"
        )
    if not problems:
        raise TrainingError(
            f"{source} has no problems", "run the promptcot graph first or pass a problem file"
        )
    return problems[:limit]


def _answer(row: dict[str, Any]) -> str | None:
    value = row.get("answer")
    return None if value in (None, "") else str(value)


def rollout_answer(text: str, parsed: dict[str, Any] | None) -> str | None:
    if parsed and parsed.get("answer"):
        return str(parsed["answer"])
    return extract_boxed(text)


class SelfPlay:
    def __init__(
        self, pool: Any, settings: SelfPlaySettings, registry: AdapterRegistry | None = None
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()
        self.rec = Recorder(
            pool, settings.run_dir, graph="selfplay", params={"source": str(settings.problems)}
        )

    def close(self) -> None:
        self.rec.close()

    async def reference(self, problem: Problem, episode: str) -> str | None:
        """The problem's answer, or the teacher's majority answer."""
        from rolegraph.environments.math_verify import majority_answer

        if problem.answer is not None or self.settings.teacher_role is None:
            return problem.answer
        out = await self.rec.call(
            self.settings.teacher_role,
            episode_id=episode,
            node="teacher",
            variables={"problem": problem.problem},
            n=self.settings.teacher_n,
            max_tokens=self.settings.max_tokens,
        )
        answer, _ = majority_answer(
            [rollout_answer(t, p) for t, p in zip(out.texts, out.parsed, strict=True)]
        )
        return answer

    async def rollouts(self, problem: Problem) -> ProblemRollouts | None:
        from rolegraph.environments.math_verify import verify

        episode = f"selfplay-{problem.id}"
        self.rec.begin(episode, {"problem": problem.problem, "answer": problem.answer})
        gold = await self.reference(problem, episode)
        out = await self.rec.call(
            self.settings.policy_role,
            episode_id=episode,
            node="rollout",
            variables={"problem": problem.problem},
            n=self.settings.n,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
        )
        rollouts = []
        for text, parsed in zip(out.texts, out.parsed, strict=True):
            answer = rollout_answer(text, parsed)
            rollouts.append(Rollout(text=text, passed=bool(gold) and verify(answer, gold), answer=answer))
        self.rec.store.add_rewards(out.step_id, [{"reward": float(r.passed)} for r in rollouts])
        rate = sum(r.passed for r in rollouts) / len(rollouts) if rollouts else 0.0
        self.rec.finish(episode, {"reference": gold, "pass_rate": rate}, rewards={"pass_rate": rate})
        if gold is None:
            return None
        return ProblemRollouts(problem_id=problem.id, prompt=out.messages, rollouts=rollouts)

    async def run(self) -> SelfPlayReport:
        problems = load_problems(self.settings.problems, self.settings.max_problems)
        groups: list[ProblemRollouts] = []
        with Progress(transient=True) as progress:
            task = progress.add_task("rollouts", total=len(problems))

            async def one(problem: Problem) -> None:
                group = await self.rollouts(problem)
                if group is not None:
                    groups.append(group)
                progress.advance(task)

            await asyncio.gather(*(one(p) for p in problems))
        rows, report = build_pairs(
            groups,
            max_pass_rate=self.settings.max_pass_rate,
            max_pairs_per_problem=self.settings.max_pairs_per_problem,
        )
        rates = {g.problem_id: g.pass_rate for g in groups}
        if not rows:
            return SelfPlayReport(len(problems), 0, report, None, rates)
        from datasets import Dataset

        settings = self.settings.dpo
        settings.model = self.settings.model_dir
        dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        result = await asyncio.to_thread(
            train_dpo, settings, dataset, self.registry.staging(self.settings.policy_role)
        )
        adapter = self.registry.publish(self.settings.policy_role, result.adapter_dir)
        handoff = (
            await hand_off(self.pool, self.settings.policy_role, adapter, keep=self.settings.keep)
            if (self.settings.hand_off)
            else None
        )
        record_training(
            self.settings.run_dir,
            result,
            inputs=[str(self.settings.problems), str(self.settings.run_dir)],
            adapter=adapter,
            extra_metrics={"pairs": float(len(rows))},
        )
        return SelfPlayReport(len(problems), len(rows), report, adapter.lora_name, rates, handoff)
