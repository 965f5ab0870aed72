"""Bench: `rolegraph eval math` throughput (problems/s, answers checked) against a bare AsyncOpenAI loop.

Both sides send the same requests to one vLLM server in the same process: the solver prompt of each
problem, n = samples, temperature 0.7 and `ignore_eos` (every answer is exactly max_tokens long, so both
generate the same tokens), then check every answer with math-verify. The eval side is the whole runtime (the
eval graph, the store, checkpoints, parsing, math-verify as recorded environment calls); the bare side is an
asyncio loop with the same concurrency. Phases run A-B-B-A, each on problems carrying a fresh nonce so neither
side gets prefix-cache hits from the other. Target: eval ≥ 0.9× bare. Figures go to bench/RESULTS.md
("## Eval").

Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server; otherwise one is launched (or reused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from results import write_section  # bench/ is on sys.path when run as a script
from rich.console import Console

from rolegraph.agents.parsers import last_boxed
from rolegraph.agents.registry import get_role
from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.environments.math_verify import verify
from rolegraph.eval import EvalSettings, evaluate
from rolegraph.eval.bindings import Binding

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500_dev.jsonl"
SECTION = "## Eval"
TEMPERATURE = 0.7
"""vLLM allows n > 1 only when sampling; ignore_eos keeps the token counts equal on both sides."""
SEED = 0
console = Console(stderr=True)


def _server() -> tuple[str, str, Any]:
    """The server's URL, its base model, and the handle of a server launched here (None when attached)."""
    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    if url:
        import httpx2

        url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        cards = httpx2.get(f"{url}/models", timeout=10).json()["data"]
        return url, next(c["id"] for c in cards if not c.get("parent")), None
    from rolegraph.serving.launcher import launch_server

    handle = launch_server("bench", LaunchSpec(), console=console)
    return handle.base_url, handle.model, handle


def _problems(work: Path, count: int) -> Path:
    """`count` MATH-500 problems, each with a fresh nonce in front (a cold prefix cache for every phase)."""
    nonce = uuid.uuid4().hex[:12]
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:count]]
    path = work / f"problems-{nonce}.jsonl"
    text = "".join(json.dumps({**r, "problem": f"[{nonce}] {r['problem']}"}) + "\n" for r in rows)
    path.write_text(text)
    return path


async def _eval(config: RolegraphConfig, args: argparse.Namespace, work: Path) -> dict[str, float]:
    file = _problems(work, args.problems)
    settings = EvalSettings(
        task="math", file=file, n=args.problems, samples=args.samples, k=args.samples,
        max_tokens=args.max_tokens, temperature=TEMPERATURE, seed=SEED, concurrency=args.concurrency,
    )  # fmt: skip
    started = time.perf_counter()
    report = await evaluate(config, [Binding("solver", "bench", "bench")], settings, work / file.stem,
                            progress=False)  # fmt: skip
    seconds = time.perf_counter() - started
    scores = report.bindings[0].scores
    return {"problems": scores.problems, "s": seconds, "avg": scores.avg_k}


async def _bare(base_url: str, model: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in _problems(work, args.problems).read_text().splitlines()]
    solver = get_role("solver")
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    semaphore = asyncio.Semaphore(args.concurrency)
    passed: list[float] = []

    async def one(row: dict[str, Any]) -> None:
        async with semaphore:
            reply = await client.chat.completions.create(
                model=model, messages=solver.render({"problem": row["problem"]}),  # type: ignore[arg-type]
                n=args.samples, max_tokens=args.max_tokens, temperature=TEMPERATURE, seed=SEED,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )  # fmt: skip
        answers = [last_boxed(c.message.content or "") for c in reply.choices]
        verdicts = [await asyncio.to_thread(verify, a, row["answer"]) for a in answers]
        passed.append(sum(verdicts) / len(verdicts))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for row in rows:
            group.create_task(one(row))
    seconds = time.perf_counter() - started
    await client.close()
    return {"problems": len(rows), "s": seconds, "avg": sum(passed) / len(passed)}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="eval throughput bench (see the module docstring)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    return parser.parse_args()


async def main() -> int:
    args = _args()
    base_url, model, handle = _server()
    try:
        return await _measure(args, base_url, model)
    finally:
        if handle is not None and handle.owned:
            handle.stop()


async def _measure(args: argparse.Namespace, base_url: str, model: str) -> int:
    sampling = SamplingParams(extra={"ignore_eos": True})
    config = RolegraphConfig(
        endpoints={"bench": EndpointConfig(base_url=base_url)},
        roles={"solver": RoleBinding(endpoint="bench", model=model, sampling=sampling)},
    )
    work = Path(tempfile.mkdtemp(prefix="rg-bench-eval-"))
    load_before = os.getloadavg()[0]
    phases: dict[str, list[dict[str, float]]] = {"eval": [], "bare": []}
    for name in ("eval", "bare", "bare", "eval"):
        result = await (_eval(config, args, work) if name == "eval" else _bare(base_url, model, args, work))
        phases[name].append(result)
        console.print(f"{name}: {result['problems']} problems in {result['s']:.1f} s "
                      f"({result['problems'] / result['s']:.3f} problems/s)")  # fmt: skip
    rate = {k: sum(r["problems"] for r in v) / sum(r["s"] for r in v) for k, v in phases.items()}
    ratio = rate["eval"] / rate["bare"]
    text = (
        f"{SECTION}\n\n"
        f"`python bench/eval.py --problems {args.problems} --samples {args.samples} --max-tokens "
        f"{args.max_tokens} --concurrency {args.concurrency}` ({platform.machine()}, {os.cpu_count()} cores, "
        f"{model}, {time.strftime('%Y-%m-%d %H:%M')}, load average {load_before:.1f} → "
        f"{os.getloadavg()[0]:.1f}). MATH-500 problems, temperature 0.7 (seed 0), ignore_eos, every answer "
        "checked with math-verify on both sides; phases A-B-B-A, totals over both rounds.\n\n"
        "| side | problems/s | mean accuracy | target |\n|---|---|---|---|\n"
        f"| `rolegraph eval` (graph, store, checks as env steps) | {rate['eval']:.3f} | "
        f"{phases['eval'][0]['avg']:.2f} | |\n"
        f"| bare AsyncOpenAI loop + math-verify | {rate['bare']:.3f} | {phases['bare'][0]['avg']:.2f} | |\n"
        f"| ratio eval / bare | **{ratio:.2f}×** | | ≥ 0.9×: {'PASS' if ratio >= 0.9 else 'FAIL'} |\n"
    )
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
