"""Sandbox speed: warm docker/bwrap pools vs `docker run` per execution vs an unisolated process pool.

The unisolated baseline runs code the way the Absolute Zero reference executor does (see
bench/reference_executor.py: a pebble process pool whose worker `exec`s the program under a SIGALRM timeout;
fine here, it only runs this file's fixed programs, never model text). A second, even thinner unisolated row
(a stdlib process pool that only `exec`s) is printed for reference. The pools are the library defaults: plain
workers for the trivial program; the sympy program goes to the pool's heavy lane (workers with numpy and
sympy imported and warmed up). Every setup is measured in each of `--repeat` rounds, side by side; the
figures are per-setup medians over the rounds.
Prints figures and writes the "## sandbox" section of bench/RESULTS.md.
Usage: .venv/bin/python bench/sandbox.py [--n 200] [--width 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from reference_executor import ReferenceExecutor  # bench/ is on sys.path when run as a script
from results import write_section

from rolegraph.environments.sandbox.base import Limits
from rolegraph.environments.sandbox.docker_backend import container_run_argv
from rolegraph.environments.sandbox.image import build_image
from rolegraph.environments.sandbox.pool import Job, SandboxPool

PROGRAMS = {
    "trivial": "print(sum(range(100)))",
    "sympy": "import sympy\nx = sympy.Symbol('x')\nprint(sympy.expand((x + 1) ** 3))",
}
REFERENCE = "unisolated pool, Absolute Zero reference executor"
MINIMAL = "unisolated pool, bare stdlib exec"


def exec_in_process(code: str) -> str:
    """The thinnest unisolated run: exec with captured stdout in a stdlib pool worker."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__main__"})
    return buffer.getvalue()


def measure(run_one: Callable[[], object], n: int, width: int) -> dict[str, float]:
    """n executions, `width` at a time: executions/s and per-execution latency percentiles (ms)."""
    latencies: list[float] = []

    def timed(_: int) -> None:
        started = time.perf_counter()
        run_one()
        latencies.append(time.perf_counter() - started)

    timed(0)  # warm-up, not counted
    latencies.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=width) as executor:
        list(executor.map(timed, range(n)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "per_s": n / wall,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def docker_run_once(image: str, code: str) -> None:
    name = f"rolegraph-bench-{uuid.uuid4().hex[:10]}"
    argv = container_run_argv(name, Limits(), image)
    subprocess.run([*argv, "python3", "-c", code], capture_output=True, check=True, timeout=120)


Rows = dict[tuple[str, str], dict[str, float]]


def one_round(args: argparse.Namespace, image: str) -> Rows:
    rows: Rows = {}
    for program_name, code in PROGRAMS.items():
        for backend in ("docker", "bwrap"):
            with SandboxPool(backend, size=args.width) as pool:
                pool.warm(heavy=True)
                job = Job(op="exec", code=code)
                rows[(f"warm {backend} pool", program_name)] = measure(
                    lambda p=pool, j=job: _ok(p.execute(j)), args.n, args.width
                )  # type: ignore[misc]
        with ReferenceExecutor(args.width) as reference:
            rows[(REFERENCE, program_name)] = measure(
                lambda c=code, r=reference: _done(r.apply(c)),
                args.n,
                args.width,  # type: ignore[misc]
            )
        with ProcessPoolExecutor(max_workers=args.width) as executor:
            list(executor.map(exec_in_process, [code] * args.width))
            rows[(MINIMAL, program_name)] = measure(
                lambda c=code: executor.submit(exec_in_process, c).result(),
                args.n,
                args.width,  # type: ignore[misc]
            )
        rows[("docker run per execution", program_name)] = measure(
            lambda c=code: docker_run_once(image, c),
            args.n_docker_run,
            args.width,  # type: ignore[misc]
        )
    return rows


def median_rows(rounds: list[Rows]) -> Rows:
    """Per setup and metric, the median over the rounds."""
    return {
        key: {metric: statistics.median(r[key][metric] for r in rounds) for metric in rounds[0][key]}
        for key in rounds[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="executions per (setup, program)")
    parser.add_argument("--n-docker-run", type=int, default=12, help="executions for `docker run` (slow)")
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians over them")
    args = parser.parse_args()
    image = build_image()
    rounds = []
    loads = [os.getloadavg()[0]]
    for index in range(args.repeat):
        rounds.append(one_round(args, image))
        loads.append(os.getloadavg()[0])
        print(f"round {index + 1}/{args.repeat}:", _ratios(rounds[-1]), flush=True)
    report = render(median_rows(rounds), rounds, args, loads)
    print(report)
    write_section("## sandbox", report)


def _ratios(rows: Rows) -> str:
    parts = []
    for program in PROGRAMS:
        warm = rows[("warm docker pool", program)]["per_s"]
        parts.append(
            f"{program}: reference/docker {rows[(REFERENCE, program)]['per_s'] / warm:.1f}x, "
            f"docker/docker-run {warm / rows[('docker run per execution', program)]['per_s']:.0f}x"
        )
    return "; ".join(parts)


def _ok(result: object) -> None:
    assert getattr(result, "ok", False), result


def _done(result: tuple[str, str]) -> None:
    assert result[1] == "Done", result


def render(rows: Rows, rounds: list[Rows], args: argparse.Namespace, loads: list[float]) -> str:
    lines = [
        "## sandbox",
        "",
        f"`bench/sandbox.py --n {args.n} --width {args.width} --repeat {args.repeat} --n-docker-run "
        f"{args.n_docker_run}` ({os.cpu_count()}-core CPU machine; all setups measured side by side in each "
        "round; figures are "
        f"medians over {args.repeat} rounds; `docker run` with {args.n_docker_run} executions per round). "
        f"Pools are the library defaults with parallel width {args.width}: plain workers for the trivial "
        "program, the heavy lane (numpy and sympy imported and warmed up once per worker, sympy's cache "
        "cleared) for the sympy program. The unisolated pool keeps sympy imported, and its cache warm, after "
        "its first run. 1-minute load average of the machine at the start and after each round: "
        + ", ".join(f"{load:.1f}" for load in loads)
        + " (docker containers sit in their own cgroup v1 CPU group, so under heavy load they get a "
        "smaller share of the CPU than the bwrap and unisolated processes).",
        "",
        "| setup | program | executions/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for (setup, program), m in rows.items():
        lines.append(f"| {setup} | {program} | {m['per_s']:.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} |")
    lines.append("")
    for program in PROGRAMS:
        warm = rows[("warm docker pool", program)]["per_s"]
        cold = rows[("docker run per execution", program)]["per_s"]
        bare = rows[(REFERENCE, program)]["per_s"]
        minimal = rows[(MINIMAL, program)]["per_s"]
        bwrap = rows[("warm bwrap pool", program)]["per_s"]
        lines.append(
            f"- {program}: warm docker pool is **{warm / cold:.0f}x** faster than `docker run` per execution "
            f"(target >= 20x); the reference executor's unisolated pool is **{bare / warm:.1f}x** faster "
            f"than the warm docker pool (target <= 3x on trivial) and {bare / bwrap:.1f}x faster than the "
            f"warm bwrap pool; the bare stdlib pool is {minimal / warm:.1f}x faster than the warm docker "
            "pool."
        )
    lines += ["", "Per round (same ratios, each round on its own):", ""]
    lines += [f"- round {i + 1}: {_ratios(r)}" for i, r in enumerate(rounds)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
