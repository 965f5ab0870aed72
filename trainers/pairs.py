"""Self-play preference data: filter problems by pass rate, then pair passing with failing rollouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rollout:
    """One sampled solution and whether it passed verification."""

    text: str
    passed: bool
    answer: str | None = None


@dataclass(frozen=True)
class ProblemRollouts:
    """All rollouts of one problem, with the prompt the policy saw."""

    problem_id: str
    prompt: list[dict[str, Any]]
    rollouts: list[Rollout]

    @property
    def pass_rate(self) -> float:
        return sum(r.passed for r in self.rollouts) / len(self.rollouts) if self.rollouts else 0.0


@dataclass
class PairReport:
    """What filtering kept and dropped, by reason."""

    kept: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    """problem_id → reason: `no_rollouts`, `no_pass`, `too_easy` (pass rate above the threshold),
    `no_fail`."""


def keep_reason(problem: ProblemRollouts, max_pass_rate: float) -> str | None:
    """Why a problem is dropped (None when it is kept). Kept problems have 0 < pass rate ≤ max_pass_rate."""
    if not problem.rollouts:
        return "no_rollouts"
    rate = problem.pass_rate
    if rate == 0.0:
        return "no_pass"
    if rate > max_pass_rate:
        return "too_easy"
    if rate == 1.0:
        return "no_fail"
    return None


def build_pairs(
    problems: list[ProblemRollouts], *, max_pass_rate: float = 0.5, max_pairs_per_problem: int = 4
) -> tuple[list[dict[str, Any]], PairReport]:
    """DPO rows `{"prompt", "chosen", "rejected"}` (conversational) from every kept problem.

    Each passing rollout is paired with each failing one, in order, up to `max_pairs_per_problem`.
    """
    rows: list[dict[str, Any]] = []
    report = PairReport()
    for problem in problems:
        reason = keep_reason(problem, max_pass_rate)
        if reason is not None:
            report.dropped[problem.problem_id] = reason
            continue
        report.kept.append(problem.problem_id)
        passing = [r for r in problem.rollouts if r.passed]
        failing = [r for r in problem.rollouts if not r.passed]
        made = 0
        for good in passing:
            for bad in failing:
                if made >= max_pairs_per_problem:
                    break
                rows.append(
                    {
                        "prompt": problem.prompt,
                        "chosen": [{"role": "assistant", "content": good.text}],
                        "rejected": [{"role": "assistant", "content": bad.text}],
                        "problem_id": problem.problem_id,
                    }
                )
                made += 1
    return rows, report
