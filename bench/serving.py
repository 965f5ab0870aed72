"""Bench `serving`: completion tokens/s through rolegraph's Client vs a bare AsyncOpenAI loop.

Both send the same chat requests to the same vLLM server (temperature 0, ignore_eos, fixed max_tokens, so
every request yields exactly max_tokens tokens) at concurrency 1, 8 and 32. Rounds alternate A-B-B-A so load
drift on a shared machine hits both sides alike. Prints the ratio client/bare per concurrency (target
>= 0.95) and writes the figures into bench/RESULTS.md under "## serving".

Usage: python bench/serving.py [--base-url URL] [--max-tokens 32] [--rounds 2]
Without --base-url (or $ROLEGRAPH_BENCH_BASE_URL) it launches the built-in model and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rolegraph.config import LaunchSpec, SamplingParams
from rolegraph.serving import Client, launch_server

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## serving"
CONCURRENCY = (1, 8, 32)
TOPICS = ["rivers", "prime numbers", "bread", "owls", "volcanoes", "chess", "glass", "tides"]


@dataclass
class Side:
    name: str
    tokens: int = 0
    seconds: float = 0.0
    rounds: list[float] | None = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short note about {TOPICS[i % len(TOPICS)]} (note {i})."}]


async def _bare_round(
    openai: AsyncOpenAI, model: str, n: int, concurrency: int, max_tokens: int, tick: Callable[[], None]
) -> int:
    """The baseline: a plain AsyncOpenAI worker pool, same request body as the client sends."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            response = await openai.chat.completions.create(
                model=model,
                messages=_messages(i),  # type: ignore[arg-type]
                temperature=0.0,
                top_p=1.0,
                max_tokens=max_tokens,
                n=1,
                extra_body={"return_token_ids": True, "ignore_eos": True},
            )
            tokens += response.usage.completion_tokens if response.usage else 0
            tick()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens


async def _client_round(client: Client, model: str, n: int, max_tokens: int, tick: Callable[[], None]) -> int:
    """rolegraph's Client: its semaphore (max_concurrency) is the only limit."""
    sampling = SamplingParams(
        temperature=0.0, top_p=1.0, max_tokens=max_tokens, n=1, extra={"ignore_eos": True}
    )

    async def one(i: int) -> int:
        result = await client.chat(_messages(i), model=model, sampling=sampling)
        tick()
        return result.usage.completion_tokens

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def _timed(run: Callable[[], Awaitable[int]], side: Side) -> None:
    started = time.perf_counter()
    tokens = await run()
    elapsed = time.perf_counter() - started
    side.tokens += tokens
    side.seconds += elapsed
    assert side.rounds is not None
    side.rounds.append(tokens / elapsed)


async def bench(
    base_url: str, model: str, max_tokens: int, rounds: int, console: Console
) -> list[tuple[int, Side, Side]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    extra = (TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, *extra, console=console) as progress:
        return [
            await _bench_one(base_url, model, max_tokens, rounds, concurrency, progress)
            for concurrency in CONCURRENCY
        ]


async def _bench_one(
    base_url: str, model: str, max_tokens: int, rounds: int, concurrency: int, progress: Progress
) -> tuple[int, Side, Side]:
    n = max(8, 2 * concurrency)
    client = Client("bench", base_url, max_concurrency=concurrency, timeout_s=600)
    bare = AsyncOpenAI(base_url=client.base_url, api_key="EMPTY", max_retries=0, timeout=600)
    ours, theirs = Side("client", rounds=[]), Side("bare", rounds=[])
    task = progress.add_task(f"c={concurrency}", total=2 * rounds * n, rate="")
    started = time.perf_counter()
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        rate = done * max_tokens / (time.perf_counter() - started)
        progress.update(task, advance=1, rate=f"{rate:.0f} tok/s")

    # Warm-up (untimed) so neither side pays for first connections.
    await _client_round(client, model, concurrency, max_tokens, lambda: None)
    await _bare_round(bare, model, concurrency, concurrency, max_tokens, lambda: None)
    for r in range(rounds):
        order = [ours, theirs] if r % 2 == 0 else [theirs, ours]  # A-B-B-A
        for side in order:
            if side is ours:
                await _timed(lambda: _client_round(client, model, n, max_tokens, tick), side)
            else:
                await _timed(lambda: _bare_round(bare, model, n, concurrency, max_tokens, tick), side)
    await client.aclose()
    await bare.close()
    return concurrency, ours, theirs


def _table(rows: list[tuple[int, Side, Side]], max_tokens: int) -> Table:
    table = Table(title=f"serving: completion tokens/s, Client vs bare AsyncOpenAI (max_tokens={max_tokens})")
    for column in ("concurrency", "client tok/s", "bare tok/s", "ratio", "per-round ratios"):
        table.add_column(column, justify="right")
    for concurrency, ours, theirs in rows:
        per_round = [a / b for a, b in zip(ours.rounds or [], theirs.rounds or [], strict=True)]
        table.add_row(
            str(concurrency),
            f"{ours.rate:.1f}",
            f"{theirs.rate:.1f}",
            f"{ours.rate / theirs.rate:.3f}",
            ", ".join(f"{x:.2f}" for x in per_round),
        )
    return table


def _write_results(rows: list[tuple[int, Side, Side]], max_tokens: int, rounds: int, where: str) -> None:
    lines = [
        SECTION,
        "",
        f"`python bench/serving.py` — completion tokens/s through `rolegraph.serving.Client` vs a bare "
        f"`AsyncOpenAI` worker loop, same requests, same server ({where}), temperature 0 + ignore_eos, "
        f"max_tokens={max_tokens}, {rounds} A-B-B-A rounds per concurrency; {platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. Target: ratio >= 0.95.",
        "",
        "| concurrency | client tok/s | bare tok/s | ratio client/bare |",
        "|---|---|---|---|",
    ]
    for concurrency, ours, theirs in rows:
        lines.append(
            f"| {concurrency} | {ours.rate:.1f} | {theirs.rate:.1f} | {ours.rate / theirs.rate:.3f} |"
        )
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Bench results\n"
    start = text.find(SECTION + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", default=os.environ.get("ROLEGRAPH_BENCH_BASE_URL"))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    console = Console(stderr=True)
    handle = None
    base_url = args.base_url
    if base_url is None:
        handle = launch_server("bench", LaunchSpec(), console=console)
        base_url = handle.base_url
    try:
        probe = Client("probe", base_url)
        model = asyncio.run(_base_model(probe))
        rows = asyncio.run(bench(base_url, model, args.max_tokens, args.rounds, console))
    finally:
        if handle is not None and handle.owned:
            handle.stop()
    Console().print(_table(rows, args.max_tokens))
    for concurrency, ours, theirs in rows:
        ratio = ours.rate / theirs.rate
        print(f"serving c={concurrency}: ratio {ratio:.3f} client {ours.rate:.1f} bare {theirs.rate:.1f}")
    if not args.no_write:
        where = "launched by the bench" if handle is not None else "shared dev server"
        _write_results(rows, args.max_tokens, args.rounds, where)


async def _base_model(client: Client) -> str:
    async with client:
        return await client.base_model()


if __name__ == "__main__":
    main()
