"""A promptcot-shaped run written through the real store, for the analysis tests (its problems are MATH-500's,
so a synthesized run is not needed to test what is read from one)."""

from __future__ import annotations

import json
from pathlib import Path

from rolegraph.store import Store

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def math500(count: int, start: int = 0) -> list[dict[str, str]]:
    lines = (DATA / "math500_dev.jsonl").read_text().splitlines()[start : start + count]
    return [json.loads(line) for line in lines]


def promptcot_run(run_dir: Path, kept: int = 3, rejected: int = 2, failed: int = 1) -> Path:
    """Kept episodes with a problem and majority answer, rejected ones (judge, agreement), one failure."""
    rows = math500(kept + rejected + failed, start=100)
    with Store(run_dir) as store:
        store.start_run("promptcot", {}, 0, {"n": len(rows)})
        for index, row in enumerate(rows):
            key = f"e{index}"
            store.begin_episode(key, {})
            state = {"problem": row["problem"], "majority_answer": row["answer"], "verdict": "perfect"}
            if index < kept:
                store.finish_episode(key, state, kept=True)
            elif index < kept + rejected:
                reason = "judge verdict bad (accepted: perfect)" if index % 2 else "agreement 0.33 < 0.50"
                verdict = "bad" if index % 2 else "perfect"
                store.finish_episode(key, {**state, "verdict": verdict}, kept=False, reason=reason)
            else:
                store.fail_episode(key, "endpoint error: down", "endpoint_down")
    return run_dir
