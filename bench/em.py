"""Bench: one PromptCoT 2.0 EM iteration's generation and scoring through the runtime against a bare loop.

Both sides run the same calls on one vLLM server, in the same process, one after the other:
  runtime   the em_e, em_m and em_score graph runs of one iteration (store, checkpoints, parsing, rewards)
  bare      a plain AsyncOpenAI (+ httpx for /tokenize) loop replaying the runtime's calls from its stores:
            the same chat requests (messages, n, max_tokens, temperature) and the same scoring requests (two
            /tokenize calls and one completions call with prompt_logprobs, as the client's score_chat), with
            the same dependencies (per seed: sample, then score; E-step, then M-step, then after-scoring)
Training is not timed (it is the same TRL code either way). Target: bare time / runtime time ≥ 0.9.
Figures go to bench/RESULTS.md under "## EM".

Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server (started with VLLM_SERVER_DEV_MODE=1); otherwise
one is launched.
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
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from results import write_section  # bench/ is on sys.path when run as a script
from rich.console import Console

from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.graphs.base import GraphDef, RunParams
from rolegraph.graphs.em.graph import EM_CONCEPTS, EM_E, EM_M, EM_SCORE
from rolegraph.graphs.em.state import EXTRACT_ROLE, P_ROLE, Q_ROLE
from rolegraph.graphs.promptcot.concepts import DEFAULT_SEEDS
from rolegraph.graphs.runtime import run_graph
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.store.records import Step

SEEDS = 8
K = 4
MAX_TOKENS = 64
CONCURRENCY = 8
SECTION = "## EM"
console = Console(stderr=True)


def _server() -> tuple[str, str, Any]:
    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    if url:
        url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        cards = httpx.get(f"{url}/models", timeout=10).json()["data"]
        return url, next(c["id"] for c in cards if not c.get("parent")), None
    from rolegraph.serving.launcher import launch_server

    # Dev mode exposes /reset_prefix_cache: the bare loop replays the runtime's exact prompts, so without a
    # reset it would get prefix-cache hits the runtime never had.
    handle = launch_server("bench", LaunchSpec(env={"VLLM_SERVER_DEV_MODE": "1"}), console=console)
    return handle.base_url, handle.model, handle


def _reset_prefix_cache(base_url: str) -> None:
    reply = httpx.post(base_url.removesuffix("/v1") + "/reset_prefix_cache", timeout=60)
    if reply.status_code != 200:
        sys.exit("bench: the server refuses /reset_prefix_cache; start it with VLLM_SERVER_DEV_MODE=1")


def _config(base_url: str, model: str) -> RolegraphConfig:
    # q and p ignore EOS, so both sides generate exactly max_tokens per choice: the same work, not two samples
    # of different lengths (the bare loop replays each call's sampling, extras included).
    fixed = SamplingParams(max_tokens=MAX_TOKENS, extra={"ignore_eos": True})
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=base_url, max_concurrency=64)},
        roles={
            Q_ROLE: RoleBinding(endpoint="local", model=model, sampling=fixed),
            P_ROLE: RoleBinding(endpoint="local", model=model, sampling=fixed),
            EXTRACT_ROLE: RoleBinding(endpoint="local", model=model),
        },
    )


# --- the runtime side --------------------------------------------------------------------------------------
async def _graph(
    pool: EndpointPool, graph: GraphDef, seeds: list[dict[str, Any]], options: dict, run_dir: Path
) -> float:
    started = time.perf_counter()
    summary = await run_graph(
        graph,
        pool,
        RunParams(n=len(seeds), options={**options, "seeds": seeds}),
        run_dir,
        concurrency=CONCURRENCY,
    )
    elapsed = time.perf_counter() - started
    if summary.kept != len(seeds):
        sys.exit(f"bench: {graph.name} kept {summary.kept} of {len(seeds)} episodes; see {run_dir}")
    return elapsed


def _final_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    with Store(run_dir, create=False) as store:
        return {e.id: e.final_state or {} for e in store.episodes(status="finished")}


def _steps(run_dir: Path) -> dict[str, list[Step]]:
    """Each episode's steps in recorded order."""
    with Store(run_dir, create=False) as store:
        by_episode: dict[str, list[Step]] = {}
        for step in store.steps(kind="role"):
            by_episode.setdefault(step.episode_id, []).append(step)
    return by_episode


