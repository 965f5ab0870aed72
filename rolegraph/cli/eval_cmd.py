"""`rolegraph eval BENCHMARK`: accuracy of a role (a base model or an adapter) on a benchmark.

Each benchmark is one command on `eval_app`; `cruxeval` lives here, others (math, code) go beside it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from rolegraph.cluster.cli import with_ray
from rolegraph.terminal import safe

console = Console()
eval_app = typer.Typer(
    help="Evaluate a role on a benchmark (answers checked in the sandbox).", no_args_is_help=True
)

CRUXEVAL_FILES = (Path("../shared/data/cruxeval_dev.jsonl"), Path("shared/data/cruxeval_dev.jsonl"))
"""Where `eval cruxeval` looks for the shared dev split when no --file is given."""


def _default_file(candidates: tuple[Path, ...], name: str) -> Path:
    from rolegraph.errors import ConfigError

    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        f"no --file given and no {name} found in {', '.join(map(str, candidates))}", "pass --file F"
    )


@eval_app.command("cruxeval")
@with_ray
def cruxeval(
    file: Path | None = typer.Option(None, "--file", help="CRUXEval JSONL (default: the shared dev split)."),
    mode: str = typer.Option("output", "--mode", help="output (CRUXEval-O) or input (CRUXEval-I)."),
    n: int = typer.Option(400, "--n", min=1, help="Problems to evaluate (the first N)."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Store of the answers (default: runs/eval/cruxeval-MODE-MODEL; resumable)."
    ),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox backend: auto, docker or bwrap."),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    config: Path | None = typer.Option(None, "--config", help="Config YAML (default: the built-in model)."),
    role: list[str] = typer.Option([], "--role", help="Bind the solver: solver=ENDPOINT:MODEL (repeatable)."),
    prompts_dir: Path | None = typer.Option(
        None, "--prompts-dir", help="Override prompts with ROLE.md files."
    ),
) -> None:
    """CRUXEval-O or CRUXEval-I accuracy of the solver role, answering greedily in the R1 format."""
    from rolegraph.cli.run_cmd import check_prompts_dir
    from rolegraph.config import load_config
    from rolegraph.errors import ConfigError
    from rolegraph.graphs.azr.cruxeval import cruxeval_graph, load_problems
    from rolegraph.graphs.azr.sandbox import TripletSandbox
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.runtime import run_graph

    if mode not in ("output", "input"):
        raise ConfigError(f"--mode {mode}: unknown mode", "use --mode output or --mode input")
    path = file or _default_file(CRUXEVAL_FILES, "cruxeval_dev.jsonl")
    problems = load_problems(path, mode)
    check_prompts_dir(prompts_dir)
    cfg = load_config(config, role)
    binding = cfg.roles.get("solver")
    model = f"{binding.endpoint}-{binding.model or 'base'}" if binding else "default"
    run_dir = run_dir or Path("runs/eval") / f"cruxeval-{mode}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}"
    provider = TripletSandbox(sandbox)
    options = {"file": str(path), "mode": mode, "max_tokens": max_tokens}

    async def main() -> None:
        try:
            await run_graph(
                cruxeval_graph(provider),
                cfg,
                RunParams(n=min(n, len(problems)), options=options),
                run_dir,
                concurrency=concurrency,
                prompts_dir=prompts_dir,
            )
        finally:
            provider.close()

    asyncio.run(main())
    report = cruxeval_report(run_dir)
    label = "CRUXEval-O" if mode == "output" else "CRUXEval-I"
    console.print(
        safe(
            f"{label} ({model}): {report.correct}/{report.judged} correct = {report.accuracy:.1%}; "
            f"{report.formatted}/{report.judged} answers in the R1 format; {report.unjudged} unjudged "
            f"(sandbox failures); run dir {run_dir}"
        )
    )


@dataclass(frozen=True)
class CruxReport:
    """Accuracy of a finished cruxeval run: correct / judged (unjudged answers are left out and counted)."""

    correct: int
    judged: int
    formatted: int
    unjudged: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.judged if self.judged else 0.0


def cruxeval_report(run_dir: Path) -> CruxReport:
    from rolegraph.store import Store

    with Store(run_dir, create=False) as store:
        episodes = store.episodes(status="finished")
    judged = [e for e in episodes if "correct" in e.metrics]
    return CruxReport(
        correct=sum(1 for e in judged if e.metrics["correct"] == 1.0),
        judged=len(judged),
        formatted=sum(1 for e in judged if e.metrics.get("formatted") == 1.0),
        unjudged=len(episodes) - len(judged),
    )


def register(app: typer.Typer) -> None:
    """Add `rolegraph eval` with its benchmarks to the root app."""
    from rolegraph.cli import eval_tasks

    eval_app.command("math")(with_ray(eval_tasks.math))
    eval_app.command("code")(with_ray(eval_tasks.code))
    app.add_typer(eval_app, name="eval")
