"""The `rolegraph` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from rolegraph.cli import (
    analyze_cmd,
    eval_cmd,
    main_cmd,
    models_cmd,
    new_cmd,
    run_cmd,
    sandbox_cmd,
    serve_cmd,
    studio_cmd,
    train_cmd,
)
from rolegraph.errors import RolegraphError
from rolegraph.terminal import safe

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


for module in (
    main_cmd,
    models_cmd,
    serve_cmd,
    sandbox_cmd,
    run_cmd,
    train_cmd,
    eval_cmd,
    analyze_cmd,
    new_cmd,
    studio_cmd,
):
    module.register(app)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback.

    The message may quote a model's or a program's output, so it is printed as safe text on one line. A run
    stopped by SIGTERM or SIGINT exits 128 + the signal's number, as the shell reports a killed command."""
    try:
        app()
    except RolegraphError as exc:
        line = Text("error: ", style="bold red") + safe(str(exc), one_line=True)
        Console(stderr=True).print(line, highlight=False, soft_wrap=True)
        sys.exit(_exit_code(exc))


def _exit_code(exc: RolegraphError) -> int:
    runtime = sys.modules.get("rolegraph.graphs.runtime")  # not imported: no run, so not an interruption
    if runtime is not None and isinstance(exc, runtime.RunInterruptedError):
        return 128 + int(exc.signum)
    return 2
