"""End to end: the promptcot graph on the real vLLM server through the real runtime and store."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.promptcot.concepts import DEFAULT_SEEDS
from rolegraph.graphs.promptcot.graph import PROMPTCOT
from rolegraph.graphs.runtime import PREPARE_EPISODE, run_graph
from rolegraph.store import Store

MAX_TOKENS = 48
K = 3
ROOT = Path(__file__).resolve().parents[2]


def _fresh_seeds(tmp_path: Path) -> Path:
    """Two MATH-500 problems in a file of unique content, so the concept cache misses and extraction runs."""
    rows = [json.loads(line) for line in DEFAULT_SEEDS.read_text().splitlines()[:2]]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({**row, "nonce": uuid.uuid4().hex}) + "\n" for row in rows))
    return seeds


@pytest.mark.vllm
async def test_promptcot_runs_end_to_end(rg_config: RolegraphConfig, tmp_path: Path) -> None:
    options = {"seeds": str(_fresh_seeds(tmp_path)), "seed_limit": 2, "k": K, "max_tokens": MAX_TOKENS}
    run_dir = tmp_path / "run"
    summary = await run_graph(
        PROMPTCOT, rg_config, RunParams(n=2, seed=0, options=options), run_dir, concurrency=4, progress=False
    )
    assert summary.failed == 0
    assert summary.kept + summary.rejected == 2

    with Store(run_dir, create=False) as store:
        episodes = store.episodes()
        assert len(episodes) == 2
        for episode in episodes:
            assert episode.status == "finished"
            assert episode.kept is True or (episode.kept is False and episode.reason)
            assert episode.final_state is not None and len(episode.final_state["concepts"]) >= 1

        steps = store.steps()
        roles = {s.role for s in steps}
        assert {"concept_extractor", "proposer", "solver", "judge", "math_verify"} <= roles, roles
        extraction = [s for s in steps if s.role == "concept_extractor"]
        assert len(extraction) == 2 and all(s.episode_id == PREPARE_EPISODE for s in extraction)
        for step in steps:
            if step.kind == "role":
                assert step.error is None
                assert step.sampling["max_tokens"] == MAX_TOKENS
                assert all(len(c.token_ids or []) <= MAX_TOKENS for c in step.choices)
                assert all(c.parsed is not None or c.parse_error for c in step.choices)
        solver = [s for s in steps if s.role == "solver"]
        assert all(len(s.choices) == K for s in solver)  # k attempts in one call
        for episode in episodes:
            # token counts and agreement are metrics; the declared rewards are all a trainer ranks by
            assert set(episode.rewards) == {"verdict"}
            assert {"agreement", "mean_reasoning_tokens"} <= set(episode.metrics)
        expected = _expected_dpo_pairs(store)
    _check_dpo_export(run_dir, tmp_path / "dpo.jsonl", expected)

    # A second run of the same directory resumes: nothing is redone.
    again = await run_graph(
        PROMPTCOT, rg_config, RunParams(n=2, seed=0, options=options), run_dir, concurrency=4, progress=False
    )
    assert again.kept + again.rejected == 2
    with Store(run_dir, create=False) as store:
        assert len(store.steps()) == len(steps)


def _expected_dpo_pairs(store: Store) -> list[tuple[float, float]]:
    """(chosen, rejected) training rewards of the solver pairs: verdict + majority, computed here by hand."""
    episodes = {e.id: e for e in store.episodes()}
    pairs = []
    for step in store.steps(role="solver"):
        verdict = episodes[step.episode_id].rewards["verdict"]
        if verdict is None:
            continue
        scored = sorted(
            (
                verdict + step.rewards[i]["majority"]
                for i, choice in enumerate(step.choices)
                if choice.parse_error is None and choice.text.strip()
            ),
            reverse=True,
        )
        for i in range(len(scored) // 2):
            if scored[i] <= scored[-1 - i]:
                break
            pairs.append((scored[i], scored[-1 - i]))
    return pairs


def _check_dpo_export(run_dir: Path, out: Path, expected: list[tuple[float, float]]) -> None:
    """`rolegraph export --format dpo` ranks pairs by the declared training reward (never by token counts)."""
    command = [sys.executable, "-c", "from rolegraph.cli.app import main; main()", "export", str(run_dir)]
    done = subprocess.run(
        [*command, "--format", "dpo", "--out", str(out), "--role", "solver"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not expected:
        assert done.returncode == 2 and "no dpo rows" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = sorted((row["score_chosen"], row["score_rejected"]) for row in rows)
    assert got == sorted(expected)
    assert all(row["score_chosen"] > row["score_rejected"] for row in rows)
