"""`rolegraph sandbox run|triplets|doctor|build-image`: sandboxed execution from the CLI (JSON out)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rolegraph.errors import RolegraphError, SandboxError

sandbox_app = typer.Typer(help="Run model-written code in isolated sandboxes.", no_args_is_help=True)
CHUNK = 200
"""Triplet lines validated (and printed) per batch, so long files stream their results."""

BackendOption = typer.Option("auto", "--backend", help="auto | docker | bwrap | unsafe-local (no isolation).")


@sandbox_app.command("run")
def run(
    file: str = typer.Argument(..., help="A Python file, or - for stdin."),
    backend: str = BackendOption,
    timeout: float = typer.Option(10.0, "--timeout", help="Wall-clock limit in seconds."),
    memory: int = typer.Option(512, "--memory", help="Memory limit in MB."),
) -> None:
    """Run one Python program and print one JSON line; exit 0 whatever the program did."""
    from rolegraph.environments.sandbox.base import Limits, Status
    from rolegraph.environments.sandbox.pool import SandboxPool

    code = _read_source(file)
    limits = Limits(timeout_s=timeout, memory_mb=memory)
    with SandboxPool(backend, size=1, limits=limits) as pool:
        result = pool.run(code)
    print(json.dumps(result.to_json()), flush=True)
    if result.status == Status.SANDBOX_ERROR:
        raise SandboxError(
            f"the sandbox could not run the program: {result.error}", "run `rolegraph sandbox doctor`"
        )


@sandbox_app.command("triplets")
def triplets(
    file: Path = typer.Argument(..., help="JSONL with `code`, `input` and optional `output`, `id` per line."),
    backend: str = BackendOption,
    width: int = typer.Option(2, "--width", help="Parallel sandbox workers."),
    timeout: float = typer.Option(5.0, "--timeout", help="Wall-clock limit per run in seconds."),
) -> None:
    """Validate (program, input) triplets: one JSON line per input line with the output repr and checks."""
    from rolegraph.environments.sandbox.pool import SandboxPool
    from rolegraph.environments.triplets import DEFAULT_LIMITS, TripletRunner, literals_equal

    if not file.is_file():
        raise RolegraphError(f"triplet file not found: {file}", "pass a JSONL file with code/input per line")
    lines = file.read_text().splitlines()
    console = Console(stderr=True)
    with (
        SandboxPool(backend, size=width, limits=DEFAULT_LIMITS.with_(timeout_s=timeout)) as pool,
        Progress(
            TextColumn("[bold]triplets"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            disable=len(lines) < 20,
        ) as progress,
    ):
        runner = TripletRunner(pool, limits=DEFAULT_LIMITS.with_(timeout_s=timeout))
        task = progress.add_task("validate", total=len(lines), rate="")
        for start in range(0, len(lines), CHUNK):
            chunk = lines[start : start + CHUNK]
            records = [_parse_line(line, start + i + 1) for i, line in enumerate(chunk)]
            todo = [(i, r) for i, r in enumerate(records) if "error" not in r]
            items = [(r["code"], r["input"]) for _, r in todo]

            def advance(_index: int) -> None:
                done = progress.tasks[0].completed + 1
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(task, completed=done, rate=f"{done / elapsed:.0f} triplets/s")

            validations = runner.validate_many(items, width=width, on_done=advance)
            by_index = dict(zip([i for i, _ in todo], validations, strict=True))
            for i, record in enumerate(records):
                if i not in by_index:
                    progress.advance(task)
                    out = {"id": record.get("id"), "valid": False, "output": None, "deterministic": False}
                    print(json.dumps({**out, "matches": None, "error": record["error"]}))
                    continue
                v = by_index[i]
                matches = None
                if record.get("output") is not None:
                    matches = bool(v.valid and literals_equal(v.output, str(record["output"])))
                line = {"id": record.get("id"), "valid": v.valid, "output": v.output}
                print(
                    json.dumps(
                        {**line, "deterministic": v.deterministic, "matches": matches, "error": v.error}
                    )
                )
            sys.stdout.flush()


@sandbox_app.command("doctor")
def doctor(
    ray_address: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Check every node of this Ray cluster instead (`auto`: the cluster `ray start` started here).",
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="With --ray: the backend sandbox actors would run."
    ),
) -> None:
    """Report which backends work on this machine (or on each Ray node), and why the others do not (JSON)."""
    if ray_address is not None:
        _doctor_ray(ray_address, backend)
        return
    from rolegraph.environments.sandbox.selection import doctor as check_all

    console = Console(stderr=True)
    for report in check_all():
        mark = "[green]works[/]" if report.works else "[red]unavailable[/]"
        console.print(f"{report.name:>13}: {mark} - {report.reason}", highlight=False)
        print(json.dumps({"backend": report.name, "works": report.works, "reason": report.reason}))


def _doctor_ray(address: str, backend: str) -> None:
    """The doctor checks as a Ray task on each node: a table on stderr, one JSON line per node on stdout."""
    from rich.table import Table

    from rolegraph.cluster.connect import connect
    from rolegraph.environments.sandbox.ray_pool import (
        ISOLATING_BACKENDS,
        SANDBOX_RESOURCE,
        doctor_nodes,
        sandbox_nodes,
    )

    connect(address)
    reports = doctor_nodes()
    hosts = {report.node_id: name for report, name in sandbox_nodes(reports, backend, SANDBOX_RESOURCE)}
    table = Table(title=f"sandbox backends on the Ray cluster at {address}")
    for column in ("node", "address", f"{SANDBOX_RESOURCE} resource", *ISOLATING_BACKENDS, "sandbox actor"):
        table.add_column(column)
    for report in reports:
        cells = [
            "[green]works[/]"
            if report.works(name)
            else f"[red]no[/]: {report.reasons.get(name) or report.error}"
            for name in ISOLATING_BACKENDS
        ]
        offered = report.resources.get(SANDBOX_RESOURCE)
        actor = (
            f"[green]{hosts[report.node_id]}[/] ×{report.width(SANDBOX_RESOURCE)}"
            if report.node_id in hosts
            else "none"
        )
        head = " (head)" if report.offers("node:__internal_head__") else ""
        table.add_row(
            report.node_id[:12] + head,
            report.address,
            "-" if offered is None else f"{offered:g}",
            *cells,
            actor,
        )
        record = {
            "node": report.node_id,
            "address": report.address,
            "sandbox_resource": offered,
            **{
                name: {
                    "works": report.works(name),
                    "reason": report.reasons.get(name) or report.error or "works",
                }
                for name in ISOLATING_BACKENDS
            },
            "head": bool(head),
            "sandbox_actor": hosts.get(report.node_id),
            "width": report.width(SANDBOX_RESOURCE) if report.node_id in hosts else 0,
        }
        print(json.dumps(record))
    Console(stderr=True).print(table)


@sandbox_app.command("build-image")
def build_image(
    force: bool = typer.Option(False, "--force", help="Rebuild even when the image exists."),
) -> None:
    """Build the docker sandbox image offline (mmdebstrap + docker import); idempotent. Prints the tag."""
    from rolegraph.environments.sandbox.docker_backend import daemon_answers
    from rolegraph.environments.sandbox.image import build_image as build

    reason = daemon_answers()
    if reason:
        raise SandboxError(f"cannot build the sandbox image: {reason}", "start dockerd, then retry")
    console = Console(stderr=True)
    with console.status("building the sandbox image"):
        tag = build(force=force, log=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    print(tag)


def _read_source(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    path = Path(file)
    if not path.is_file():
        raise RolegraphError(
            f"program file not found: {file}", "pass a path to a .py file, or - to read stdin"
        )
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise RolegraphError(f"program file is not UTF-8 text: {file}", "pass a Python source file") from exc


def _parse_line(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {"error": f"line {number} is not valid JSON"}
    if not isinstance(record, dict):
        return {"error": f"line {number} is not a JSON object"}
    if not isinstance(record.get("code"), str) or not isinstance(record.get("input"), str):
        return {"id": record.get("id"), "error": f"line {number} needs string fields `code` and `input`"}
    return record


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(sandbox_app, name="sandbox")
