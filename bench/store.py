"""Bench: the store's write path, and what one writer's lock and a commit per step cost.

One writer (one Store, one event loop) records many concurrent episodes' steps, with payloads the size of
promptcot's (chat messages, a completion, token ids). Four variants of the same inserts, alternated in rounds
in the same process:
  batched     every insert in one transaction, no lock: the floor
  per-step    a commit per step, as the runtime records (WAL, synchronous=NORMAL: survives kill -9)
  + lock      the same, holding the run directory's writer lock (taken once per run)
  durable     a commit per step with synchronous=FULL (an fsync per commit: survives power loss)
It then times the cheapest model call of a promptcot run (max_tokens capped, which only makes it cheaper) on
the server at ROLEGRAPH_BENCH_BASE_URL (or ROLEGRAPH_TEST_BASE_URL), and checks the target: a step commit
costs under 5% of that call. Figures go to the "Store" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from results import write_section  # bench/ is on sys.path when run as a script

from rolegraph.serving.types import Choice
from rolegraph.store import Step, Store
from rolegraph.store.lock import RunLock

SECTION = "## Store"
VARIANTS = ("batched", "per-step", "per-step + lock", "durable (FULL)")
TARGET = 0.05


def _step(episode: str, index: int) -> Step:
    text = "Let us reason step by step. " * 24  # ~650 characters, a 128-token completion
    return Step(
        id=0,
        episode_id=episode,
        attempt=1,
        kind="role",
        node=f"node{index}",
        role="solver",
        endpoint="local",
        model="smollm2-135m-instruct",
        sampling={"temperature": 0.7, "max_tokens": 128, "n": 1},
        messages=[
            {"role": "system", "content": "You are a careful mathematician. " * 10},
            {"role": "user", "content": "Solve the following problem and box the answer. " * 20},
        ],
        choices=[
            Choice(text=text, finish_reason="stop", token_ids=list(range(128)), parsed={"answer": "42"})
        ],
        prompt_token_ids=list(range(300)),
        prompt_tokens=300,
        completion_tokens=128,
        latency_s=1.0,
        started_at=time.time(),
        checkpoint=f"{episode}-task{index}",
    )


@contextlib.contextmanager
def _one_transaction(store: Store) -> Iterator[None]:
    """The batched floor: the store's inserts with its per-call transactions folded into one."""
    db = store._db
    real = store._tx

    @contextlib.contextmanager
    def joined() -> Iterator[Any]:
        yield db

    store._tx = joined  # type: ignore[method-assign]
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    finally:
        store._tx = real  # type: ignore[method-assign]


async def _write(store: Store, episodes: int, steps: int) -> None:
    async def episode(key: str) -> None:
        store.begin_episode(key, {"problem": "x" * 200})
        for index in range(steps):
            store.record_step(_step(key, index))
            await asyncio.sleep(0)  # interleave the episodes, as the runtime's event loop does
        store.finish_episode(key, {"answer": "42"}, kept=True, rewards={"accepted": 1.0})

    async with asyncio.TaskGroup() as group:
        for e in range(episodes):
            group.create_task(episode(f"ep{e}"))


def _measure(variant: str, root: Path, episodes: int, steps: int) -> float:
    """Seconds to write the workload into a fresh run directory under `root`."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    lock = RunLock(run_dir) if variant == "per-step + lock" else None
    started = time.perf_counter()
    if lock is not None:
        lock.acquire()
    with Store(run_dir) as store:
        store.start_run("bench", {}, 0, {})
        if variant == "durable (FULL)":
            store._db.execute("PRAGMA synchronous=FULL")
        batch = _one_transaction(store) if variant == "batched" else contextlib.nullcontext()
        with batch:
            asyncio.run(_write(store, episodes, steps))
    if lock is not None:
        lock.release()
    return time.perf_counter() - started


def _lock_cost(root: Path, repeat: int = 200) -> float:
    """Seconds to take and release a run directory's lock (once per run, not per step)."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    started = time.perf_counter()
    for _ in range(repeat):
        RunLock(run_dir).acquire().release()
    return (time.perf_counter() - started) / repeat


def _cheapest_call(base_url: str, max_tokens: int, episodes: int) -> tuple[float, str, int]:
    """(seconds, role, calls) of the fastest model call in a small promptcot run on `base_url` (its prepare
    calls included)."""
    from rolegraph.config import DEFAULT_ROLES, EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.promptcot.graph import PROMPTCOT
    from rolegraph.graphs.runtime import run_graph

    model = _base_model(base_url)
    sampling = SamplingParams(max_tokens=max_tokens)
    roles = {*DEFAULT_ROLES, *PROMPTCOT.roles}
    config = RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=base_url)},
        roles={r: RoleBinding(endpoint="local", model=model, sampling=sampling) for r in roles},
    )
    with tempfile.TemporaryDirectory() as run_dir:
        asyncio.run(
            run_graph(PROMPTCOT, config, RunParams(n=episodes), run_dir, concurrency=1, progress=False)
        )
        with Store(run_dir, create=False) as store:
            calls = [s for s in store.steps(kind="role") if s.error is None]
    fastest = min(calls, key=lambda s: s.latency_s)
    return fastest.latency_s, fastest.role, len(calls)


