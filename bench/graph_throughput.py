"""Bench: the `promptcot` graph's token throughput against a bare AsyncOpenAI loop and a sequential run.

Three measurements on one vLLM server, side by side in the same process:
  graph       the promptcot graph at concurrency 32 through the runtime (store, checkpoints, parsing)
  bare loop   the same model calls (messages + sampling replayed from the graph run's store) issued by a plain
              AsyncOpenAI loop at concurrency 32: the serving ceiling
  sequential  the graph at concurrency 1 (fewer episodes)
Targets: graph ≥ 0.9× bare loop tok/s; graph ≥ 4× sequential tok/s. Figures go to bench/RESULTS.md.

Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server; otherwise one is launched (or reused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from results import write_section  # bench/ is on sys.path when run as a script
from rich.console import Console

from rolegraph.config import (
    DEFAULT_ROLES,
    EndpointConfig,
    LaunchSpec,
    RoleBinding,
    RolegraphConfig,
    SamplingParams,
)
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.promptcot.concepts import DEFAULT_SEEDS
from rolegraph.graphs.promptcot.graph import PROMPTCOT
from rolegraph.graphs.runtime import PREPARE_EPISODE, run_graph
from rolegraph.store import Store

CONCURRENCY = 32
# Twice the concurrency in episodes: an episode's calls are sequential, so fewer episodes than slots would
# leave the server half idle and measure the workload's shape rather than the runtime's overhead.
EPISODES = 64
ROUNDS = 1
"""Graph and bare loop alternate in rounds, so load from other processes hits both alike."""
SEQUENTIAL_EPISODES = 3
MAX_TOKENS = 128
"""Per call. Synthesis writes rationales and problems of hundreds of tokens; at 32 the runs measure prompt
processing (the same work at any concurrency) rather than generation, which is what batching speeds up."""
SECTION = "## graph_throughput"
console = Console(stderr=True)


def _server() -> tuple[str, str, Any]:
    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    if url:
        import httpx2

        url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        cards = httpx2.get(f"{url}/models", timeout=10).json()["data"]
        return url, next(c["id"] for c in cards if not c.get("parent")), None
    from rolegraph.serving.launcher import launch_server

    # Dev mode exposes /reset_prefix_cache: the bare loop replays the graph's exact prompts, so without a
    # reset it would get prefix-cache hits the graph never had.
    spec = LaunchSpec(env={"VLLM_SERVER_DEV_MODE": "1"})
    handle = launch_server("bench", spec, console=console)
    return handle.base_url, handle.model, handle


def _reset_prefix_cache(base_url: str) -> None:
    """Start a measured phase with a cold prefix cache (the server needs VLLM_SERVER_DEV_MODE=1)."""
    import httpx2

    reply = httpx2.post(base_url.removesuffix("/v1") + "/reset_prefix_cache", timeout=60)
    if reply.status_code != 200:
        sys.exit(
            "bench: the server refuses /reset_prefix_cache; start it with VLLM_SERVER_DEV_MODE=1 "
            "(or unset ROLEGRAPH_BENCH_BASE_URL so the bench launches one)"
        )


def _config(base_url: str, model: str, max_tokens: int) -> RolegraphConfig:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.7)
    roles = {*DEFAULT_ROLES, *PROMPTCOT.roles}
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=base_url, max_concurrency=64)},
        roles={role: RoleBinding(endpoint="local", model=model, sampling=sampling) for role in roles},
    )


def _episode_tokens(run_dir: Path) -> tuple[int, list[Any]]:
    """Completion tokens and role steps of the episodes (the run-level prepare calls are excluded)."""
    with Store(run_dir, create=False) as store:
        steps = [s for s in store.steps(kind="role") if s.episode_id != PREPARE_EPISODE]
    return sum(s.completion_tokens for s in steps), steps


async def _graph(
    config: RolegraphConfig, options: dict[str, Any], n: int, concurrency: int, run_dir: Path, seed: int = 0
) -> dict:
    started = time.perf_counter()
    await run_graph(
        PROMPTCOT,
        config,
        RunParams(n=n, seed=seed, options=options),
        run_dir,
        concurrency=concurrency,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    tokens, steps = _episode_tokens(run_dir)
    return {
        "seconds": elapsed,
        "tokens": tokens,
        "calls": len(steps),
        "tok_s": tokens / elapsed,
        "steps": steps,
    }


async def _bare(base_url: str, steps: list[Any]) -> dict:
    """Replay the graph's role calls (same messages and sampling) with a plain AsyncOpenAI loop."""
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=2, timeout=300)
    limit = asyncio.Semaphore(CONCURRENCY)
    tokens = 0

    async def one(step: Any) -> None:
        nonlocal tokens
        s = step.sampling
        async with limit:
            response = await client.chat.completions.create(
                model=step.model,
                messages=step.messages,
                temperature=s["temperature"],
                top_p=s["top_p"],
                max_tokens=s["max_tokens"],
                n=s["n"],
                extra_body={"return_token_ids": True, **(s.get("extra") or {})},
            )
        tokens += response.usage.completion_tokens if response.usage else 0

    started = time.perf_counter()
    await asyncio.gather(*(one(step) for step in steps))
    elapsed = time.perf_counter() - started
    await client.close()
    return {"seconds": elapsed, "tokens": tokens, "calls": len(steps), "tok_s": tokens / elapsed}


