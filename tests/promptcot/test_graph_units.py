"""Unit tests of the promptcot nodes, options, inputs and concept pool with a fake GraphContext."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rolegraph.agents.registry import get_role
from rolegraph.errors import ConfigError, ParseError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.promptcot import nodes
from rolegraph.graphs.promptcot.concepts import build_pool, load_seed_problems, resolve_seeds
from rolegraph.graphs.promptcot.graph import PROMPTCOT
from rolegraph.graphs.promptcot.state import PromptCotOptions, PromptCotState
from rolegraph.serving.types import Choice
from rolegraph.store.records import Rewards, Step


class FakeContext:
    """Answers each role with canned texts, parsed by the real role parser (unit tests only)."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.rewards: dict[str, Rewards | list[Rewards]] = {}
        """node → the rewards added to its step."""

    async def call_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        prompt: Any = None,
        **sampling: Any,
    ) -> Step:
        self.calls.append((role, variables, sampling))
        spec = get_role(role)
        spec.render(variables)
        texts = self.replies[role][: sampling.get("n", 1)]
        choices = []
        for i, text in enumerate(texts):
            try:
                fields, error = spec.parse(text), None
            except ParseError as exc:
                fields, error = None, exc.message
            choices.append(
                Choice(text=text, token_ids=list(range(10 * (i + 1))), parsed=fields, parse_error=error)
            )
        return Step(
            id=len(self.calls),
            episode_id=episode_id,
            attempt=1,
            kind="role",
            node=node,
            role=role,
            model="fake",
            choices=choices,
            prompt_tokens=5,
            completion_tokens=30,
        )

    def add_rewards(self, step: Step, rewards: Rewards | list[Rewards]) -> None:
        self.rewards[step.node] = rewards

    async def call_env(
        self,
        name: str,
        *,
        node: str,
        episode_id: str,
        request: dict[str, Any],
        fn: Callable[[], Awaitable[Any]],
    ) -> Any:
        self.calls.append((name, request, {}))
        return await fn()


GOOD_JUDGE = (
    " Perfect\nFactual accuracy: Perfect\nDifficulty alignment: Acceptable\n"
    "Concept coverage: Perfect\nSolvability: Perfect\nFinal Judgement: perfect"
)


def _state(**options: Any) -> PromptCotState:
    return {
        "episode_id": "e1",
        "options": PromptCotOptions.parse(options).model_dump(mode="json"),
        "concepts": ["Ratios", "Primes"],
        "difficulty": "AMC",
    }


async def _run(ctx: FakeContext, state: PromptCotState) -> PromptCotState:
    for node in (nodes.propose, nodes.solve, nodes.judge, nodes.decide):
        state = {**state, **(await node(state, ctx))}  # type: ignore[typeddict-item]
        if state.get("failed") and node is not nodes.decide:
            state = {**state, **(await nodes.decide(state, ctx))}  # type: ignore[typeddict-item]
            break
    return state


async def test_kept_episode() -> None:
    ctx = FakeContext(
        {
            "proposer": ["Mix them.\n## Problem\nWhat is 6/3?"],
            "solver": [r"so \boxed{2}", "The answer is 2."],
            "judge": [GOOD_JUDGE],
        }
    )
    state = await _run(ctx, _state(k=2))
    assert state["kept"] is True and state["reject_reason"] is None
    assert state["agreement"] == 1.0 and state["majority_answer"] == "2"
    assert state["mean_reasoning_tokens"] == 15.0
    assert state["verdict"] == "perfect"
    assert [c[0] for c in ctx.calls] == ["proposer", "solver", "math_verify", "judge"]
    assert ctx.calls[1][2]["n"] == 2
    assert ctx.rewards["solve"] == [{"majority": 1.0}, {"majority": 1.0}]


async def test_problem_recovered_by_problem_writer() -> None:
    ctx = FakeContext(
        {
            "proposer": ["I will combine ratios with primes carefully"],
            "problem_writer": ["Problem: What is 2+2?\n## Solution\n4"],
            "solver": [r"\boxed{4}", r"\boxed{5}"],
            "judge": [GOOD_JUDGE],
        }
    )
    state = await _run(ctx, _state(k=2, min_agreement=0.6))
    assert state["problem"] == "What is 2+2?" and state["problem_source"] == "problem_writer"
    assert state["rationale"] == "I will combine ratios with primes carefully"
    assert state["kept"] is False and state["reject_reason"] == "agreement 0.50 < 0.60"


async def test_unparseable_proposer_skips_to_decide() -> None:
    ctx = FakeContext({"proposer": ["   "]})
    state = await _run(ctx, _state(recover_problem=False))
    assert state["kept"] is False
    assert state["reject_reason"].startswith("proposer output unparseable")
    assert [c[0] for c in ctx.calls] == ["proposer"]


