"""`rolegraph main`: the job `make run` runs on a fresh machine, end to end.

1. prepare the built-in model; 2. start vLLM through an EndpointPool with the config (default: launched);
3. run the `promptcot` graph with a small n; 4. print the summary and the export command. Where the promptcot
graph is not installed it does one real chat round trip per configured role instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rolegraph.config import RolegraphConfig
from rolegraph.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

PROBE = [{"role": "user", "content": "What is 2+3? Answer briefly."}]


def _cap_tokens(config: RolegraphConfig, max_tokens: int | None) -> RolegraphConfig:
    """Cap every role's completions at `max_tokens` (keeps the main job to a few minutes on CPU)."""
    if max_tokens is None:
        return config
    roles = {
        name: binding.model_copy(update={"sampling": binding.sampling.merged(max_tokens=max_tokens)})
        for name, binding in config.roles.items()
    }
    return config.model_copy(update={"roles": roles})


async def round_trips(config: RolegraphConfig) -> Table:
    """One real chat call per configured role, through the same pool the graphs use."""
    from rolegraph.serving import EndpointPool

    table = Table(title="one round trip per role", title_justify="left")
    for column in ("role", "endpoint", "model", "latency", "tokens", "reply"):
        table.add_column(column)
    async with EndpointPool(config) as pool:
        for role, binding in config.roles.items():
            client, model, sampling = pool.resolve(role)
            result = await client.chat(
                PROBE, model=model, sampling=sampling.merged(max_tokens=16, temperature=0.0)
            )
            table.add_row(
                role,
                binding.endpoint,
                model,
                f"{result.latency_s:.2f}s",
                str(result.usage.completion_tokens),
                result.text.strip().replace("\n", " ")[:60],
            )
    return table


def main(
    run_dir: Path = typer.Option(
        Path("runs/main"), "--run-dir", help="Where the run is stored (re-run to resume)."
    ),
    n: int = typer.Option(4, "--n", min=1, help="PromptCoT episodes."),
    config: Path | None = typer.Option(
        None, "--config", help="Config YAML (default: launch the built-in model)."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Episodes in flight at once."),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Cap every role's completion length."
    ),
) -> None:
    """The main job: prepare the model, start vLLM, run PromptCoT with a small n, print summary and export."""
    from rolegraph.config import load_config
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.registry import get_graph
    from rolegraph.graphs.runtime import run_graph
    from rolegraph.models import prepare_model

    err_console.print("[bold]1/4[/] preparing the built-in model")
    path = prepare_model()
    err_console.print(f"      model directory: {path}")
    cfg = _cap_tokens(load_config(config), max_tokens)
    try:
        graph = get_graph("promptcot")
    except ConfigError as exc:
        err_console.print(
            f"[yellow]promptcot is not available ({exc.message}); checking every role instead[/]"
        )
        err_console.print("[bold]2/4[/] starting the endpoints and calling each role once")
        console.print(asyncio.run(round_trips(cfg)))
        return
    err_console.print(
        f"[bold]2/4[/] starting the endpoints; [bold]3/4[/] running promptcot with n={n} into {run_dir}"
    )
    summary = asyncio.run(
        run_graph(
            graph, cfg, RunParams(n=n, run_dir=run_dir), run_dir, concurrency=concurrency, console=err_console
        )
    )
    err_console.print("[bold]4/4[/] summary")
    summary.render(console)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("main")(main)
