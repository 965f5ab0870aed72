"""Bench `serving`: completion tokens/s through rolegraph's Client vs a bare AsyncOpenAI loop.

Both send the same chat requests to the same vLLM server (temperature 0, ignore_eos, fixed max_tokens, so
every request yields exactly max_tokens tokens) at concurrency 1, 8 and 32. Rounds alternate A-B-B-A so load
drift on a shared machine hits both sides alike. Prints the ratio client/bare per concurrency (target
>= 0.95) and writes the figures into bench/RESULTS.md under "## serving".

A second row runs on a server that is not vLLM (`transformers serve`, the test suite's, see
tests/fixtures/compat.py): it ignores `n`, so each call asks for n=2 and the client emulates it with two
concurrent requests; the bare loop sends the same two n=1 requests. Greedy decoding gives both sides the same
tokens (that server has no ignore_eos).

Usage: python bench/serving.py [--base-url URL] [--max-tokens 32] [--rounds 2] [--other-url URL | --no-other]
Without --base-url (or $ROLEGRAPH_BENCH_BASE_URL) it launches the built-in model and stops it at the end;
without --other-url it starts `transformers serve` on the built-in model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.fixtures is importable

from rolegraph.config import LaunchSpec, SamplingParams
from rolegraph.models import prepare_model
from rolegraph.serving import Client, launch_server
from rolegraph.serving.capabilities import probe
from tests.fixtures.compat import CompatServer, running_compat_server

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


OTHER_MARK = "Non-vLLM server"
OTHER_CONCURRENCY = 4
OTHER_CALLS = 4
OTHER_N = 2


async def _bare_other_round(openai: AsyncOpenAI, model: str, max_tokens: int) -> int:
    """The baseline on the other server: OTHER_N plain n=1 requests per call, OTHER_CONCURRENCY at a time."""
    semaphore = asyncio.Semaphore(OTHER_CONCURRENCY)

    async def one(i: int) -> int:
        async with semaphore:
            response = await openai.chat.completions.create(
                model=model,
                messages=_messages(i),  # type: ignore[arg-type]
                temperature=0.0,
                top_p=1.0,
                max_tokens=max_tokens,
            )
        return response.usage.completion_tokens if response.usage else 0

    return sum(await asyncio.gather(*(one(i // OTHER_N) for i in range(OTHER_CALLS * OTHER_N))))


async def _client_other_round(client: Client, model: str, max_tokens: int) -> int:
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, n=OTHER_N)

    async def one(i: int) -> int:
        result = await client.chat(_messages(i), model=model, sampling=sampling)
        assert len(result.choices) == OTHER_N
        return result.usage.completion_tokens

    return sum(await asyncio.gather(*(one(i) for i in range(OTHER_CALLS))))


async def bench_other(server: CompatServer, max_tokens: int, rounds: int) -> tuple[Side, Side, str]:
    """Client (n emulated) vs bare loop on the non-vLLM server, A-B-B-A; returns the sides and what the
    probe found."""
    client = Client("other", server.base_url, max_concurrency=OTHER_CONCURRENCY, timeout_s=600)
    bare = AsyncOpenAI(base_url=client.base_url, api_key="EMPTY", max_retries=0, timeout=600)
    client.capabilities = await probe(client, server.model)
    ours, theirs = Side("client", rounds=[]), Side("bare", rounds=[])
    await _client_other_round(client, server.model, max_tokens)  # warm-up, untimed
    for r in range(rounds):
        for side in [ours, theirs] if r % 2 == 0 else [theirs, ours]:
            if side is ours:
                await _timed(lambda: _client_other_round(client, server.model, max_tokens), side)
            else:
                await _timed(lambda: _bare_other_round(bare, server.model, max_tokens), side)
    await client.aclose()
    await bare.close()
    return ours, theirs, client.capabilities.summary()


def _other_lines(other: tuple[Side, Side, str], max_tokens: int, rounds: int) -> list[str]:
    ours, theirs, capabilities = other
    per_round = ", ".join(f"{x:.2f}" for x in _per_round(ours, theirs))
    return [
        "",
        f"{OTHER_MARK} (`transformers serve`, built-in model, one OpenMP thread): {OTHER_CALLS} calls "
        f"of n={OTHER_N} per round, `n` emulated by the client with {OTHER_N} concurrent requests per "
        f"call; the bare loop sends the same {OTHER_CALLS * OTHER_N} n=1 requests (concurrency "
        f"{OTHER_CONCURRENCY}, temperature 0, max_tokens={max_tokens}, {rounds} A-B-B-A rounds; "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}). Probed: {capabilities}.",
        "",
        "| server | client tok/s | bare tok/s | ratio client/bare | per-round ratios |",
        "|---|---|---|---|---|",
        f"| transformers serve, n={OTHER_N} emulated | {ours.rate:.1f} | {theirs.rate:.1f} | "
        f"{ours.rate / theirs.rate:.3f} | {per_round} |",
    ]


def _per_round(ours: Side, theirs: Side) -> list[float]:
    return [a / b for a, b in zip(ours.rounds or [], theirs.rounds or [], strict=True)]


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


def _write_results(
    rows: list[tuple[int, Side, Side]],
    max_tokens: int,
    rounds: int,
    where: str,
    other: tuple[Side, Side, str] | None,
    other_tokens: int,
) -> None:
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
    other_part = _other_lines(other, other_tokens, rounds) if other is not None else []
    text = RESULTS.read_text() if RESULTS.exists() else "# Bench results\n"
    start = text.find(SECTION + "\n")
    if not rows and start != -1:  # --only-other: keep the vLLM figures already there
        end = text.find("\n## ", start + len(SECTION))
        old = text[start : end if end != -1 else len(text)]
        lines = old.split(f"\n\n{OTHER_MARK}")[0].rstrip("\n").splitlines()
    section = "\n".join(lines + other_part) + "\n"
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
    parser.add_argument("--other-url", help="a running `transformers serve` of the built-in model")
    parser.add_argument("--other-max-tokens", type=int, default=8)
    parser.add_argument("--no-other", action="store_true", help="skip the non-vLLM server row")
    parser.add_argument("--only-other", action="store_true", help="only the non-vLLM server row")
    args = parser.parse_args()
    console = Console(stderr=True)
    handle = None
    base_url = args.base_url
    rows: list[tuple[int, Side, Side]] = []
    if not args.only_other:
        if base_url is None:
            handle = launch_server("bench", LaunchSpec(), console=console)
            base_url = handle.base_url
        try:
            model = asyncio.run(_base_model(Client("probe", base_url)))
            rows = asyncio.run(bench(base_url, model, args.max_tokens, args.rounds, console))
        finally:
            if handle is not None and handle.owned:
                handle.stop()
        Console().print(_table(rows, args.max_tokens))
    for concurrency, ours, theirs in rows:
        ratio = ours.rate / theirs.rate
        print(f"serving c={concurrency}: ratio {ratio:.3f} client {ours.rate:.1f} bare {theirs.rate:.1f}")
    other = None if args.no_other else _run_other(args.other_url, args.other_max_tokens, args.rounds)
    if other is not None:
        ours, theirs, capabilities = other
        print(
            f"serving other (n={OTHER_N} emulated): ratio {ours.rate / theirs.rate:.3f} client "
            f"{ours.rate:.1f} bare {theirs.rate:.1f}; per round "
            f"{[round(x, 3) for x in _per_round(ours, theirs)]}; {capabilities}"
        )
    if not args.no_write and (rows or other is not None):
        where = "launched by the bench" if handle is not None else "shared dev server"
        _write_results(rows, args.max_tokens, args.rounds, where, other, args.other_max_tokens)


def _run_other(url: str | None, max_tokens: int, rounds: int) -> tuple[Side, Side, str]:
    model_dir = prepare_model()
    if url is not None:
        return asyncio.run(bench_other(CompatServer(url, str(model_dir)), max_tokens, rounds))
    with running_compat_server(model_dir) as server:
        return asyncio.run(bench_other(server, max_tokens, rounds))


async def _base_model(client: Client) -> str:
    async with client:
        return await client.base_model()


if __name__ == "__main__":
    main()
