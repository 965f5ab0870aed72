"""Difficulty of problem sets: a solver's pass rate on them and the tokens it spends, measured by eval runs.

Each set is evaluated in its own eval run (OUT/difficulty/NAME), so the answers are stored, resumable and
visible with `runs show` like any run. Math problems need a reference answer (a promptcot run's kept problems
carry the solver's majority answer, a pseudo-label); problems without one are counted and skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolegraph.eval.bindings import Binding
from rolegraph.eval.datasets import ProblemSet
from rolegraph.eval.runner import EvalSettings, evaluate
from rolegraph.graphs.role_calls import RolePool
from rolegraph.graphs.selfplay.problems import Problem


@dataclass(frozen=True)
class SetDifficulty:
    name: str
    task: str
    problems: int
    """Problems scored (at least one checked answer)."""
    skipped: int
    """Problems without a reference answer, or of the other task than the set's majority."""
    pass_rate: float
    """Mean share of passing answers per problem (avg@samples)."""
    ci: tuple[float, float]
    mean_tokens: float
    mean_tokens_solved: float | None
    unchecked: int
    """Answers whose check could not run (infrastructure), left out."""


def problem_row(problem: Problem) -> dict[str, Any]:
    """The JSONL row the eval loader reads back as `problem`."""
    spec = problem.code
    if spec is None:
        return {"id": problem.id, "problem": problem.problem, "answer": problem.answer}
    if spec.kind == "unit":
        return {"id": problem.id, "prompt": spec.stub, "test": spec.tests, "entry_point": spec.entry_point}
    tests = [{"input": stdin, "output": out} for stdin, out in spec.stdio]
    return {"id": problem.id, "problem": problem.problem, "tests": tests}


def checkable(problems: list[Problem]) -> tuple[str, list[Problem]]:
    """The set's task (its majority kind) and the problems that task can check."""
    code = sum(p.kind == "code" for p in problems)
    task = "code" if code > len(problems) - code else "math"
    return task, [p for p in problems if p.kind == task and (task == "code" or p.answer is not None)]


async def measure(
    sets: list[ProblemSet],
    pool: RolePool,
    binding: Binding,
    out_dir: Path,
    *,
    samples: int = 2,
    max_tokens: int = 512,
    temperature: float = 0.7,
    sandbox: str = "auto",
    concurrency: int = 8,
) -> list[SetDifficulty]:
    """One eval run per set with `binding`; the sets' difficulty in order."""
    out = []
    for problem_set in sets:
        task, problems = checkable(problem_set.problems)
        if not problems:
            out.append(SetDifficulty(problem_set.name, task, 0, len(problem_set.problems), 0.0, (0.0, 1.0),
                                     0.0, None, 0))  # fmt: skip
            continue
        run_dir = out_dir / "difficulty" / problem_set.name
        run_dir.mkdir(parents=True, exist_ok=True)
        file = run_dir / "problems.jsonl"
        file.write_text("".join(json.dumps(problem_row(p)) + "\n" for p in problems))
        settings = EvalSettings(
            task=task,
            file=file,
            n=len(problems),
            samples=samples,
            k=1,
            max_tokens=max_tokens,
            temperature=temperature,
            sandbox=sandbox,
            concurrency=concurrency,
        )
        report = await evaluate(pool, [binding], settings, run_dir)
        scores = report.bindings[0].scores
        out.append(
            SetDifficulty(
                name=problem_set.name,
                task=task,
                problems=scores.problems,
                skipped=len(problem_set.problems) - len(problems) + scores.unscored_problems,
                pass_rate=scores.avg_k,
                ci=scores.avg_k_ci,
                mean_tokens=scores.mean_tokens,
                mean_tokens_solved=scores.mean_tokens_solved,
                unchecked=scores.unchecked_samples,
            )
        )
    return out
