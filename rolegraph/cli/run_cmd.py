"""`rolegraph run`, `rolegraph runs list|show`, `rolegraph export` and `rolegraph graph list|show|check`."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rolegraph.errors import ConfigError, RolegraphError

if TYPE_CHECKING:
    from rolegraph.graphs.base import GraphDef
    from rolegraph.store.records import Step

console = Console()
err_console = Console(stderr=True)


def parse_sets(items: list[str], graph: GraphDef) -> dict[str, Any]:
    """`--set key=value` options of `graph`; values are read as YAML scalars (numbers, booleans, lists).
    A key the graph does not know, or a value it rejects, is a ConfigError listing the graph's keys."""
    from rolegraph.graphs.registry import check_options

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set '{item}'", "write it as KEY=VALUE, e.g. --set difficulty=hard")
        try:
            options[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            options[key.strip()] = value
    return check_options(graph, options)


def check_prompts_dir(prompts_dir: Path | None) -> None:
    if prompts_dir is not None and not prompts_dir.is_dir():
        raise ConfigError(
            f"--prompts-dir {prompts_dir} is not a directory", "pass a directory of ROLE.md files"
        )


def run(
    graph: str = typer.Argument(
        ..., help="A built-in graph name (see `rolegraph graph list`) or a YAML spec path."
    ),
    n: int = typer.Option(..., "--n", min=1, help="Number of episodes."),
    run_dir: Path = typer.Option(
        ..., "--run-dir", help="Where the store and checkpoints go; re-run it to resume."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Config YAML (default: the built-in model, launched)."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Episodes in flight at once."),
    role: list[str] = typer.Option([], "--role", help="Rebind a role: ROLE=ENDPOINT:MODEL (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Graph option KEY=VALUE (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed for input order and sampling choices."),
    prompts_dir: Path | None = typer.Option(
        None, "--prompts-dir", help="Override role prompts with ROLE.md files."
    ),
) -> None:
    """Run (or resume) N episodes of a graph and store every step in RUN_DIR."""
    from rolegraph.config import load_config
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.registry import get_graph

    graph_def = get_graph(graph)
    cfg = load_config(config, role, known_roles=graph_def.roles)
    params = RunParams(n=n, seed=seed, run_dir=run_dir, options=parse_sets(set_, graph_def))
    check_prompts_dir(prompts_dir)
    from rolegraph.graphs.runtime import run_graph

    summary = asyncio.run(
        run_graph(
            graph_def,
            cfg,
            params,
            run_dir,
            concurrency=concurrency,
            console=err_console,
            prompts_dir=prompts_dir,
        )
    )
    summary.render(console)


# --- runs ---------------------------------------------------------------------------------------------------
runs_app = typer.Typer(help="Inspect run directories.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(root: Path = typer.Argument(Path("runs"), help="Directory to search for runs.")) -> None:
    """List the run directories under ROOT with their graph and episode counts."""
    from rolegraph.store import STORE_FILE, Store

    found = sorted({p.parent for p in root.rglob(STORE_FILE)}) if root.is_dir() else []
    if not found:
        console.print(f"no runs under {root}")
        return
    table = Table()
    for column in ("run dir", "graph", "started", "episodes", "kept", "rejected", "failed", "unfinished"):
        table.add_column(column, justify="left" if column in ("run dir", "graph", "started") else "right")
    for run_dir in found:
        with Store(run_dir, create=False) as store:
            run_record = store.run()
            counts = store.counts()
        started = (
            datetime.datetime.fromtimestamp(run_record.created_at).strftime("%Y-%m-%d %H:%M")
            if run_record
            else "?"
        )
        total = counts["finished"] + counts["failed"] + counts["running"]
        table.add_row(
            str(run_dir),
            run_record.graph if run_record else "?",
            started,
            str(total),
            str(counts["kept"]),
            str(counts["rejected"]),
            str(counts["failed"]),
            str(counts["running"]),
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    episode: str | None = typer.Option(None, "--episode", help="Show this episode's steps (for debugging)."),
) -> None:
    """Summarize a run, or trace one episode's steps: messages, completions, parsed fields, errors."""
    from rolegraph.graphs.runtime import RunSummary
    from rolegraph.store import Store

    with Store(run_dir, create=False) as store:
        if episode is None:
            RunSummary.from_store(store).render(console)
            run_record = store.run()
        else:
            run_record = None
    if episode is None:
        if run_record is not None and run_record.graph == "em":
            from rolegraph.trainers.em import render_em_report

            render_em_report(run_dir, console)
        return
    with Store(run_dir, create=False) as store:
        record = store.episode(episode)
        steps = store.steps(episode_id=episode, include_superseded=True)
        if record is None and not steps:
            known = ", ".join(e.id for e in store.episodes()[:10]) or "none"
            raise RolegraphError(f"{run_dir} has no episode '{episode}'", f"use one of: {known}")
    if record is not None:
        status = record.status + (f", kept={record.kept}" if record.kept is not None else "")
        console.print(
            f"[bold]episode {record.id}[/]: {status}, attempts {record.attempts}"
            + (f", reason: {record.reason}" if record.reason else "")
            + (f", error ({record.error_kind or 'other'}): {record.error}" if record.error else "")
        )
        if record.rewards or record.metrics:
            console.print(f"rewards: {record.rewards}; metrics: {record.metrics}")
        console.print(Panel(_pretty(record.input), title="input", title_align="left"))
    for step in steps:
        console.print(_step_panel(step))
    if record is not None and record.final_state is not None:
        console.print(Panel(_pretty(record.final_state), title="final state", title_align="left"))


def _pretty(value: Any) -> Text:
    return Text(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _step_panel(step: Step) -> Panel:
    parts: list[Any] = []
    for message in step.messages:
        parts.append(
            Text(f"[{message.get('role')}] ", style="bold cyan") + Text(str(message.get("content", "")))
        )
    for index, choice in enumerate(step.choices):
        parts.append(Text(f"── completion {index} ({choice.finish_reason})", style="bold green"))
        parts.append(Text(choice.text))
        if choice.parse_error:
            parts.append(Text(f"parse error: {choice.parse_error}", style="red"))
        else:
            parts.append(Text(f"parsed: {json.dumps(choice.parsed, ensure_ascii=False)}", style="magenta"))
        if step.rewards and index < len(step.rewards) and step.rewards[index]:
            parts.append(Text(f"rewards: {step.rewards[index]}", style="yellow"))
    if step.kind == "env":
        parts.append(Text("request: ", style="bold cyan") + _pretty(step.request))
        parts.append(Text("response: ", style="bold green") + _pretty(step.response))
    if step.metrics:
        parts.append(Text(f"metrics: {step.metrics}", style="yellow"))
    if step.error:
        parts.append(Text(f"error ({step.error_kind or 'other'}): {step.error}", style="bold red"))
    title = (
        f"step {step.id} · node {step.node} · {step.kind} {step.role}"
        + (f" · {step.endpoint}/{step.model}" if step.model else "")
        + f" · {step.latency_s:.2f}s · {step.prompt_tokens}+{step.completion_tokens} tok"
        + f" · attempt {step.attempt}"
    )
    return Panel(
        Group(*parts), title=title, title_align="left", border_style="dim" if step.error is None else "red"
    )


# --- export -------------------------------------------------------------------------------------------------
def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    fmt: str = typer.Option("raw", "--format", help="raw | sft | dpo | grpo"),
    out: Path = typer.Option(..., "--out", help="FILE.jsonl or FILE.parquet"),
    role: str | None = typer.Option(None, "--role", help="Only steps of this role."),
    kept_only: bool = typer.Option(False, "--kept-only", help="Only steps of kept episodes."),
) -> None:
    """Export a run's steps as raw rows or as TRL datasets (sft, dpo, grpo)."""
    from rolegraph.store import export_run

    report = export_run(run_dir, out, fmt=fmt, role=role, kept_only=kept_only)
    console.print(f"wrote {report.rows} {fmt} rows to {out}")
    if report.no_reward:
        console.print(
            f"left out {report.no_reward} completions whose training reward the infrastructure could not"
            " compute (None)"
        )


# --- graph --------------------------------------------------------------------------------------------------
graph_app = typer.Typer(help="List, check and draw graphs.", no_args_is_help=True)


@graph_app.command("list")
def graph_list() -> None:
    """List the built-in graphs."""
    from rolegraph.graphs.registry import list_graphs

    for name in list_graphs():
        console.print(name)


@graph_app.command("show")
def graph_show(
    graph: str = typer.Argument(..., help="A built-in graph name or a YAML spec path."),
    out: Path | None = typer.Option(None, "--out", help="Also draw it to FILE.svg (or FILE.mmd), offline."),
) -> None:
    """Print the graph as Mermaid text; with --out, draw it to an SVG file."""
    from rolegraph.graphs.registry import get_graph
    from rolegraph.graphs.render import to_mermaid, write_drawing

    graph_def = get_graph(graph)
    console.print(to_mermaid(graph_def), markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        write_drawing(graph_def, out)
        err_console.print(f"drew {graph_def.name} to {out}")


@graph_app.command("check")
def graph_check(spec: Path = typer.Argument(..., help="A YAML graph spec.")) -> None:
    """Validate a YAML spec and list every problem, each naming its node."""
    from rolegraph.graphs.spec import load_spec, validate_spec

    problems = validate_spec(load_spec(spec))
    if not problems:
        console.print(f"{spec}: ok")
        return
    for problem in problems:
        err_console.print(
            f"{spec}: node '{problem.node}': {problem.kind}: {problem.message}", highlight=False
        )
    raise RolegraphError(f"{spec}: {len(problems)} problem(s) in the graph", "fix the nodes named above")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("run")(run)
    app.command("export")(export)
    app.add_typer(runs_app, name="runs")
    app.add_typer(graph_app, name="graph")
