"""`rolegraph models prepare|list`: the built-in model and prepared model directories."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from rolegraph.config import BUILTIN_MODEL
from rolegraph.models import is_prepared, list_models, model_dir, prepare_model

models_app = typer.Typer(help="Prepare and list the models rolegraph can serve.", no_args_is_help=True)


@models_app.command("prepare")
def prepare(
    name: str = typer.Argument(BUILTIN_MODEL, help="Built-in model to convert to a Hugging Face directory."),
    force: bool = typer.Option(False, "--force", help="Convert again even when already prepared."),
) -> None:
    """Convert a built-in GGUF model into $ROLEGRAPH_HOME/models/NAME (idempotent)."""
    console = Console(stderr=True)
    if is_prepared(model_dir(name)) and not force:
        console.print(f"[green]already prepared[/] {name}")
        print(model_dir(name))
        return
    started = time.monotonic()
    with console.status(f"converting {name} (about 30 s)"):
        path = prepare_model(name, force=force)
    console.print(f"[green]prepared[/] {name} in {time.monotonic() - started:.0f} s")
    print(path)


@models_app.command("list")
def list_() -> None:
    """Show the built-in models and every prepared model directory."""
    table = Table(title="models")
    for column in ("name", "kind", "prepared", "path", "about"):
        table.add_column(column)
    for info in list_models():
        table.add_row(
            info.name,
            info.kind,
            "yes" if info.prepared else "no",
            str(info.path or "-"),
            info.description,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(models_app, name="models")
