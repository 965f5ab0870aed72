"""An eval run read back from its store: per-binding scores, a JSON summary and the terminal table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rolegraph.errors import ConfigError
from rolegraph.eval.graph import GRAPH_NAME, EvalOptions
from rolegraph.eval.metrics import ProblemResult, Scores, score
from rolegraph.store import STORE_FILE, Step, Store
from rolegraph.terminal import safe

SUMMARY_FILE = "eval_summary.json"


@dataclass(frozen=True)
class BindingReport:
    """One binding's scores, the models that answered for it, and the episodes that could not finish."""

    role: str
    label: str
    models: list[str]
    scores: Scores
    results: list[ProblemResult] = field(repr=False)
    failed: dict[str, int] = field(default_factory=dict)
    """Episodes that failed (endpoint down, sandbox, …), by failure kind; re-running the run retries them."""
    unfinished: int = 0


@dataclass(frozen=True)
class EvalReport:
    run_dir: Path
    task: str
    file: str
    solver: str
    k: int
    samples: int
    bindings: list[BindingReport]

    def to_json(self) -> dict[str, Any]:
        """The JSON summary (the per-problem results are in the run's store)."""
        return {
            "run_dir": str(self.run_dir),
            "task": self.task,
            "file": self.file,
            "solver": self.solver,
            "k": self.k,
            "samples": self.samples,
            "bindings": [
                {
                    "role": b.role,
                    "label": b.label,
                    "models": b.models,
                    **asdict(b.scores),
                    "failed": b.failed,
                    "unfinished": b.unfinished,
                }
                for b in self.bindings
            ],
        }

    def write(self, path: Path | None = None) -> Path:
        """Write the JSON summary atomically (default: RUN_DIR/eval_summary.json)."""
        path = path or self.run_dir / SUMMARY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def table(self) -> Table:
        k = self.k
        table = Table(
            title=f"{self.task} eval: {self.file} ({self.samples} samples per problem)", title_justify="left"
        )
        for column in (
            "binding",
            "model",
            "problems",
            "pass@1",
            f"pass@{k}",
            f"avg@{self.samples}",
            "tokens",
            "tokens (solved)",
            "unchecked",
            "failed",
        ):
            table.add_column(column, justify="left" if column in ("binding", "model") else "right")
        for b in self.bindings:
            s = b.scores
            solved = "-" if s.mean_tokens_solved is None else f"{s.mean_tokens_solved:.0f}"
            failed = sum(b.failed.values()) + b.unfinished
            table.add_row(
                safe(b.label),
                safe(", ".join(b.models) or "-"),
                str(s.problems),
                _rate(s.pass1, s.pass1_ci),
                _rate(s.pass_k, s.pass_k_ci),
                _rate(s.avg_k, s.avg_k_ci),
                f"{s.mean_tokens:.0f}",
                solved,
                f"{s.unchecked_samples} samples" if s.unchecked_samples else "0",
                str(failed),
            )
        return table

    def render(self, console: Console) -> None:
        console.print(self.table())
        unchecked = sum(b.scores.unchecked_samples for b in self.bindings)
        if unchecked:
            console.print(
                f"{unchecked} samples could not be checked (sandbox or verifier failure): left out of the "
                "accuracies, not counted wrong"
            )
        if any(b.failed or b.unfinished for b in self.bindings):
            console.print(
                safe(f"some episodes did not finish: re-run with --run-dir {self.run_dir} to retry")
            )
        console.print(
            safe(
                f"run: {self.run_dir} (rolegraph runs show {self.run_dir}); "
                f"summary: {self.run_dir / SUMMARY_FILE}"
            )
        )


def _rate(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.1%} [{ci[0]:.0%}, {ci[1]:.0%}]"


def sample_tokens(steps: list[Step], samples: int) -> tuple[int, ...]:
    """Completion tokens of each sample: per choice when one call sampled them all, else an even share."""
    calls = [s for s in steps if s.kind == "role" and s.error is None]
    if len(calls) == 1 and len(calls[0].choices) == samples:
        ids = [c.token_ids for c in calls[0].choices]
        if all(i is not None for i in ids):
            return tuple(len(i or ()) for i in ids)
    total = sum(s.completion_tokens for s in calls)
    return tuple(round(total / samples) for _ in range(samples)) if samples else ()


def read_report(run_dir: Path) -> EvalReport:
    """The report of an eval run directory (finished episodes are scored; the others are counted)."""
    if not (run_dir / STORE_FILE).is_file():
        raise ConfigError(f"{run_dir} holds no rolegraph run", "pass the --run-dir of an eval run")
    with Store(run_dir, create=False) as store:
        run = store.run()
        if run is None or run.graph != GRAPH_NAME:
            graph = run.graph if run else "none"
            raise ConfigError(f"{run_dir} is a run of graph '{graph}', not an eval", "pass an eval --run-dir")
        options = EvalOptions.parse(run.params.get("options", {}))
        results: dict[str, list[ProblemResult]] = {b["role"]: [] for b in options.bindings}
        models: dict[str, Counter[str]] = {b["role"]: Counter() for b in options.bindings}
        failed: dict[str, Counter[str]] = {b["role"]: Counter() for b in options.bindings}
        unfinished: Counter[str] = Counter()
        for episode in store.episodes():
            role = str(episode.input["options"]["policy_role"])
            if role not in results:
                continue
            if episode.status == "failed":
                failed[role][episode.error_kind or "other"] += 1
                continue
            if episode.status != "finished":
                unfinished[role] += 1
                continue
            steps = store.steps(episode_id=episode.id)
            models[role].update(s.model for s in steps if s.kind == "role" and s.model and s.error is None)
            passed = tuple((episode.final_state or {}).get("passed") or ())
            if not passed:  # no sample was drawn (the call failed): nothing to score
                failed[role]["no_samples"] += 1
                continue
            problem_id = str(episode.input["problem"]["id"])
            results[role].append(ProblemResult(problem_id, passed, sample_tokens(steps, len(passed))))
    bindings = [
        BindingReport(
            role=b["role"],
            label=b["label"],
            models=sorted(models[b["role"]]),
            scores=score(results[b["role"]], options.k),
            results=results[b["role"]],
            failed=dict(failed[b["role"]]),
            unfinished=unfinished[b["role"]],
        )
        for b in options.bindings
    ]
    return EvalReport(
        run_dir, options.task, options.file, options.solver, options.k, options.samples, bindings
    )
