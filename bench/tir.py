"""Bench: the TIR loop's interpreter path (graphs/cort/).

1. Per-cell overhead through the graph: a cell run the way the `tir_turn` node runs it (`ctx.call_env` in a
   RuntimeContext: the session's `arun_cell` on the event loop, then the `interpreter` step queued for the
   run's SQLite store) against `Session.run_cell` called directly, on the same warm session, interleaved
   A-B-B-A; `Session.arun_cell` alone (no step record) is timed between them to split the overhead. Target:
   graph / direct ≤ 1.2×. The step's commit is off the cell's path (it runs on the event loop's next turn,
   while a TIR turn awaits its next model call): the bench commits it right after each graph cell, outside
   the cell's time, and reports that time too (graph + commit: what the cell costs the event loop in all).
2. Share of an episode's wall time spent in the interpreter: cort episodes on a vLLM server (every turn is a
   small python cell, forced with a structured-outputs regex), Σ interpreter step latency / episode wall time.
   Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server (otherwise part 2 is skipped).

`python bench/tir.py [--cells 200] [--episodes 2] [--write]`; --write records the figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from results import write_section  # bench/ is on sys.path when run as a script
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rolegraph.environments.sandbox.session import Session
from rolegraph.graphs.role_calls import RuntimeContext
from rolegraph.store import Store

SECTION = "## CoRT"
KINDS = {
    "trivial (x += 1; print)": ("x += 1\nprint(x)",),
    "typical (sympy / a loop)": (
        "import sympy\nprint(sympy.factorint(2**40 - 87))",
        "print(sum(i * i for i in range(100000)))",
        "s = sympy.Symbol('s')\nprint(sympy.solve(s**2 - 5 * s + 6, s))",
    ),
}
"""Cells timed, by kind: the interpreter's fixed costs show most on trivial cells."""
console = Console(stderr=True)


class _NoPool:
    def resolve(self, role: str) -> Any:
        raise AssertionError("the bench makes no model call in part 1")


def _bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]:.0f} cells/s"),
        TimeElapsedColumn(),
        console=console,
    )


async def overhead(cells: int, backend: str, kind: str) -> dict[str, float]:
    """Median seconds per cell of one kind: direct `Session.run_cell` vs the graph's `ctx.call_env` path, and
    `Session.arun_cell` alone (the event-loop round trip without the step record) to split the difference."""
    codes = KINDS[kind]
    times: dict[str, list[float]] = {"direct": [], "loop": [], "graph": [], "commit": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "run")
        store.start_run("bench-tir", {}, 0, {}, [])
        ctx = RuntimeContext(_NoPool(), store)
        session = await asyncio.to_thread(Session.open, backend)
        try:
            session.run_cell("x = 0")
            for code in codes:  # warm the session (imports, caches)
                session.run_cell(code)
            started = time.perf_counter()
            with _bar() as bar:
                task = bar.add_task(kind, total=cells, rate=0.0)
                for index in range(cells):
                    code = codes[index % len(codes)]
                    order = (
                        ("direct", "loop", "graph") if index % 4 in (0, 3) else ("graph", "loop", "direct")
                    )
                    for side in order:
                        t0 = time.perf_counter()
                        if side == "direct":
                            session.run_cell(code)
                        elif side == "loop":
                            await session.arun_cell(code)
                        else:
                            await ctx.call_env(
                                "interpreter",
                                node="tir_turn",
                                episode_id="bench",
                                request={"cell": index, "code": code},
                                fn=lambda code=code: session.arun_cell(code),
                            )
                        times[side].append(time.perf_counter() - t0)
                        if side == "graph":  # the queued step's commit, before anything else can run
                            t0 = time.perf_counter()
                            store.flush()
                            times["commit"].append(time.perf_counter() - t0)
                    bar.update(task, advance=1, rate=(index + 1) / (time.perf_counter() - started))
        finally:
            session.close()
            store.close()
    d, lp, g, c = (statistics.median(times[side]) for side in ("direct", "loop", "graph", "commit"))
    return {
        "direct_ms": d * 1e3,
        "loop_ms": lp * 1e3,
        "graph_ms": g * 1e3,
        "commit_ms": c * 1e3,
        "ratio": g / d,
        "ratio_with_commit": (g + c) / d,
        "cells": float(cells),
    }


