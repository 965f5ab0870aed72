"""Eval tasks: which problems a task takes from a file, and where its default file is.

`math`: problems with a reference `answer`, checked with math-verify on the last `\\boxed{}`.
`code`: HumanEval-style (`prompt`, `test`, `entry_point`) or stdin/stdout (`problem`, `tests`) problems,
run in the sandbox. The rows are read by the self-play loader (graphs/selfplay/problems.py), so both share
one format.
"""

from __future__ import annotations

from pathlib import Path

from rolegraph.errors import ConfigError, TrainingError
from rolegraph.graphs.selfplay.problems import Problem, load_problems

TASKS = ("math", "code")
DEFAULT_FILES = {
    "math": "math500_dev.jsonl",
    "code": "humaneval_dev.jsonl",
}
DATA_DIRS = (Path("../shared/data"), Path("shared/data"))
"""Where a task's default file is looked for, relative to the working directory."""


def default_file(task: str) -> Path:
    """The shared dev split of `task`, or a ConfigError asking for --file."""
    name = DEFAULT_FILES[task]
    for folder in DATA_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"no --file given and no {name} in {', '.join(map(str, DATA_DIRS))}", "pass --file F")


def load_task(task: str, file: Path, limit: int) -> list[Problem]:
    """The first `limit` problems of `file` for `task`; a row the task cannot check is a ConfigError."""
    if task not in TASKS:
        raise ConfigError(f"unknown eval task '{task}'", f"use one of: {', '.join(TASKS)}")
    if file.is_dir():
        raise ConfigError(f"{file} is a directory", "pass a JSONL problem file to --file")
    try:
        problems = load_problems(file, limit)
    except TrainingError as exc:
        raise ConfigError(exc.message, exc.hint) from None
    for problem in problems:
        if problem.kind != task:
            raise ConfigError(
                f"{file}: problem {problem.id} is a {problem.kind} problem, not a {task} one",
                f"pass a {task} file (see `rolegraph eval {problem.kind}`)",
            )
        if task == "math" and problem.answer is None:
            raise ConfigError(f"{file}: problem {problem.id} has no 'answer'", "give every math problem one")
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise ConfigError(f"{file}: two problems have the id '{problem.id}'", "make the ids unique")
        seen.add(problem.id)
    return problems
