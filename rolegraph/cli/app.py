"""The `rolegraph` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from rolegraph.cli import main_cmd, models_cmd, run_cmd, sandbox_cmd, serve_cmd, train_cmd
from rolegraph.errors import RolegraphError

app = typer.Typer(
    name="rolegraph",
    help="Task synthesis and self-play training of LLM reasoners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Task synthesis and self-play training of LLM reasoners."""


@app.command()
def version() -> None:
    """Print rolegraph's version."""
    from rolegraph import __version__

    print(__version__)


for module in (main_cmd, models_cmd, serve_cmd, sandbox_cmd, run_cmd, train_cmd):
    module.register(app)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except RolegraphError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