def _total(runs: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    calls = sum(r["calls"] for r in runs)
    return {"seconds": seconds, "tokens": tokens, "calls": calls, "tok_s": tokens / seconds}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="graph throughput bench (see the module docstring)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="per model call")
    parser.add_argument("--episodes", type=int, default=EPISODES, help="episodes of the concurrent run")
    parser.add_argument("--sequential-episodes", type=int, default=SEQUENTIAL_EPISODES)
    return parser.parse_args()


async def main() -> int:
    args = _args()
    max_tokens, episodes = args.max_tokens, args.episodes
    base_url, model, handle = _server()
    config = _config(base_url, model, max_tokens)
    work = Path(tempfile.mkdtemp(prefix="rg-bench-"))
    seeds = work / "seeds.jsonl"
    rows = [json.loads(line) for line in DEFAULT_SEEDS.read_text().splitlines()[:4]]
    seeds.write_text("".join(json.dumps({**r, "nonce": uuid.uuid4().hex}) + "\n" for r in rows))
    options = {"seeds": str(seeds), "seed_limit": 4, "k": 2, "max_tokens": max_tokens}
    try:
        console.print("[bold]warm-up[/] (concept pool and embeddings, cached for the measured runs)")
        await _graph(config, options, 2, 2, work / "warmup")
        rounds: list[tuple[dict, dict]] = []
        for index in range(ROUNDS):
            console.print(f"[bold]graph[/] round {index + 1}: concurrency {CONCURRENCY}, {episodes} episodes")
            _reset_prefix_cache(base_url)
            g = await _graph(config, options, episodes, CONCURRENCY, work / f"graph-{index}", seed=index)
            console.print(f"[bold]bare loop[/] round {index + 1}: replaying {g['calls']} calls")
            _reset_prefix_cache(base_url)
            rounds.append((g, await _bare(base_url, g.pop("steps"))))
        graph, bare = _total([g for g, _ in rounds]), _total([b for _, b in rounds])
        console.print(f"[bold]sequential[/] concurrency 1, {args.sequential_episodes} episodes")
        _reset_prefix_cache(base_url)
        sequential = await _graph(config, options, args.sequential_episodes, 1, work / "sequential")
        sequential.pop("steps")
    finally:
        if handle is not None and handle.owned:
            handle.stop()
    vs_bare = graph["tok_s"] / bare["tok_s"]
    vs_sequential = graph["tok_s"] / sequential["tok_s"]
    rows_md = "\n".join(
        f"| {name} | {r['calls']} | {r['tokens']} | {r['seconds']:.1f} | {r['tok_s']:.1f} |"
        for name, r in (
            (f"graph (concurrency {CONCURRENCY}, {ROUNDS}×{episodes} episodes)", graph),
            (f"bare AsyncOpenAI loop (concurrency {CONCURRENCY})", bare),
            ("graph sequential (concurrency 1)", sequential),
        )
    )
    report = (
        f"{SECTION}\n"
        f"`python bench/graph_throughput.py --max-tokens {max_tokens} --episodes {episodes} "
        f"--sequential-episodes {args.sequential_episodes}` on {os.cpu_count()} CPU cores "
        f"({platform.machine()}), "
        f"{model}, max_tokens {max_tokens}, k=2, {time.strftime('%Y-%m-%d')}.\n\n"
        "| run | model calls | completion tokens | seconds | tokens/s |\n|---|---|---|---|---|\n"
        f"{rows_md}\n\n"
        f"- graph / bare loop: **{vs_bare:.2f}×** (target ≥ 0.9×) {_verdict(vs_bare >= 0.9)}\n"
        f"- graph / sequential: **{vs_sequential:.2f}×** (target ≥ 4×) {_verdict(vs_sequential >= 4)}\n"
    )
    print(report)
    write_section(SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