# --- the bare side -----------------------------------------------------------------------------------------
class Bare:
    """The same requests as rolegraph's client, sent with AsyncOpenAI and httpx and nothing else."""

    def __init__(self, base_url: str) -> None:
        self.openai = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=2, timeout=300)
        self.http = httpx.AsyncClient(base_url=base_url.removesuffix("/v1"), timeout=300)
        self.tokens = 0

    async def chat(self, step: Step) -> None:
        s = step.sampling
        response = await self.openai.chat.completions.create(
            model=str(step.model),
            messages=step.messages,  # type: ignore[arg-type]
            temperature=s["temperature"],
            top_p=s["top_p"],
            max_tokens=s["max_tokens"],
            n=s["n"],
            extra_body={"return_token_ids": True, **(s.get("extra") or {})},
        )
        self.tokens += response.usage.completion_tokens if response.usage else 0

    async def _tokenize(self, body: dict[str, Any]) -> list[int]:
        reply = await self.http.post("/tokenize", json=body)
        reply.raise_for_status()
        return [int(t) for t in reply.json()["tokens"]]

    async def score(self, step: Step) -> None:
        """log p(continuation | messages), continuing the prefill: as rolegraph's Client.score_chat."""
        model, messages, continuation = str(step.model), step.messages, step.texts[0]
        last = messages[-1]
        full = [*messages[:-1], {**last, "content": last["content"] + continuation}]

        def body(chat: list[dict[str, Any]], open_final: bool) -> dict[str, Any]:
            return {
                "model": model,
                "messages": chat,
                "add_generation_prompt": not open_final,
                "continue_final_message": open_final,
                "add_special_tokens": False,
            }

        prompt_ids, full_ids = await asyncio.gather(
            self._tokenize(body(messages, True)), self._tokenize(body(full, True))
        )
        if full_ids[: len(prompt_ids)] == prompt_ids:
            rest = full_ids[len(prompt_ids) :]
        else:
            rest = await self._tokenize({"model": model, "prompt": continuation, "add_special_tokens": False})
        response = await self.openai.completions.create(
            model=model,
            prompt=prompt_ids + rest,
            temperature=0.0,
            top_p=1.0,
            max_tokens=1,
            n=1,
            extra_body={"return_token_ids": True, "prompt_logprobs": 0},
        )
        assert response.choices[0].model_extra and response.choices[0].model_extra.get("prompt_logprobs")

    async def phase(self, by_episode: dict[str, list[Step]]) -> float:
        """Per episode: its generation call, then its scoring calls together; CONCURRENCY episodes at once."""
        limit = asyncio.Semaphore(CONCURRENCY)

        async def episode(steps: list[Step]) -> None:
            async with limit:
                for step in steps:
                    if not step.request:
                        await self.chat(step)
                await asyncio.gather(*(self.score(s) for s in steps if s.request))

        started = time.perf_counter()
        await asyncio.gather(*(episode(steps) for steps in by_episode.values()))
        return time.perf_counter() - started

    async def close(self) -> None:
        await self.openai.close()
        await self.http.aclose()


# --- main --------------------------------------------------------------------------------------------------


def _row(seconds: dict[str, float]) -> str:
    return " | ".join(f"{v:.1f}" for v in [*seconds.values(), sum(seconds.values())])


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="EM iteration bench (see the module docstring)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seed problems (episodes per graph run)")
    parser.add_argument("--k", type=int, default=K, help="rationales per seed in the E-step")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="per generation call")
    parser.add_argument("--rounds", type=int, default=1, help="runtime/bare rounds, alternating")
    return parser.parse_args()


