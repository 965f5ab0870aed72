"""DPO pairs from verified rollouts: filter problems by pass rate, then pair passing with failing rollouts.

A rollout whose check could not run (sandbox failure, verifier timeout) has `passed=None`: it is neither a
pass nor a failure, so it is left out of pass rates and pairs, and counted in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rollout:
    """One sampled solution and whether it passed verification (None: the check could not run)."""

    text: str
    passed: bool | None
    answer: str | None = None


@dataclass(frozen=True)
class ProblemRollouts:
    """All rollouts of one problem, with the prompt the policy saw."""

    problem_id: str
    prompt: list[dict[str, Any]]
    rollouts: list[Rollout]

    @property
    def verified(self) -> list[Rollout]:
        """The rollouts whose check ran."""
        return [r for r in self.rollouts if r.passed is not None]

    @property
    def unverified(self) -> int:
        return len(self.rollouts) - len(self.verified)

    @property
    def pass_rate(self) -> float:
        """The share of verified rollouts that passed (0 when none was verified)."""
        verified = self.verified
        return sum(bool(r.passed) for r in verified) / len(verified) if verified else 0.0


@dataclass
class PairReport:
    """What filtering kept and dropped, by reason, and how many rollouts could not be verified."""

    kept: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    """problem_id → reason: `no_rollouts`, `unverified` (no rollout's check ran), `no_pass`, `too_easy`
    (pass rate above the threshold), `no_fail`."""
    unverified: int = 0
    """Rollouts left out because their check could not run (their reward is None)."""


def keep_reason(problem: ProblemRollouts, max_pass_rate: float) -> str | None:
    """Why a problem is dropped (None when it is kept). Kept problems have 0 < pass rate ≤ max_pass_rate."""
    if not problem.rollouts:
        return "no_rollouts"
    if not problem.verified:
        return "unverified"
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
    report = PairReport(unverified=sum(p.unverified for p in problems))
    for problem in problems:
        reason = keep_reason(problem, max_pass_rate)
        if reason is not None:
            report.dropped[problem.problem_id] = reason
            continue
        report.kept.append(problem.problem_id)
        passing = [r for r in problem.rollouts if r.passed is True]
        failing = [r for r in problem.rollouts if r.passed is False]
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
