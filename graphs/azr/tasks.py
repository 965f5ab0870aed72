"""AZR tasks and their buffers: what a task is, where the buffers come from, and how prompts show tasks.

A buffer is a view of run stores: the valid tasks in the final states of the finished episodes of the seed
runs and of earlier steps. A run therefore resumes with exactly the buffers it had, and nothing but the
store holds them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.errors import ConfigError
from rolegraph.graphs.azr.state import TASK_TYPES
from rolegraph.store import STORE_FILE, Store
from rolegraph.trainers.data import jsonl_values

ZERO_TRIPLET = {"id": "zero", "program": "def f(a):\n    return a", "input": '"Hello World"'}
"""The paper's seed: the identity function on "Hello World"."""


@dataclass(frozen=True)
class Task:
    """A validated task. Deduction/abduction: program, input, output. Induction: program, message, and the
    (input, output) pairs shown to the solver and those held back for judging."""

    type: str
    program: str
    input: str = ""
    output: str = ""
    message: str = ""
    shown: list[tuple[str, str]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> Task:
        def pairs(key: str) -> list[tuple[str, str]]:
            return [(str(i), str(o)) for i, o in data.get(key) or []]

        texts = {k: str(data[k]) for k in ("input", "output", "message") if k in data}
        return cls(str(data["type"]), str(data["program"]), **texts, shown=pairs("shown"), held=pairs("held"))

    @property
    def key(self) -> tuple[str, ...]:
        return (self.type, self.program, self.input, self.message)


Buffers = dict[str, list[Task]]


def empty_buffers() -> Buffers:
    return {t: [] for t in TASK_TYPES}


def read_buffers(run_dirs: Sequence[str | Path]) -> Buffers:
    """The valid tasks of finished episodes in `run_dirs`, per type, deduplicated, in run then episode order.

    A seed triplet joins both the deduction and the abduction buffer (the paper seeds both with it)."""
    buffers = empty_buffers()
    seen: set[tuple[str, ...]] = set()
    for run_dir in run_dirs:
        if not (Path(run_dir) / STORE_FILE).is_file():
            continue
        with Store(run_dir, create=False) as store:
            episodes = store.episodes(status="finished")
        for episode in episodes:
            state = episode.final_state or {}
            if not state.get("task"):
                continue
            task = Task.from_state(state["task"])
            copies = [task]
            if state.get("seed"):
                copies = [Task("deduction", task.program, task.input, task.output)]
                copies.append(Task("abduction", task.program, task.input, task.output))
            for copy in copies:
                if copy.key not in seen:
                    seen.add(copy.key)
                    buffers[copy.type].append(copy)
    return buffers


def zero_buffers() -> Buffers:
    """The buffers seeded with the zero triplet alone (its output is the input: f is the identity)."""
    buffers = empty_buffers()
    for kind in ("deduction", "abduction"):
        buffers[kind].append(
            Task(kind, ZERO_TRIPLET["program"], ZERO_TRIPLET["input"], ZERO_TRIPLET["input"])
        )
    return buffers


def load_seed_triplets(source: str | Path | None) -> list[dict[str, Any]]:
    """Seed triplets: the zero triplet (None or 'zero'), or a JSONL of {code|program, input} lines."""
    if source in (None, "zero"):
        return [dict(ZERO_TRIPLET)]
    path = Path(str(source))
    if not path.is_file():
        raise ConfigError(f"seed file {path} does not exist", "pass a JSONL of triplets, or omit --seeds")
    seeds = []
    for number, row in jsonl_values(path, "fix or drop the line"):
        program = row.get("program", row.get("code")) if isinstance(row, dict) else None
        if not isinstance(program, str) or not isinstance(row.get("input"), str):
            raise ConfigError(
                f"{path}: line {number} is not a triplet",
                "give every line a 'code' (or 'program') and an 'input' string, like cruxeval_dev.jsonl",
            )
        seeds.append({"id": str(row.get("id", f"seed{number}")), "program": program, "input": row["input"]})
    if not seeds:
        raise ConfigError(f"seed file {path} holds no triplets", "pass a JSONL with one triplet per line")
    return seeds


def sample(rng: random.Random, items: Sequence[Task], k: int) -> list[Task]:
    """k distinct items (all of them when there are fewer)."""
    return list(items) if len(items) <= k else rng.sample(list(items), k)


def plan_episodes(
    buffers: Buffers, types: Sequence[str], batch: int, references: int, seed: int
) -> list[dict[str, Any]]:
    """Each episode's inputs: its type, its references (deduction, abduction) or program (induction), and a
    fallback buffer task for the solver. Drawn once per run (the graph's prepare caches them)."""
    rng = random.Random(seed)
    programs = buffers["deduction"] + buffers["abduction"]
    planned = []
    for task_type in types:
        for index in range(batch):
            entry: dict[str, Any] = {"key": f"{task_type}-{index}", "task_type": task_type}
            if task_type == "induction":
                if not programs:
                    raise ConfigError(
                        "the deduction and abduction buffers are empty: induction has no program to work on",
                        "seed the buffers (the zero triplet, --seeds FILE or --seed-from-model N)",
                    )
                entry["program"] = rng.choice(programs).program
            else:
                entry["references"] = [t.to_state() for t in sample(rng, buffers[task_type], references)]
            pool = buffers[task_type]
            entry["fallback"] = rng.choice(pool).to_state() if pool else None
            planned.append(entry)
    return planned


def show_references(references: Sequence[dict[str, Any]]) -> str:
    """Buffer triplets as the proposer prompt shows them."""
    if not references:
        return "(none yet)"
    blocks = []
    for number, data in enumerate(references, 1):
        task = Task.from_state(data)
        blocks.append(
            f"#### Snippet {number}\n```python\n{task.program}\n```\n```input\n{task.input}\n```\n"
            f"```output\n{task.output}\n```"
        )
    return "\n\n".join(blocks)


def show_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """Induction's shown (input, output) pairs as the solver prompt shows them."""
    return "\n".join(f"```input\n{i}\n```\n```output\n{o}\n```" for i, o in pairs)


def solver_variables(task: Task) -> dict[str, Any]:
    """The variables of the solver prompt `azr_solve_<type>`."""
    if task.type == "deduction":
        return {"program": task.program, "input": task.input}
    if task.type == "abduction":
        return {"program": task.program, "output": task.output}
    return {"pairs": show_pairs(task.shown), "message": task.message or "(none)"}
