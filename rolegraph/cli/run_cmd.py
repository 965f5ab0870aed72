"""`rolegraph run`, `rolegraph runs list|show`, `rolegraph export` and `rolegraph graph list|show|check`."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rolegraph.cluster.cli import with_ray
from rolegraph.errors import ConfigError, RolegraphError
from rolegraph.terminal import safe, safe_console

if TYPE_CHECKING:
    from rolegraph.graphs.base import GraphDef
    from rolegraph.store.records import Step

console = safe_console()
err_console = safe_console(stderr=True)


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
    wait: bool = typer.Option(
        False, "--wait", help="If another command is writing RUN_DIR, wait for it instead of failing."
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
            wait=wait,
        )
    )
    summary.render(console)


# --- runs ---------------------------------------------------------------------------------------------------
runs_app = typer.Typer(help="Inspect run directories.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(root: Path = typer.Argument(Path("runs"), help="Directory to search for runs.")) -> None:
    """List the run directories under ROOT with their graph, episode counts and, for live runs, the writer's
    pid (read without taking any lock)."""
    from rolegraph.store import STORE_FILE, Store
    from rolegraph.store.lock import live_writer

    found = sorted({p.parent for p in root.rglob(STORE_FILE)}) if root.is_dir() else []
    if not found:
        console.print(safe(f"no runs under {root}"))
        return
    table = Table()
    columns = ("run dir", "graph", "started", "live", "episodes", "kept", "rejected", "failed", "unfinished")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("run dir", "graph", "started", "live") else "right"
        )
    for run_dir in found:
        writer = live_writer(run_dir)
        live = safe(f"pid {writer.pid}", "bold green") if writer is not None else safe("-")
        try:
            with Store(run_dir, create=False) as store:
                run_record = store.run()
                counts = store.counts()
        except RolegraphError as exc:  # one damaged run does not hide the others
            table.add_row(safe(run_dir), safe(exc.message, "red"), "", live, *([""] * 5))
            continue
        started = (
            datetime.datetime.fromtimestamp(run_record.created_at).strftime("%Y-%m-%d %H:%M")
            if run_record
            else "?"
        )
        total = counts["finished"] + counts["failed"] + counts["running"]
        table.add_row(
            safe(run_dir),
            safe(run_record.graph if run_record else "?"),
            started,
            live,
            str(total),
            str(counts["kept"]),
            str(counts["rejected"]),
            str(counts["failed"]),
            str(counts["running"]),
        )
    console.print(table)


@runs_app.command("check")
def runs_check(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Check a run directory (SQLite integrity, steps of finished episodes, no step current twice, checkpoints
    agree with the store, exports not older than the run): one line per problem, or "ok". Reads only."""
    from rolegraph.store.check import check_run
    from rolegraph.store.lock import live_writer

    writer = live_writer(run_dir)
    if writer is not None:
        err_console.print(safe(f"note: pid {writer.pid} ({writer.command}) is writing {run_dir}"))
    problems = check_run(run_dir)
    if not problems:
        console.print(safe(f"{run_dir}: ok"))
        return
    for problem in problems:
        console.print(safe(f"{run_dir}: {problem.kind}: {problem.message}"), soft_wrap=True)
    raise typer.Exit(1)


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
        graph = run_record.graph if run_record is not None else None
        if graph == "em":
            from rolegraph.trainers.em import render_em_report

            render_em_report(run_dir, console)
        elif graph == "cort":
            from rolegraph.graphs.cort.report import render_cort_report

            render_cort_report(run_dir, console)
        elif graph == "azr-train":
            from rolegraph.trainers.azr import render_azr_report

            render_azr_report(run_dir, console)
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
            safe(f"episode {record.id}", "bold")
            + safe(
                f": {status}, attempts {record.attempts}"
                + (f", reason: {record.reason}" if record.reason else "")
                + (f", error ({record.error_kind or 'other'}): {record.error}" if record.error else "")
            )
        )
        if record.rewards or record.metrics:
            console.print(safe(f"rewards: {record.rewards}; metrics: {record.metrics}"))
        console.print(Panel(_pretty(record.input), title="input", title_align="left"))
    for step in steps:
        console.print(_step_panel(step))
    if record is not None and record.final_state is not None:
        console.print(Panel(_pretty(record.final_state), title="final state", title_align="left"))


def _pretty(value: Any) -> Text:
    return safe(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _step_panel(step: Step) -> Panel:
    """One step's trace. Everything in it came from a model, a program or a run record: all safe text."""
    parts: list[Any] = []
    for message in step.messages:
        parts.append(safe(f"[{message.get('role')}] ", "bold cyan") + safe(message.get("content", "")))
    for index, choice in enumerate(step.choices):
        parts.append(safe(f"── completion {index} ({choice.finish_reason})", "bold green"))
        parts.append(safe(choice.text))
        if choice.parse_error:
            parts.append(safe(f"parse error: {choice.parse_error}", "red"))
        else:
            parts.append(safe(f"parsed: {json.dumps(choice.parsed, ensure_ascii=False)}", "magenta"))
        if step.rewards and index < len(step.rewards) and step.rewards[index]:
            parts.append(safe(f"rewards: {step.rewards[index]}", "yellow"))
    if step.kind == "env":
        parts.append(Text("request: ", style="bold cyan") + _pretty(step.request))
        parts.append(Text("response: ", style="bold green") + _pretty(step.response))
    if step.metrics:
        parts.append(safe(f"metrics: {step.metrics}", "yellow"))
    if step.error:
        parts.append(safe(f"error ({step.error_kind or 'other'}): {step.error}", "bold red"))
    title = safe(
        f"step {step.id} · node {step.node} · {step.kind} {step.role}"
        + (f" · {step.endpoint}/{step.model}" if step.model else "")
        + f" · {step.latency_s:.2f}s · {step.prompt_tokens}+{step.completion_tokens} tok"
        + f" · attempt {step.attempt}",
        one_line=True,
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
    console.print(safe(f"wrote {report.rows} {fmt} rows to {out}"))
    if report.no_reward:
        console.print(
            f"left out {report.no_reward} completions whose training reward the infrastructure could not"
            " compute (None)"
        )


# --- graph --------------------------------------------------------------------------------------------------
graph_app = typer.Typer(help="List, check and draw graphs.", no_args_is_help=True)


@graph_app.command("list")
def graph_list() -> None:
    """List the built-in and plugin graphs, with where each comes from."""
    from rolegraph.graphs.registry import graph_sources

    for source in graph_sources():
        console.print(safe(f"{source.name}  {source.source}"))


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
        err_console.print(safe(f"drew {graph_def.name} to {out}"))


@graph_app.command("check")
def graph_check(graph: str = typer.Argument(..., help="A YAML graph spec, or a graph's name.")) -> None:
    """Validate a graph and list every problem, each naming its node."""
    from rolegraph.graphs.registry import check_graph

    problems = check_graph(graph)
    if not problems:
        console.print(safe(f"{graph}: ok"))
        return
    for problem in problems:  # each message names its node
        err_console.print(safe(f"{graph}: {problem.kind}: {problem.message}"))
    raise RolegraphError(f"{graph}: {len(problems)} problem(s) in the graph", "fix the nodes named above")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("run")(with_ray(run))
    app.command("export")(export)
    app.add_typer(runs_app, name="runs")
    app.add_typer(graph_app, name="graph")
