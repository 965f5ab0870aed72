"""Self-play problems: where they come from, how they travel in a graph's state, and a rollout's answer.

Problems come from a promptcot run dir (kept episodes) or a JSONL file. A JSONL line is a math problem
(`problem`, optional `answer`), a HumanEval-style code problem (`prompt`, `test`, `entry_point`) or a
Codeforces-style one (`problem`, `tests` of `{input, output}`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rolegraph.agents.parsers import last_boxed
from rolegraph.errors import TrainingError
from rolegraph.store import STORE_FILE, Store
from rolegraph.trainers.code_rollouts import CodeSpec, code_spec
from rolegraph.trainers.data import jsonl_values


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

    def to_state(self) -> dict[str, Any]:
        """The problem as JSON-ready data (for a graph's state and the store)."""
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> Problem:
        code = data.get("code")
        spec = None
        if code is not None:
            stdio = tuple((str(stdin), str(out)) for stdin, out in code.get("stdio") or ())
            spec = CodeSpec(code.get("tests"), code.get("entry_point"), code.get("stub", ""), stdio)
        return cls(str(data["id"]), str(data["problem"]), data.get("answer"), spec)


def load_problems(source: Path | str, limit: int) -> list[Problem]:
    """Problems from a promptcot run dir (kept episodes) or a JSONL file, at most `limit`."""
    source = Path(source)
    if source.is_dir():
        problems = run_problems(source)
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


def run_problems(run_dir: Path) -> list[Problem]:
    """The kept problems of a promptcot run dir, with their reference answers.

    PromptCoT never writes a verified answer: its reference is `majority_answer`, the answer most of the
    solver's k attempts agreed on (math-verify equivalence; its share is the state's `agreement`). It is a
    pseudo-label that the kept episodes' agreement threshold vouches for, not a ground truth. A state's own
    `answer` (e.g. from a YAML-spec graph) takes precedence. A problem with neither has no reference: it is
    checked against a teacher role's majority, or skipped.
    """
    if not (run_dir / STORE_FILE).is_file():
        raise TrainingError(f"{run_dir} holds no rolegraph run", "pass a promptcot --run-dir or a JSONL file")
    with Store(run_dir, create=False) as store:
        episodes = store.episodes(status="finished", kept=True)
    return [
        Problem(e.id, str(e.final_state["problem"]), _answer(e.final_state, "answer", "majority_answer"))
        for e in episodes
        if e.final_state and str(e.final_state.get("problem") or "").strip()
    ]


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
    return Problem(pid, str(row["problem"]), _answer(row, "answer"))


def _answer(row: dict[str, Any], *keys: str) -> str | None:
    """The first of `keys` the row has a non-empty value for."""
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def rollout_answer(text: str, parsed: dict[str, Any] | None) -> str | None:
    """A math rollout's final answer: the role parser's `answer`, else the last `\\boxed{}`."""
    if parsed and parsed.get("answer"):
        return str(parsed["answer"])
    return last_boxed(text)
