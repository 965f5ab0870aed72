"""`rolegraph eval math [--tir]`: accuracy and tokens per solved problem on a JSONL of math problems.

With `--tir`, one cort run holds both solvers on the same problems: the TIR solver (python cells in stateful
sandbox sessions) and the plain solver, reported side by side (`graphs/cort/report.py`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def check_sandbox(backend: str) -> None:
    """A SandboxError now, before any server starts, when a named backend does not work on this machine."""
    from rolegraph.environments.sandbox.selection import make_backend
    from rolegraph.errors import SandboxError

    if backend == "auto":
        return
    reason = make_backend(backend).check()
    if reason:
        raise SandboxError(f"sandbox backend {backend} does not work here: {reason}", "pass --sandbox auto")


def math(
    problems: Path = typer.Argument(
        ..., help="JSONL of problems with answers, e.g. ../shared/data/aime2024.jsonl."
    ),
    n: int = typer.Option(4, "--n", min=1, help="Problems to evaluate (the first N)."),
    tir: bool = typer.Option(False, "--tir", help="Evaluate the TIR solver next to the plain solver."),
    run_dir: Path = typer.Option(Path("runs/eval-math"), "--run-dir", help="Store (re-running resumes)."),
    samples: int = typer.Option(1, "--samples", min=1, help="Attempts per problem and solver."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="Model tokens per attempt."),
    max_calls: int = typer.Option(15, "--max-calls", min=0, help="Code executions per TIR attempt."),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox backend: auto, docker, bwrap."),
    concurrency: int = typer.Option(4, "--concurrency", min=1),
    seed: int | None = typer.Option(None, "--seed"),
    config: Path | None = typer.Option(None, "--config", help="Config YAML (default: the built-in model)."),
    role: list[str] = typer.Option([], "--role", help="Rebind a role: ROLE=ENDPOINT:MODEL (repeatable)."),
    prompts_dir: Path | None = typer.Option(None, "--prompts-dir", help="Override role prompts."),
) -> None:
    """Evaluate the plain solver (and with --tir the TIR solver) on math problems."""
    from rolegraph.cli.run_cmd import check_prompts_dir
    from rolegraph.config import load_config
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.cort import CORT, SessionProvider, cort_graph
    from rolegraph.graphs.cort.report import render_cort_report
    from rolegraph.graphs.cort.state import CortOptions
    from rolegraph.graphs.runtime import run_graph
    from rolegraph.graphs.selfplay.problems import load_problems

    loaded = load_problems(problems, n)
    if not any(p.answer is not None for p in loaded):
        from rolegraph.errors import ConfigError

        raise ConfigError(
            f"{problems} has no problem with an 'answer'", "give each line an 'answer' to score"
        )
    check_prompts_dir(prompts_dir)
    options = CortOptions.parse(
        {
            "problems": str(problems),
            "modes": ["tir", "plain"] if tir else ["plain"],
            "samples": samples,
            "max_tokens": max_tokens,
            "max_calls": max_calls,
            "seed": seed,
        }
    ).model_dump(mode="json")
    check_sandbox(sandbox)
    cfg = load_config(config, role, known_roles=CORT.roles)

    async def main() -> Any:
        async with SessionProvider(sandbox) as sessions:
            return await run_graph(
                cort_graph(sessions),
                cfg,
                RunParams(n=n, seed=seed or 0, options=options),
                run_dir,
                concurrency=concurrency,
                console=err_console,
                prompts_dir=prompts_dir,
            )

    summary = asyncio.run(main())
    summary.render(console)
    render_cort_report(run_dir, console)
