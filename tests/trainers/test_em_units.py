"""Unit tests of the EM graphs and loop plumbing that need no model: nodes with a fake ctx, the E-step on the
real runtime with a fake pool, training rows and the per-iteration report read back from the stores."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rolegraph.agents.registry import get_role
from rolegraph.agents.role import Role
from rolegraph.config import SamplingParams
from rolegraph.errors import ParseError, TrainingError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.em import nodes
from rolegraph.graphs.em.graph import EM_E, EM_M, EM_SCORE
from rolegraph.graphs.em.state import P_ROLE, Q_ROLE, argmax, problem_prefix, proposal_continuation
from rolegraph.graphs.runtime import run_graph
from rolegraph.serving.types import CallResult, Choice, Usage
from rolegraph.store import Store
from rolegraph.store.records import Step
from rolegraph.trainers.base import TrainResult, load_adapter
from rolegraph.trainers.em import (
    iteration_dirs,
    iteration_reports,
    load_seeds,
    p_row,
    p_rows,
    q_rows,
    render_em_report,
)
from rolegraph.trainers.recording import record_training

CONCEPTS = ["modular arithmetic", "primes"]
OPTIONS = {"k": 3, "max_tokens": 8, "temperature": 0.9, "difficulty": "easy", "concepts_k": 2}


def _state(**extra: Any) -> dict[str, Any]:
    return {
        "episode_id": "s1",
        "options": OPTIONS,
        "problem": "What is 7 mod 3?",
        "concepts": CONCEPTS,
        **extra,
    }


def _parsed(role: Role, text: str) -> Choice:
    try:
        return Choice(text=text, parsed=role.parse(text))
    except ParseError as exc:
        return Choice(text=text, parse_error=exc.message)


class FakeCtx:
    """Records what nodes ask for; q answers `texts`, p scores a continuation by minus its length."""

    def __init__(self, texts: list[str], fail_scores: bool = False) -> None:
        self.texts = texts
        self.fail_scores = fail_scores
        self.calls: list[dict[str, Any]] = []
        self.scored: list[tuple[dict[str, Any], str]] = []
        self.rewards: list[tuple[int, Any]] = []

    async def call_role(self, role: str, *, node: str, episode_id: str, variables: dict[str, Any], **kw: Any):
        self.calls.append({"role": role, "node": node, "variables": variables, **kw})
        choices = [_parsed(get_role(role), t) for t in self.texts]
        return Step(
            id=7, episode_id=episode_id, attempt=1, kind="role", node=node, role=role, choices=choices
        )

    async def score_role(
        self, role: str, *, node: str, episode_id: str, variables: dict[str, Any], **kw: Any
    ):
        continuation = kw["continuation"]
        self.scored.append((variables, continuation))
        step = Step(id=0, episode_id=episode_id, attempt=1, kind="role", node=node, role=role)
        if self.fail_scores:
            return Step(**{**step.__dict__, "error": "down", "error_kind": "endpoint_down"})
        return Step(**{**step.__dict__, "metrics": {"log_p": -float(len(continuation))}})

    def add_rewards(self, step: Step, rewards: Any) -> None:
        self.rewards.append((step.id, rewards))


# --- text shapes and selection -------------------------------------------------------------------------
def test_continuation_follows_the_proposer_prefill_without_repeating_it() -> None:
    prefill = get_role(P_ROLE).prefill
    assert prefill == "## Rationale\n"
    text = proposal_continuation(" think ", "What is x?")
    assert text == "think\n## Problem\nWhat is x?" and not text.startswith("## Rationale")
    # What p would write after its prefill parses back into the same z and x.
    assert get_role(P_ROLE).parse(text) == {"rationale": "think", "problem": "What is x?"}
    assert text.startswith(problem_prefix("think"))


def test_argmax_ties_none_and_nan() -> None:
    assert argmax([1.0, 3.0, 3.0]) == 1
    assert argmax([float("nan"), -2.0, None, -1.0]) == 3
    assert argmax([None, float("nan")]) is None and argmax([]) is None


def test_seeds_from_math500_format(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"problem": "p1", "answer": "1"}) + "\n" + json.dumps({"problem": "p2"}) + "\n"
    )
    seeds = load_seeds(path, limit=5)
    assert [(s.id, s.problem, s.concepts) for s in seeds] == [("seed1", "p1", ()), ("seed2", "p2", ())]
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(TrainingError, match="no 'problem'"):
        load_seeds(bad, limit=5)


# --- nodes with a fake ctx -------------------------------------------------------------------------------
async def test_e_step_samples_k_scores_each_under_p_and_selects_the_argmax() -> None:
    ctx = FakeCtx(["Thinking Process: a long rationale here", "Thinking Process: short", "x"])
    update = await nodes.e_sample(_state(), ctx)  # type: ignore[arg-type]
    (call,) = ctx.calls
    assert call["role"] == Q_ROLE and call["n"] == 3 and call["max_tokens"] == 8
    assert call["variables"] == {"concepts": CONCEPTS, "difficulty": "easy", "problem": "What is 7 mod 3?"}
    assert update["rationales"] == ["a long rationale here", "short", "x"] and update["sample_step"] == 7

    scored = await nodes.e_score(_state(**update), ctx)  # type: ignore[arg-type]
    # p scores (c → z, x): its variables hold no problem, the continuation carries z then x.
    assert [v for v, _ in ctx.scored] == [{"concepts": CONCEPTS, "difficulty": "easy"}] * 3
    assert [c for _, c in ctx.scored] == [
        proposal_continuation(z, "What is 7 mod 3?") for z in update["rationales"]
    ]
    assert scored["best"] == 2 and scored["best_log_p"] == max(scored["scores"])
    ((step_id, rewards),) = ctx.rewards
    assert step_id == 7
    assert [r["selected"] for r in rewards] == [0.0, 0.0, 1.0]
    assert [r["log_p"] for r in rewards] == scored["scores"]


async def test_e_step_with_p_down_selects_nothing_and_records_none() -> None:
    ctx = FakeCtx(["a", "b"], fail_scores=True)
    scored = await nodes.e_score(_state(rationales=["a", "b"], sample_step=3), ctx)  # type: ignore[arg-type]
    assert scored["failed"] and "best" not in scored
    assert ctx.rewards == [(3, [{"log_p": None, "selected": None}] * 2)]


async def test_m_step_decodes_greedily_and_scores_x_given_z() -> None:
    ctx = FakeCtx(["Thinking Process: combine them"])
    decoded = await nodes.m_decode(_state(), ctx)  # type: ignore[arg-type]
    assert ctx.calls[0]["temperature"] == 0.0 and ctx.calls[0]["n"] == 1
    assert decoded["rationale"] == "combine them"
    scored = await nodes.m_score(_state(**decoded), ctx)  # type: ignore[arg-type]
    full, prefix = (c for _, c in ctx.scored)
    assert full == proposal_continuation("combine them", "What is 7 mod 3?") and prefix == problem_prefix(
        "combine them"
    )
    assert scored["log_p_x"] == -float(len(full)) + float(len(prefix)) == -float(len("What is 7 mod 3?"))


async def test_extract_keeps_concepts_k_items() -> None:
    ctx = FakeCtx(["Primes\nDivisibility\nGCD"])
    update = await nodes.extract(_state(concepts=[]), ctx)  # type: ignore[arg-type]
    assert update["concepts"] == ["Primes", "Divisibility"]  # concepts_k = 2
    empty = await nodes.extract(_state(concepts=[]), FakeCtx(["   "]))  # type: ignore[arg-type]
    assert empty["failed"]


# --- training rows -------------------------------------------------------------------------------------
def test_p_row_prompt_is_c_without_prefill_and_completion_is_prefill_z_x() -> None:
    messages = get_role(P_ROLE).render({"concepts": CONCEPTS, "difficulty": "easy"})
    assert messages[-1] == {"role": "assistant", "content": "## Rationale\n"}
    continuation = proposal_continuation("combine them", "What is 7 mod 3?")
    step = Step(
        id=1,
        episode_id="s1",
        attempt=1,
        kind="role",
        node="m_score",
        role=P_ROLE,
        messages=messages,
        choices=[Choice(text=continuation)],
    )
    row = p_row(step)
    assert row["prompt"] == messages[:-1] and all(m["role"] != "assistant" for m in row["prompt"])
    assert row["completion"] == [
        {"role": "assistant", "content": "## Rationale\ncombine them\n## Problem\nWhat is 7 mod 3?"}
    ]


# --- the graphs on the real runtime with a fake pool ------------------------------------------------------
class FakeClient:
    """q answers fixed rationales; p scores a continuation by minus its length."""

    name = "fake"

    async def chat(
        self, messages: list[dict[str, Any]], *, model: str, sampling: SamplingParams
    ) -> CallResult:
        texts = [f"Thinking Process: {'step ' * (i + 1)}" for i in range(sampling.n)]
        return CallResult(
            choices=[Choice(text=t, finish_reason="stop") for t in texts],
            model=model,
            endpoint="fake",
            usage=Usage(prompt_tokens=5, completion_tokens=2 * len(texts)),
        )

    async def score_chat(self, messages: list[dict[str, Any]], continuation: str, *, model: str) -> float:
        return -float(len(continuation))


class FakePool:
    def __init__(self) -> None:
        self.client = FakeClient()

    def resolve(self, role: str) -> tuple[FakeClient, str, SamplingParams]:
        return self.client, f"fake-{role}", SamplingParams(max_tokens=16)


SEEDS = [
    {"id": "a", "problem": "What is 1+1?", "concepts": CONCEPTS},
    {"id": "b", "problem": "What is 2+2?", "concepts": CONCEPTS},
]


async def _run(graph: Any, seeds: list[dict[str, Any]], run_dir: Path) -> None:
    params = RunParams(n=len(seeds), options={**OPTIONS, "seeds": seeds})
    summary = await run_graph(graph, FakePool(), params, run_dir, progress=False)
    assert summary.kept == len(seeds)


async def test_em_graph_runs_give_rows_and_the_iteration_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "em"
    dirs = iteration_dirs(run_dir, 1)
    await _run(EM_E, SEEDS, dirs.e)
    with Store(dirs.e, create=False) as store:
        samples = [s for s in store.steps() if s.node == "e_sample"]
        assert len(samples) == 2 and all(len(s.rewards) == 3 for s in samples)
        # The shortest rationale has the highest log p; exactly one choice per seed is selected.
        assert all([r["selected"] for r in s.rewards] == [1.0, 0.0, 0.0] for s in samples)
    rows = q_rows(dirs.e)
    assert len(rows) == 2 and rows[0]["completion"][0]["content"] == "Thinking Process: step "
    assert rows[0]["prompt"][-1]["role"] == "user" and "What is 1+1?" in rows[0]["prompt"][-1]["content"]

    await _run(EM_M, SEEDS, dirs.m)
    rows = p_rows(dirs.m)
    assert [r["completion"][0]["content"] for r in rows] == [
        "## Rationale\nstep\n## Problem\nWhat is 1+1?",
        "## Rationale\nstep\n## Problem\nWhat is 2+2?",
    ]
    await _run(EM_SCORE, [{**s, "rationale": "step"} for s in SEEDS], dirs.after)

    with Store(run_dir) as store:
        store.start_run("em", {}, 0, {})
    for role, name in ((Q_ROLE, "q-one"), (P_ROLE, "p-one")):
        result = TrainResult(
            method="sft",
            adapter_dir=tmp_path,
            metrics={},
            rows=2,
            wall_s=1.0,
            hyperparameters={"em_role": role, "em_iteration": 1, "init_adapter_name": None},
        )
        adapter = type("A", (), {"lora_name": name, "version": 1, "path": tmp_path / name})()
        record_training(run_dir, result, inputs=[str(dirs.e)], adapter=adapter)  # type: ignore[arg-type]

    (report,) = iteration_reports(run_dir)
    assert report.iteration == 1 and report.selected == [0, 0]
    assert report.mean_best_reward == -len(proposal_continuation("step", "What is 1+1?"))
    assert report.mean_log_p_x_before == report.mean_log_p_x_after == -len("What is 1+1?")
    assert (report.q_adapter, report.p_adapter, report.q_started_from) == ("q-one", "p-one", None)
    console = Console(record=True, width=200)
    render_em_report(run_dir, console)
    text = console.export_text()
    assert f"{report.mean_best_reward:.2f}" in text and "-12.00" in text
    assert re.search(r"│ 1 +│ rationale_writer +│ q-one +│ base model +│", text), text


def test_warm_start_from_a_directory_without_an_adapter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="holds no adapter") as info:
        load_adapter(object(), tmp_path)
    assert info.value.hint
