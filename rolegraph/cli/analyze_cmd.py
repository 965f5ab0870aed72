"""`rolegraph analyze RUN_DIR`: difficulty, diversity and the funnel of a run's problems (rolegraph/eval)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from rolegraph.terminal import safe_console

console = safe_console()


def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory (e.g. of `rolegraph run promptcot`)."),
    against: list[Path] = typer.Option(
        [], "--against", help="A JSONL problem file or run dir to compare with (repeatable)."
    ),
    solver: str | None = typer.Option(
        None, "--solver", help="ENDPOINT:MODEL whose pass rate and tokens measure difficulty."
    ),
    out: Path | None = typer.Option(None, "--out", help="Plots and report.html (default: RUN_DIR/analysis)."),
    n: int = typer.Option(200, "--n", min=1, help="The most problems taken from each set."),
    samples: int = typer.Option(2, "--samples", min=1, help="Solver answers per problem."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox for code problems: auto, docker, bwrap."),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    config: Path | None = typer.Option(None, "--config", help="Config YAML naming the solver's endpoint."),
) -> None:
    """Difficulty (solver pass rate, reasoning tokens), diversity (MiniLM embeddings, MDS) and the
    proposed → valid → judged → kept funnel; PNG plots, an HTML report and tables."""
    from rolegraph.errors import ConfigError
    from rolegraph.eval.analyze import AnalyzeSettings
    from rolegraph.eval.analyze import analyze as run_analysis
    from rolegraph.eval.bindings import solver_bindings
    from rolegraph.eval.funnel import read_funnel

    read_funnel(run_dir)  # not a run: fail before anything starts
    settings = AnalyzeSettings(
        run_dir=run_dir,
        out=out or run_dir / "analysis",
        against=list(against),
        n=n,
        samples=samples,
        max_tokens=max_tokens,
        temperature=temperature,
        sandbox=sandbox,
        concurrency=concurrency,
    )
    for source in against:
        if not source.exists():
            raise ConfigError(f"--against {source} does not exist", "pass a JSONL problem file or a run dir")

    async def main() -> None:
        if solver is None:
            analysis = await run_analysis(settings)
        else:
            from rolegraph.serving import EndpointPool

            cfg, bindings = solver_bindings(config, [f"solver={solver}"])
            async with EndpointPool(cfg) as pool:
                analysis = await run_analysis(settings, pool, bindings[0])
        analysis.render(console)

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