async def interpreter_share(base_url: str, episodes: int, backend: str) -> dict[str, float]:
    """Σ interpreter latency / episode wall time over cort episodes on the server at `base_url`."""
    import httpx2

    from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.cort import SessionProvider, cort_graph
    from rolegraph.graphs.runtime import run_graph

    cards = httpx2.get(f"{base_url.rstrip('/')}/models", timeout=10).json()["data"]
    model = next(c["id"] for c in cards if not c.get("parent"))
    regex = r"```python\nprint\(sum\(i \* i for i in range\([1-9]000\)\)\)\n```\n"
    forced = SamplingParams(temperature=1.0, extra={"structured_outputs": {"regex": regex}})
    cfg = RolegraphConfig(
        endpoints={"bench": EndpointConfig(base_url=base_url)},
        roles={"cort_solver": RoleBinding(endpoint="bench", model=model, sampling=forced)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "p.jsonl"
        problems.write_text(
            "".join(
                json.dumps({"problem": f"What is {i} * 7?", "answer": str(7 * i)}) + "\n"
                for i in range(episodes)
            )
        )
        options = {"problems": str(problems), "max_calls": 4, "max_tokens": 200, "seed": 0}
        async with SessionProvider(backend) as sessions:
            await run_graph(
                cort_graph(sessions), cfg, RunParams(n=episodes, options=options), Path(tmp) / "run"
            )
        with Store(Path(tmp) / "run", create=False) as store:
            for failed in store.episodes(status="failed"):
                console.print(f"episode {failed.id} failed ({failed.error_kind}): {failed.error}")
            walls, interp, model_s, cells = [], [], [], 0
            for episode in store.episodes(status="finished"):
                steps = store.steps(episode_id=episode.id)
                walls.append((episode.finished_at or 0) - episode.started_at)
                interp.append(sum(s.latency_s for s in steps if s.role == "interpreter"))
                model_s.append(sum(s.latency_s for s in steps if s.kind == "role"))
                cells += sum(1 for s in steps if s.role == "interpreter")
    if not walls:
        raise SystemExit("no episode finished: see the failures above")
    return {
        "episodes": float(len(walls)),
        "cells": float(cells),
        "wall_s": sum(walls),
        "interpreter_share": sum(interp) / sum(walls),
        "model_share": sum(model_s) / sum(walls),
    }


def _write(part1: dict[str, dict[str, float]], part2: dict[str, float] | None, backend: str) -> None:
    load = os.getloadavg()[0]
    lines = [
        "## CoRT",
        "",
        f"`python bench/tir.py` on {platform.machine()}, {os.cpu_count()} cores, backend {backend}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load:.1f}. A cell run the way the `tir_turn` "
        "node runs it (`ctx.call_env`: the session's `arun_cell`, then its `interpreter` step queued for the "
        "store) against `Session.run_cell` called directly on the same warm session, interleaved A-B-B-A, "
        "medians. The step is committed off the cell's path, on the event loop's next turn (in a TIR turn: "
        "while the node awaits its next model call), and before the node's writes are checkpointed; the "
        "bench commits it right after each graph cell and times that too.",
        "",
        "| cells | graph | `arun_cell` alone | direct | ratio | target | deferred commit | graph + commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in part1.items():
        lines.append(
            f"| {kind}, {r['cells']:.0f} | {r['graph_ms']:.2f} ms | {r['loop_ms']:.2f} ms "
            f"| {r['direct_ms']:.2f} ms | **{r['ratio']:.2f}×** | ≤ 1.2×: "
            f"{'PASS' if r['ratio'] <= 1.2 else 'FAIL'} | {r['commit_ms']:.3f} ms "
            f"| {r['ratio_with_commit']:.2f}× |"
        )
    if part2 is not None:
        lines += [
            "",
            f"- Interpreter share of episode wall time ({part2['episodes']:.0f} cort episodes on vLLM, "
            f"{part2['cells']:.0f} cells): **{part2['interpreter_share']:.1%}** (model calls "
            f"{part2['model_share']:.1%}).",
        ]
    write_section(SECTION, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    args = parser.parse_args()
    part1 = (
        {kind: asyncio.run(overhead(args.cells, args.backend, kind)) for kind in KINDS} if args.cells else {}
    )
    for kind, r in part1.items():
        console.print(
            f"per {kind} cell: graph {r['graph_ms']:.2f} ms, direct {r['direct_ms']:.2f} ms, "
            f"ratio {r['ratio']:.2f}× (target ≤ 1.2×); arun_cell alone {r['loop_ms']:.2f} ms; "
            f"deferred commit {r['commit_ms']:.3f} ms (graph + commit {r['ratio_with_commit']:.2f}×)"
        )
    base_url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    part2 = None
    if base_url:
        part2 = asyncio.run(interpreter_share(base_url, args.episodes, args.backend))
        console.print(
            f"interpreter share of episode wall time: {part2['interpreter_share']:.1%} "
            f"(model calls {part2['model_share']:.1%}; {part2['cells']:.0f} cells in {part2['episodes']:.0f} "
            "episodes)"
        )
    else:
        console.print("part 2 skipped: set ROLEGRAPH_BENCH_BASE_URL to a vLLM server")
    if args.write:
        _write(part1, part2, args.backend)


if __name__ == "__main__":
    main()