def _floor_call(base_url: str, repeat: int = 3) -> float:
    """Seconds of the cheapest call the server can answer (one token of a one-line prompt): any model call of
    any graph costs at least this."""
    import httpx2

    model = _base_model(base_url)
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    best = float("inf")
    with httpx2.Client(timeout=300) as http:
        for _ in range(repeat):
            started = time.perf_counter()
            http.post(f"{base_url}/chat/completions", json=body).raise_for_status()
            best = min(best, time.perf_counter() - started)
    return best


def _base_model(base_url: str) -> str:
    import httpx2

    cards = httpx2.get(f"{base_url}/models", timeout=30).json()["data"]
    return str(next(c["id"] for c in cards if not c.get("parent")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=64, help="concurrent episodes per measurement")
    parser.add_argument("--steps", type=int, default=16, help="steps per episode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where run directories go (default: a temp dir)"
    )
    parser.add_argument("--promptcot-episodes", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32, help="cap of the promptcot calls")
    parser.add_argument("--no-write", action="store_true", help="print, do not update bench/RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                times[variant].append(_measure(variant, root, args.episodes, args.steps))
            print(
                f"round {round_ + 1}: " + ", ".join(f"{v} {t[-1]:.2f}s" for v, t in times.items()),
                file=sys.stderr,
            )
        lock_s = _lock_cost(root)
        filesystem = os.statvfs(root)
    steps = args.episodes * args.steps
    median = {v: statistics.median(t) for v, t in times.items()}
    per_step = {v: s / steps for v, s in median.items()}
    commit = per_step["per-step"] - per_step["batched"]
    durable = per_step["durable (FULL)"] - per_step["batched"]
    lock = per_step["per-step + lock"] - per_step["per-step"]

    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL") or os.environ.get("ROLEGRAPH_TEST_BASE_URL")
    call: tuple[float, str, int] | None = None
    floor = 0.0
    if url:
        url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        floor = _floor_call(url)
        call = _cheapest_call(url, args.max_tokens, args.promptcot_episodes)

    load = os.getloadavg()[0]
    lines = [
        SECTION,
        f"`python bench/store.py --episodes {args.episodes} --steps {args.steps} --rounds {args.rounds}` on "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {time.strftime('%Y-%m-%d')}, 1-minute load "
        f"{load:.1f}; run directories on the root file system ({filesystem.f_bsize}-byte blocks). One "
        f"writer, {args.episodes} concurrent episodes × {args.steps} steps ({steps} steps of ~4 KB: "
        "messages, a 128-token completion, token ids); medians of the rounds, variants alternated in each.",
        "",
        "| variant | seconds | steps/s | µs per step | over batched, µs per step |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        extra = per_step[variant] - per_step["batched"]
        cells = [f"{median[variant]:.2f}", f"{steps / median[variant]:.0f}", f"{per_step[variant] * 1e6:.0f}"]
        lines.append(f"| {variant} | {' | '.join(cells)} | {extra * 1e6:+.0f} |")
    lines += [
        "",
        f"- Write throughput (the runtime's path, a commit per step): "
        f"**{steps / median['per-step']:.0f} steps/s**.",
        f"- A commit per step costs {commit * 1e6:.0f} µs per step over the batched inserts; with "
        f"synchronous=FULL (durable against power loss) {durable * 1e6:.0f} µs.",
        f"- The lock: {lock_s * 1e6:.0f} µs to take and release, once per run; holding it changed the "
        f"per-step time by {lock * 1e6:+.0f} µs (noise: nothing is done per step).",
    ]
    if call is not None:
        seconds, role, calls = call
        share = per_step["per-step"] / seconds
        share_full = per_step["durable (FULL)"] / seconds
        verdict = "PASS" if share < TARGET else "FAIL"
        lines.append(
            f"- Cheapest model call of a promptcot run ({args.promptcot_episodes} episodes, {calls} calls, "
            f"max_tokens {args.max_tokens}, concurrency 1): {seconds * 1000:.0f} ms ({role}). A whole step "
            f"write with its commit is **{share:.2%}** of it (target < {TARGET:.0%}) {verdict}; with "
            f"synchronous=FULL {share_full:.2%}."
        )
        lines.append(
            f"- Floor of any model call on this server (1 token of a one-line prompt, best of 3): "
            f"{floor * 1000:.0f} ms; a step write is {per_step['per-step'] / floor:.2%} of it, "
            f"{per_step['durable (FULL)'] / floor:.2%} with synchronous=FULL."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