async def main() -> int:
    args = _args()
    base_url, model, handle = _server()
    work = Path(tempfile.mkdtemp(prefix="rg-bench-em-"))
    rows = [json.loads(line) for line in DEFAULT_SEEDS.read_text().splitlines()[: args.seeds]]
    seeds = [{"id": f"s{i}", "problem": r["problem"], "concepts": []} for i, r in enumerate(rows)]
    options = {"k": args.k, "max_tokens": args.max_tokens, "temperature": 0.9, "concepts_k": 3}
    phases = ("e", "m", "after")
    runtime_s, bare_s = dict.fromkeys(phases, 0.0), dict.fromkeys(phases, 0.0)
    calls = {"generate": 0, "score": 0}
    bare = Bare(base_url)
    try:
        async with EndpointPool(_config(base_url, model)) as pool:
            console.print("[bold]warm-up[/]: concepts of the seeds (not timed)")
            await _graph(pool, EM_CONCEPTS, seeds, options, work / "concepts")
            concepts = _final_states(work / "concepts")
            seeds = [{**s, "concepts": concepts[s["id"]]["concepts"]} for s in seeds]
            for index in range(args.rounds):
                dirs = {name: work / f"r{index}" / name for name in phases}
                console.print(f"[bold]runtime[/] round {index + 1}: E-step, M-step, after-scoring")
                for name, graph in (("e", EM_E), ("m", EM_M)):
                    _reset_prefix_cache(base_url)
                    runtime_s[name] += await _graph(pool, graph, seeds, options, dirs[name])
                decoded = _final_states(dirs["m"])
                _reset_prefix_cache(base_url)
                after = [{**s, "rationale": decoded[s["id"]]["rationale"]} for s in seeds]
                runtime_s["after"] += await _graph(pool, EM_SCORE, after, options, dirs["after"])
                console.print(f"[bold]bare[/] round {index + 1}: the same calls")
                for name in phases:
                    steps = _steps(dirs[name])
                    for episode in steps.values():
                        for step in episode:
                            calls["score" if step.request else "generate"] += 1
                    _reset_prefix_cache(base_url)
                    bare_s[name] += await bare.phase(steps)
    finally:
        await bare.close()
        if handle is not None and handle.owned:
            handle.stop()
    ratio = sum(bare_s.values()) / sum(runtime_s.values())
    per_round = {k: v // args.rounds for k, v in calls.items()}
    report = (
        f"{SECTION}\n"
        f"`python bench/em.py --seeds {args.seeds} --k {args.k} --max-tokens {args.max_tokens} "
        f"--rounds {args.rounds}` on {os.cpu_count()} CPU cores ({platform.machine()}), {model}, "
        f"{time.strftime('%Y-%m-%d')}. One EM iteration's generation and scoring (no training; q and p "
        f"are the base model, sampling with ignore_eos so both sides generate the same tokens): per round "
        f"{per_round['generate']} generation calls (E: n={args.k}; M: "
        f"greedy) and {per_round['score']} scoring calls (2 /tokenize + 1 prompt_logprobs request each), "
        f"concurrency {CONCURRENCY} episodes, prefix cache reset before each phase.\n\n"
        "| run | E-step s | M-step s | after-scoring s | total s |\n|---|---|---|---|---|\n"
        f"| runtime (em_e, em_m, em_score graph runs) | {_row(runtime_s)} |\n"
        f"| bare AsyncOpenAI + httpx loop, same calls | {_row(bare_s)} |\n\n"
        f"- bare / runtime: **{ratio:.2f}×** (target ≥ 0.9×) {'PASS' if ratio >= 0.9 else 'FAIL'}\n"
    )
    print(report)
    write_section(SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