async def test_bad_verdict_and_unparsed_judge() -> None:
    base = {"proposer": ["r\n## Problem\np?"], "solver": [r"\boxed{1}", r"\boxed{1}"]}
    bad = await _run(FakeContext({**base, "judge": [" Perfect\nSolvability: Bad"]}), _state())
    assert bad["reject_reason"] == "judge verdict bad (accepted: perfect, acceptable)"
    unparsed = await _run(FakeContext({**base, "judge": ["hmm"]}), _state())
    assert unparsed["reject_reason"].startswith("judge output unparseable")
    lenient = await _run(FakeContext({**base, "judge": ["hmm"]}), _state(require_parsed="false"))
    assert lenient["kept"] is True


async def test_no_answers_rejected_with_reason() -> None:
    ctx = FakeContext(
        {"proposer": ["r\n## Problem\np?"], "solver": ["no idea", "none"], "judge": [GOOD_JUDGE]}
    )
    state = await _run(ctx, _state())
    assert state["reject_reason"] == "no solver attempt gave a final answer"


def test_options_from_strings_and_errors() -> None:
    options = PromptCotOptions.parse(
        {"k": "4", "accept_verdicts": "perfect", "min_agreement": "0.75", "x": 1}
    )
    assert options.k == 4 and options.accept_verdicts == ["perfect"] and options.min_agreement == 0.75
    with pytest.raises(ConfigError, match="promptcot option 'k'"):
        PromptCotOptions.parse({"k": "many"})
    with pytest.raises(ConfigError, match="accept_verdicts"):
        PromptCotOptions.parse({"accept_verdicts": "great"})


def test_outcome_reports_reason_rewards_and_metrics() -> None:
    rejected = PROMPTCOT.outcome(
        {
            "kept": False,
            "reject_reason": "judge verdict bad",
            "agreement": 0.5,
            "problem": "P",
            "verdict": "bad",
        }
    )
    assert rejected.reason == "judge verdict bad" and rejected.metrics["agreement"] == 0.5
    assert rejected.rewards == {"verdict": 0.0}
    kept = PROMPTCOT.outcome(
        {"kept": True, "verdict": "perfect", "agreement": 1.0, "mean_reasoning_tokens": 300}
    )
    assert kept.kept and kept.reason is None and kept.rewards == {"verdict": 1.0}
    # token counts and agreement are metrics, never rewards a trainer ranks by
    assert kept.metrics == {"agreement": 1.0, "mean_reasoning_tokens": 300.0}
    assert PROMPTCOT.outcome({}).reason == "episode did not reach the decision"
    # no parseable problem: the proposer earned a 0; a problem the judge gave no verdict on: None
    assert PROMPTCOT.outcome({"failed": "proposer output unparseable"}).rewards == {"verdict": 0.0}
    assert PROMPTCOT.outcome({"problem": "P", "failed": "judge call failed"}).rewards == {"verdict": None}
    declared = {r.name: r for r in PROMPTCOT.rewards}
    assert declared["verdict"].train and declared["majority"].train


def test_inputs_are_deterministic_with_stable_keys() -> None:
    lists = [["Ratios", "Primes", "Angles"], ["primes", "Graphs"], ["Angles", "Circles"]]
    params = RunParams(n=5, seed=3, options={"concept_lists": lists, "use_embeddings": "false"})
    first, second = PROMPTCOT.inputs(params), PROMPTCOT.inputs(params)
    assert [e.key for e in first] == [e.key for e in second]
    assert [e.state["concepts"] for e in first] == [e.state["concepts"] for e in second]
    assert len({e.key for e in first}) == 5
    assert all(len(e.state["concepts"]) == 3 for e in first)
    with pytest.raises(ConfigError, match="concept pool"):
        PROMPTCOT.inputs(RunParams(n=1))


def test_seeds_resolution_and_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEGRAPH_SEEDS", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match=r"ROLEGRAPH_SEEDS.*does not exist"):
        resolve_seeds(None)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"problem": "A?"}) + "\n\n" + json.dumps({"problem": "B?"}) + "\n")
    monkeypatch.setenv("ROLEGRAPH_SEEDS", str(seeds))
    assert resolve_seeds(None) == seeds
    assert load_seed_problems(seeds, 1) == ["A?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "A?"}\n{"question": "B?"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: no 'problem'"):
        load_seed_problems(bad, 5)
    monkeypatch.delenv("ROLEGRAPH_SEEDS")
    assert resolve_seeds(None).name == "math500_dev.jsonl"


def test_pool_dedups_by_case_and_whitespace() -> None:
    assert build_pool([["Algebra", "Prime  numbers"], ["algebra", "prime numbers", "Geometry"]]) == [
        "Algebra",
        "Prime  numbers",
        "Geometry",
    ]
