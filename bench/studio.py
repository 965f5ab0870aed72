"""Bench `studio`: page latencies of `rolegraph studio` on a large synthetic store.

Builds a run directory of 100,000 steps in 20,000 episodes (promptcot-shaped: proposer, problem writer,
solver with 4 completions and per-completion rewards, a math-verify environment call, judge; ~1 KB of text
per step), then requests each page through the real app (Starlette, templates, the store's read paths) and
reports p50 / p95 over the repeats. Target: p50 < 200 ms for the episode list and the episode page.

    python bench/studio.py [--episodes 20000] [--repeat 15] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from rolegraph.store import Store

WORDS = [
    "the",
    "of",
    "prime",
    "sum",
    "angle",
    "circle",
    "number",
    "triangle",
    "integer",
    "solve",
    "find",
    "let",
    "area",
    "root",
    "base",
    "value",
]
NEEDLE = "zanzibar"
"""A word found in 20 episodes only, for the full-text search."""
MODELS = ["smollm2-135m-instruct", "proposer-v1", "proposer-v2"]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build(run_dir: Path, episodes: int, seed: int = 0) -> int:
    """Write the synthetic run in one transaction (the store's own schema); returns the number of steps."""
    rng = random.Random(seed)
    with Store(run_dir) as store:
        store.start_run(
            "promptcot", {}, seed, {"n": episodes}, [{"name": "verdict", "weight": 1.0, "train": True}]
        )
    db = sqlite3.connect(run_dir / "store.sqlite")
    now = time.time() - episodes
    step_rows, reward_rows, episode_rows = [], [], []
    step_id = 0
    for i in range(episodes):
        key = f"0-{i:05d}-{rng.getrandbits(32):08x}"
        status = "failed" if i % 17 == 0 else "finished"
        verdict = rng.choice([0.0, 0.5, 1.0])
        episode_rows.append(
            (
                key,
                status,
                json.dumps({"concepts": [text(rng, 3) for _ in range(3)]}),
                None
                if status == "failed"
                else json.dumps(
                    {"problem": text(rng, 60), "rationale": text(rng, 150), "answers": [text(rng, 40)] * 2}
                ),
                None if status == "failed" else int(verdict > 0.4),
                None if verdict > 0.4 or status == "failed" else "judge said bad",
                json.dumps({} if status == "failed" else {"verdict": verdict}),
                "endpoint_down" if status == "failed" else None,
                now + i,
                now + i + 0.5,
            )
        )
        needle = NEEDLE if i % 1000 == 7 else ""
        for node, role, n in (
            ("propose", "proposer", 1),
            ("propose", "problem_writer", 1),
            ("solve", "solver", 4),
            ("solve", "math_verify", 0),
            ("judge", "judge", 1),
        ):
            step_id += 1
            model = MODELS[i % 3] if role == "proposer" else MODELS[0]
            kind = "env" if n == 0 else "role"
            messages = (
                []
                if n == 0
                else [
                    {"role": "system", "content": "You are an expert in educational problem design."},
                    {"role": "user", "content": text(rng, 60) + (f" {needle}" if role == "proposer" else "")},
                ]
            )
            choices = [
                {
                    "text": text(rng, 40),
                    "finish_reason": "stop",
                    "token_ids": None,
                    "logprobs": None,
                    "parsed": {"answer": str(rng.randint(0, 9))},
                    "parse_error": None,
                }
                for _ in range(n)
            ]
            step_rows.append(
                (
                    step_id,
                    key,
                    1,
                    kind,
                    node,
                    role,
                    "local" if n else None,
                    model if n else None,
                    json.dumps({"temperature": 0.7, "max_tokens": 256}),
                    json.dumps(messages),
                    json.dumps(choices),
                    90 if n else 0,
                    60 * n,
                    0.4,
                    json.dumps({"answers": [1, 2]}) if n == 0 else None,
                    json.dumps({"majority": 1}) if n == 0 else None,
                    now + i,
                    "task-" + node,
                )
            )
            if role == "solver":
                reward_rows += [(step_id, c, "majority", float(rng.random() < 0.5)) for c in range(n)]
    with db:
        db.executemany(
            "INSERT INTO episodes (id, status, input, final_state, kept, reason, rewards, error_kind,"
            " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            episode_rows,
        )
        db.executemany(
            "INSERT INTO steps (id, episode_id, attempt, kind, node, role, endpoint, model, sampling,"
            " messages, choices, prompt_tokens, completion_tokens, latency_s, request, response, started_at,"
            " checkpoint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            step_rows,
        )
        db.executemany(
            "INSERT INTO step_rewards (step_id, choice, name, value) VALUES (?, ?, ?, ?)", reward_rows
        )
    db.close()
    return step_id


def measure(get: object, url: str, repeat: int) -> tuple[float, float, int]:
    times = []
    status = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = get(url)  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", type=Path, default=None, help="Build the store here and keep it.")
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from rolegraph.studio.app import Studio, create_app
    from rolegraph.studio.runs import run_id
    from rolegraph.studio.security import Access

    root = args.keep or Path(tempfile.mkdtemp(prefix="studio-bench-"))
    run_dir = root / "bench-run"
    if not (run_dir / "store.sqlite").is_file():
        started = time.perf_counter()
        steps = build(run_dir, args.episodes)
        print(
            f"built {steps} steps in {args.episodes} episodes in {time.perf_counter() - started:.1f} s,"
            f" {(run_dir / 'store.sqlite').stat().st_size / 1e6:.0f} MB"
        )
    client = TestClient(
        create_app(Studio([root], Access.for_host("127.0.0.1", 0))), base_url="http://127.0.0.1"
    )
    rid = run_id(run_dir)
    started = time.perf_counter()
    client.get("/")
    print(f"first request (opens the store, quick check): {(time.perf_counter() - started) * 1000:.0f} ms")
    with Store(run_dir, create=False) as store:
        middle = store.episodes()[args.episodes // 2].id
    pages = [
        ("runs page", "/"),
        ("episode list, first page", f"/runs/{rid}"),
        (
            "list, filtered: finished, kept, role+model",
            f"/runs/{rid}?status=finished&kept=yes&role=proposer&model=proposer-v2",
        ),
        ("list, filtered: reward range", f"/runs/{rid}?reward=verdict&rmin=0.4&rmax=0.6"),
        ("list, filtered: error kind", f"/runs/{rid}?error_kind=endpoint_down"),
        ("list, sorted by tokens (desc)", f"/runs/{rid}?sort=tokens&desc=1"),
        ("list, sorted by reward (desc)", f"/runs/{rid}?reward=verdict&sort=reward&desc=1"),
        ("list, page 200", f"/runs/{rid}?page=200"),
        ("episode page", f"/runs/{rid}/episode?id={middle}"),
        ("full-text search (20 hits)", f"/runs/{rid}?q={NEEDLE}"),
        ("full-text search (no hit)", f"/runs/{rid}?q=qwertyuiop"),
    ]
    print("| page | p50 ms | p95 ms | status |\n|---|---|---|---|")
    for label, url in pages:
        p50, p95, status = measure(client.get, url, args.repeat)
        print(f"| {label} | {p50:.0f} | {p95:.0f} | {status} |")


if __name__ == "__main__":
    main()
