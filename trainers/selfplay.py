"""Self-play with DPO (PromptCoT 2.0): roll out the policy on problems, verify, pair passes with
failures, train.

Problems come from a promptcot run dir (kept episodes' `problem`) or a JSONL file. A JSONL line is a math
problem (`problem`, optional `answer`), a HumanEval-style code problem (`prompt`, `test`, `entry_point`) or a
Codeforces-style one (`problem`, `tests` of `{input, output}`). Math rollouts are checked with math-verify
against the reference answer or, when a problem has none, against the majority answer of a teacher role (no
teacher and no answer: the problem is skipped). Code rollouts run against their tests in a sandbox
(`rolegraph.environments.code_tests`); on the host they are only parsed with `ast`.

A run dir that already holds finished rollout episodes reuses them (resuming after a crash re-samples only
the problems that did not finish).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rolegraph.agents.registry import get_role
from rolegraph.errors import TrainingError
from rolegraph.store import STORE_FILE, Store
from rolegraph.trainers.calls import Recorder
from rolegraph.trainers.code_rollouts import CodeSpec, code_role, code_spec, task_text, verify_code
from rolegraph.trainers.config import DPOSettings
from rolegraph.trainers.data import jsonl_values
from rolegraph.trainers.dpo import train_dpo
from rolegraph.trainers.grpo import extract_boxed
from rolegraph.trainers.handoff import HandOffReport, hand_off
from rolegraph.trainers.pairs import PairReport, ProblemRollouts, Rollout, build_pairs
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

ROLLOUT_NODE = "rollout"


@dataclass(frozen=True)
class Problem:
    """One problem: math (with an optional reference answer) or code (with the checks in `code`)."""

    id: str
    problem: str
    answer: str | None = None
    code: CodeSpec | None = None

    @property
    def kind(self) -> str:
        return "math" if self.code is None else "code"


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
        problems = [
            _problem_row(source, number, row) for number, row in jsonl_values(source, "fix or drop the line")
        ]
    else:
        raise TrainingError(
            f"problem source {source} does not exist", "pass a promptcot run dir or a JSONL file"
        )
    if not problems:
        raise TrainingError(
            f"{source} has no problems", "run the promptcot graph first or pass a problem file"
        )
    return problems[:limit]


def _problem_row(source: Path, number: int, row: Any) -> Problem:
    if not isinstance(row, dict):
        raise TrainingError(f"{source}: line {number} is not a JSON object", "one problem object per line")
    pid = str(row.get("id") or row.get("task_id") or f"p{number}")
    spec = code_spec(row)
    if spec is not None:
        return Problem(pid, str(row.get("problem") or row.get("prompt")), None, spec)
    if not str(row.get("problem", "")).strip():
        raise TrainingError(
            f"{source}: line {number} has no 'problem' (nor HumanEval 'prompt'/'test'/'entry_point')",
            "give every line a 'problem', or the fields of a code problem",
        )
    return Problem(pid, str(row["problem"]), _answer(row))


def _answer(row: dict[str, Any]) -> str | None:
    value = row.get("answer")
    return None if value in (None, "") else str(value)


def rollout_answer(text: str, parsed: dict[str, Any] | None) -> str | None:
    if parsed and parsed.get("answer"):
        return str(parsed["answer"])
    return extract_boxed(text)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        transient=True,
    )


class SelfPlay:
    """One self-play round: rollouts (recorded in the run's store), verification, DPO pairs, training."""

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
        self.rec = Recorder(
            pool, settings.run_dir, graph="selfplay", params={"source": str(settings.problems)}
        )
        self._sandbox = sandbox
        self._owns_sandbox = False
        self._sandbox_lock = asyncio.Lock()

    def close(self) -> None:
        self.rec.close()
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

    async def reference(self, problem: Problem, episode: str) -> str | None:
        """The problem's answer, or the teacher's majority answer."""
        from rolegraph.environments.math_verify import answers_equivalent, majority_answer

        if problem.answer is not None or self.settings.teacher_role is None:
            return problem.answer
        out = await self.rec.call(
            self.settings.teacher_role,
            episode_id=episode,
            node="teacher",
            variables={"problem": problem.problem},
            spec=get_role(self.settings.policy_role),
            n=self.settings.teacher_n,
            max_tokens=self.settings.max_tokens,
        )
        answers = [rollout_answer(t, p) for t, p in zip(out.texts, out.parsed, strict=True)]
        answer, _ = majority_answer(answers)
        # Teacher traces count as verified (e.g. for distillation) only when they agree with the majority.
        agrees = [float(answer is not None and answers_equivalent(a, answer)) for a in answers]
        self.rec.store.add_rewards(out.step_id, [{"majority_vote": value} for value in agrees])
        return answer

    async def sample(self, problem: Problem, episode: str) -> tuple[int, list[str], list[Any], list[Any]]:
        """n rollouts of the policy: (step id, texts, parsed fields, prompt messages)."""
        variables: dict[str, Any] = {"problem": problem.problem}
        spec = None
        if problem.code is not None:
            spec = code_role(self.settings.policy_role)
            variables = {"task": task_text(problem.problem, problem.code)}
        out = await self.rec.call(
            self.settings.policy_role,
            episode_id=episode,
            node=ROLLOUT_NODE,
            variables=variables,
            spec=spec,
            n=self.settings.n,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
        )
        return out.step_id, out.texts, out.parsed, out.messages

    async def check(
        self, problem: Problem, texts: list[str], parsed: list[Any], gold: str | None
    ) -> list[Rollout]:
        """Verify each rollout: in the sandbox for code, with math-verify for math."""
        if problem.code is not None:
            sandbox = await self.sandbox()
            verdicts = await asyncio.gather(*(verify_code(sandbox, problem.code, t) for t in texts))
            return [
                Rollout(text=t, passed=v.passed, answer=v.status)
                for t, v in zip(texts, verdicts, strict=True)
            ]
        from rolegraph.environments.math_verify import verify

        rollouts = []
        for text, fields in zip(texts, parsed, strict=True):
            answer = rollout_answer(text, fields)
            rollouts.append(Rollout(text=text, passed=bool(gold) and verify(answer, gold), answer=answer))
        return rollouts

    async def rollouts(self, problem: Problem) -> ProblemRollouts | None:
        episode = f"selfplay-{problem.id}"
        if episode in self.rec.store.finished_ids():
            return self.resumed(episode)
        self.rec.begin(episode, {"problem": problem.problem, "answer": problem.answer, "kind": problem.kind})
        gold = await self.reference(problem, episode) if problem.code is None else None
        step_id, texts, parsed, messages = await self.sample(problem, episode)
        rollouts = await self.check(problem, texts, parsed, gold)
        self.rec.store.add_rewards(step_id, [{"reward": float(r.passed)} for r in rollouts])
        rate = sum(r.passed for r in rollouts) / len(rollouts) if rollouts else 0.0
        checkable = problem.code is not None or gold is not None
        final = {
            "reference": gold,
            "pass_rate": rate,
            "checked": checkable,
            # Per rollout: the sandbox status for code, the extracted answer for math.
            "verdicts": [r.answer for r in rollouts],
        }
        self.rec.finish(episode, final, rewards={"pass_rate": rate})
        if not checkable:
            return None
        return ProblemRollouts(problem_id=problem.id, prompt=messages, rollouts=rollouts)

    def resumed(self, episode: str) -> ProblemRollouts | None:
        """The rollouts of a problem an earlier run of this run dir finished (None if it was uncheckable)."""
        record = self.rec.store.episode(episode)
        if record is None or not (record.final_state or {}).get("checked"):
            return None
        steps = [s for s in self.rec.store.steps(episode_id=episode) if s.node == ROLLOUT_NODE]
        if not steps:
            return None
        step = steps[-1]
        rollouts = [
            Rollout(
                text=choice.text,
                passed=bool((step.rewards[i] if i < len(step.rewards) else {}).get("reward")),
            )
            for i, choice in enumerate(step.choices)
        ]
        messages = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in step.messages]
        return ProblemRollouts(
            problem_id=episode.removeprefix("selfplay-"), prompt=messages, rollouts=rollouts
        )

    async def run(self) -> SelfPlayReport:
        problems = load_problems(self.settings.problems, self.settings.max_problems)
        groups: list[ProblemRollouts] = []
        with _progress() as progress:
            task = progress.add_task("self-play rollouts", total=len(problems), rate="")
            started = asyncio.get_running_loop().time()

            async def one(problem: Problem) -> None:
                group = await self.rollouts(problem)
                if group is not None:
                    groups.append(group)
                elapsed = max(asyncio.get_running_loop().time() - started, 1e-9)
                done = progress.tasks[0].completed + 1
                progress.update(task, advance=1, rate=f"{done / elapsed:.2f} problems/s")

            await asyncio.gather(*(one(p) for p in problems))
        order = {p.id: i for i, p in enumerate(problems)}
        groups.sort(key=lambda g: order.get(g.problem_id, len(order)))
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
            if self.settings.hand_off
            else None
        )
        record_training(
            self.settings.run_dir,
            result,
            inputs=[str(self.settings.problems), str(self.settings.run_dir)],
            adapter=adapter,
            extra_metrics={"pairs": float(len(rows)), "problems_kept": float(len(report.kept))},
        )
        return SelfPlayReport(len(problems), len(rows), report, adapter.lora_name, rates, handoff)
