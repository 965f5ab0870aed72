"""Self-play with DPO (PromptCoT 2.0): roll out the policy on problems, verify, pair passes with failures,
train, hand off.

Rollouts and their verification are a run of the `selfplay` graph (graphs/selfplay/) in `run_dir`: one
episode per problem, every call in the run's store, resumable like any graph run (a re-run samples only the
problems that did not finish). The pairs are then built from that store: a rollout passes when its declared
training reward is positive; a rollout whose reward is None (its check could not run) is left out and
counted.

Problems come from a promptcot run dir or a JSONL file (graphs/selfplay/problems.py). Math rollouts are
checked with math-verify against the reference answer or, when a problem has none, against the majority
answer of a teacher role (no teacher and no answer: the problem is skipped). Code rollouts run against their
tests in a sandbox (`rolegraph.environments.code_tests`); on the host they are only parsed with `ast`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.graphs.selfplay.graph import EPISODE_PREFIX, selfplay_graph
from rolegraph.graphs.selfplay.nodes import ROLLOUT_NODE
from rolegraph.graphs.selfplay.problems import Problem, load_problems
from rolegraph.store import Store
from rolegraph.store.records import EpisodeRecord, Step
from rolegraph.store.rewards import choice_rewards, training_reward
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.dpo import train_dpo
from rolegraph.trainers.handoff import HandOffReport, hand_off
from rolegraph.trainers.pairs import PairReport, ProblemRollouts, Rollout, build_pairs
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

__all__ = ["Problem", "SelfPlay", "SelfPlayReport", "SelfPlaySettings", "load_problems", "read_rollouts"]


@dataclass
class SelfPlaySettings:
    problems: Path
    """A promptcot run dir or a JSONL problem file."""
    run_dir: Path
    model_dir: Path
    policy_role: str = "solver"
    teacher_role: str | None = None
    """Role whose majority answer is the reference when a math problem has none. It answers the policy's
    prompt (same parser) with its own binding, e.g. a bigger model: only the config needs to name it."""
    max_problems: int = 4
    n: int = 4
    teacher_n: int = 3
    max_tokens: int = 64
    temperature: float = 1.0
    seed: int | None = None
    """Sampling seed for the rollouts (reproducible rollouts on a quiet server)."""
    max_pass_rate: float = 0.5
    max_pairs_per_problem: int = 4
    keep: int = 2
    hand_off: bool = True
    sandbox: str = "auto"
    """Sandbox backend for code problems: auto, docker or bwrap."""
    concurrency: int = 8
    """Problems rolled out at once."""
    dpo: DPOSettings = field(default_factory=DPOSettings)

    def graph_options(self) -> dict[str, Any]:
        """The selfplay graph's options (graphs/selfplay/state.py), JSON-ready: the run stores them."""
        return {
            "problems": str(self.problems),
            "policy_role": self.policy_role,
            "teacher_role": self.teacher_role,
            "n": self.n,
            "teacher_n": self.teacher_n,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }


@dataclass
class SelfPlayReport:
    problems: int
    pairs: int
    pairs_report: PairReport
    adapter: str | None
    pass_rates: dict[str, float]
    """Problem id → share of its verified rollouts that passed, for every problem that could be checked."""
    handoff: HandOffReport | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Problem id → why it was not checked (no reference answer, a failed call, no verifiable rollout)."""

    @property
    def unverified(self) -> int:
        """Rollouts whose check could not run (reward None): left out of the pairs."""
        return self.pairs_report.unverified


def read_rollouts(run_dir: Path, policy_role: str) -> tuple[list[ProblemRollouts], dict[str, str]]:
    """The verified rollouts of a selfplay run, per problem, and why the other problems were skipped.

    A rollout passed when its declared training reward is positive; None (the check could not run) stays
    None, so it is left out of pass rates and pairs.
    """
    groups: list[ProblemRollouts] = []
    skipped: dict[str, str] = {}
    with Store(run_dir, create=False) as store:
        run = store.run()
        declared = run.rewards if run is not None else []
        for episode in store.episodes():
            problem_id = episode.id.removeprefix(EPISODE_PREFIX)
            if episode.status != "finished":
                skipped[problem_id] = episode.error or episode.status
                continue
            steps = [
                s
                for s in store.steps(episode_id=episode.id, role=policy_role, kind="role")
                if s.node == ROLLOUT_NODE and s.error is None
            ]
            if not episode.kept or not steps:
                skipped[problem_id] = episode.reason or "no rollouts"
                continue
            groups.append(_group(problem_id, episode, steps[-1], declared))
    return groups, skipped


def _group(
    problem_id: str, episode: EpisodeRecord, step: Step, declared: list[dict[str, Any]]
) -> ProblemRollouts:
    verdicts = (episode.final_state or {}).get("verdicts") or []
    rollouts = []
    for index, choice in enumerate(step.choices):
        reward = training_reward(choice_rewards(step, index, episode), declared)
        rollouts.append(
            Rollout(
                text=choice.text,
                passed=None if reward is None else reward > 0,
                answer=verdicts[index] if index < len(verdicts) else None,
            )
        )
    prompt = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in step.messages]
    return ProblemRollouts(problem_id=problem_id, prompt=prompt, rollouts=rollouts)


class SelfPlay:
    """One self-play round: rollouts and verification (a selfplay graph run), DPO pairs, training."""

    def __init__(
        self,
        pool: Any,
        settings: SelfPlaySettings,
        registry: AdapterRegistry | None = None,
        sandbox: Any | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()
        self._sandbox = sandbox
        self._owns_sandbox = False
        self._sandbox_lock = asyncio.Lock()

    def close(self) -> None:
        if self._owns_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    async def sandbox(self) -> Any:
        """The sandbox pool code rollouts run in (started on first use unless one was given)."""
        async with self._sandbox_lock:
            if self._sandbox is None:
                from rolegraph.environments.sandbox.pool import SandboxPool

                self._sandbox = await asyncio.to_thread(SandboxPool, self.settings.sandbox, size=2)
                self._owns_sandbox = True
            return self._sandbox

    async def rollouts(self) -> tuple[list[Problem], list[ProblemRollouts], dict[str, str]]:
        """Run (or resume) the rollout graph; the problems, their verified rollouts (in problem order) and
        why the others were skipped."""
        settings = self.settings
        problems = load_problems(settings.problems, settings.max_problems)
        roles = tuple(r for r in (settings.policy_role, settings.teacher_role) if r is not None)
        await run_graph(
            selfplay_graph(self.sandbox, roles=roles),
            self.pool,
            RunParams(n=len(problems), options=settings.graph_options()),
            settings.run_dir,
            concurrency=settings.concurrency,
        )
        groups, skipped = read_rollouts(settings.run_dir, settings.policy_role)
        order = {p.id: i for i, p in enumerate(problems)}
        groups.sort(key=lambda g: order.get(g.problem_id, len(order)))
        return problems, groups, skipped

    async def run(self) -> SelfPlayReport:
        settings = self.settings
        problems, groups, skipped = await self.rollouts()
        rows, report = build_pairs(
            groups, max_pass_rate=settings.max_pass_rate, max_pairs_per_problem=settings.max_pairs_per_problem
        )
        rates = {g.problem_id: g.pass_rate for g in groups}
        if not rows:
            return SelfPlayReport(len(problems), 0, report, None, rates, skipped=skipped)
        from datasets import Dataset

        dpo = settings.dpo
        dpo.model = settings.model_dir
        dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        result = await asyncio.to_thread(train_dpo, dpo, dataset, self.registry.staging(settings.policy_role))
        adapter = self.registry.publish(settings.policy_role, result.adapter_dir)
        handoff = (
            await hand_off(self.pool, settings.policy_role, adapter, keep=settings.keep)
            if settings.hand_off
            else None
        )
        record_training(
            settings.run_dir,
            result,
            inputs=[str(settings.problems), str(settings.run_dir)],
            adapter=adapter,
            extra_metrics={
                "pairs": float(len(rows)),
                "problems_kept": float(len(report.kept)),
                "unverified_rollouts": float(report.unverified),
            },
        )
        return SelfPlayReport(len(problems), len(rows), report, adapter.lora_name, rates, handoff, skipped)
