"""The `cort` GraphDef: one episode per problem, mode (tir or plain) and sample.

START → tir_turn ⟲ → tir_finish (session closed) → verify (math-verify against the problem's answer) → END.
In `plain` mode the same loop runs the plain solver without stop sequences, cells or hints, so a run can
compare tokens per solved problem with and without the interpreter on the same problems.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from rolegraph.agents.parsers import last_boxed
from rolegraph.environments.math_verify import verify, verify_within
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext, env_or_none
from rolegraph.graphs.cort.nodes import model_text
from rolegraph.graphs.cort.sessions import SessionProvider
from rolegraph.graphs.cort.state import CortOptions, TIRState

VERIFY_NODE = "verify"
REWARDS = (
    Reward("correct", train=True, description="math-verify: the \\boxed{} answer equals the reference"),
    Reward(
        "code_penalty",
        weight=-0.1,
        train=True,
        description="1 when a TIR episode wrote no code or every cell failed (trained on with weight −0.1)",
    ),
)


def episode_key(mode: str, problem_id: str, sample: int, samples: int) -> str:
    return f"{mode}-{problem_id}" + (f"-s{sample}" if samples > 1 else "")


def inputs(params: RunParams) -> list[EpisodeInput]:
    """Episodes for the first `n` problems, per mode and sample, keyed stably for resuming."""
    from rolegraph.graphs.selfplay.problems import load_problems

    options = CortOptions.parse(params.options)
    if not options.problems:
        from rolegraph.errors import ConfigError

        raise ConfigError("the cort graph needs problems", "pass --set problems=FILE.jsonl")
    items = []
    for problem in load_problems(options.problems, params.n):
        state = {"id": problem.id, "problem": problem.problem, "answer": problem.answer}
        for mode in options.modes:
            for sample in range(options.samples):
                items.append(
                    EpisodeInput(
                        key=episode_key(mode, problem.id, sample, options.samples),
                        state={
                            "options": options.model_dump(mode="json"),
                            "problem": state,
                            "mode": mode,
                            "sample": sample,
                        },
                    )
                )
    return items


async def verify_answer(state: TIRState, ctx: GraphContext) -> dict[str, Any]:
    """The episode's final \\boxed{} answer (model text only), checked against the reference."""
    if state.get("failed"):
        return {}
    answer = last_boxed(model_text(state))
    gold = state["problem"].get("answer")
    if gold is None:
        return {"answer": answer, "correct": None}

    async def check() -> bool:
        return await verify_within(lambda: verify(answer, gold))

    verdict = await env_or_none(
        ctx,
        "math_verify",
        node=VERIFY_NODE,
        episode_id=state["episode_id"],
        request={"answer": answer, "reference": gold},
        fn=check,
    )
    return {"answer": answer, "correct": verdict}


def build_graph(ctx: GraphContext, sessions: SessionProvider) -> StateGraph:
    from rolegraph.graphs.cort.nodes import add_tir_loop

    async def check(state: TIRState) -> dict[str, Any]:
        return await verify_answer(state, ctx)

    graph = StateGraph(TIRState)
    graph.add_node(VERIFY_NODE, check)
    add_tir_loop(graph, ctx, sessions, after=START, then=VERIFY_NODE)
    graph.add_edge(VERIFY_NODE, END)
    return graph


def episode_metrics(state: dict[str, Any]) -> dict[str, float]:
    """Per-episode measurements `runs show` aggregates (tokens, cells, their use, flags)."""
    mask = state.get("tir_mask") or []
    cells = state.get("tir_cells") or []
    metrics = {
        "tir": float(state.get("mode", "tir") == "tir"),
        "model_tokens": float(sum(mask)),
        "interpreter_tokens": float(len(mask) - sum(mask)),
        "code_calls": float(len(cells)),
        "failed_cells": float(sum(c["status"] != "ok" for c in cells)),
        "calculation_cells": float(sum(c["use"] == "calculation" for c in cells)),
        "verification_cells": float(sum(c["use"] == "verification" for c in cells)),
        "hints": float(len(state.get("tir_hints") or [])),
        "turns": float(state.get("tir_turns") or 0),
    }
    for name, count in (state.get("tir_flags") or {}).items():
        metrics[f"flag_{name}"] = float(count)
    if state.get("correct") is not None:
        metrics["correct"] = float(bool(state["correct"]))
    return metrics


def code_penalty(state: dict[str, Any]) -> float:
    """1.0 when a TIR episode wrote no code or every cell failed, else 0.0 (plain episodes: 0.0)."""
    if state.get("mode", "tir") != "tir":
        return 0.0
    cells = state.get("tir_cells") or []
    return float(not cells or all(c["status"] != "ok" for c in cells))


def outcome(final_state: dict[str, Any]) -> Outcome:
    """Kept when the answer is correct; `correct` is None when it could not be checked."""
    metrics = episode_metrics(final_state)
    if final_state.get("failed"):
        return Outcome(kept=False, reason=final_state["failed"], metrics=metrics)
    correct = final_state.get("correct")
    rewards = {
        "correct": None if correct is None else float(correct),
        "code_penalty": code_penalty(final_state),
    }
    if correct:
        return Outcome(kept=True, rewards=rewards, metrics=metrics)
    if final_state.get("answer") is None:
        reason = "no \\boxed{} answer"
    elif correct is None:
        reason = "the answer could not be checked"
    else:
        reason = "wrong answer"
    return Outcome(kept=False, reason=reason, rewards=rewards, metrics=metrics)


def cort_graph(sessions: SessionProvider | None = None) -> GraphDef:
    """The cort graph; `sessions` provides the per-episode sandbox sessions (default: auto backend, one
    fresh worker per episode)."""

    def build(ctx: GraphContext) -> StateGraph:
        return build_graph(ctx, sessions or SessionProvider())

    return GraphDef(
        name="cort",
        roles=("cort_solver", "solver"),
        build=build,
        inputs=inputs,
        outcome=outcome,
        description="CoRT TIR solver: python cells in a stateful sandbox session, hints, token-in/token-out",
        rewards=REWARDS,
        options=CortOptions,
    )


CORT = cort_graph()
