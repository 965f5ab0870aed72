"""The `selfplay` GraphDef: one episode per problem: reference answer → n policy rollouts, each verified.

The sandbox pool is not part of the state (it is not picklable): `selfplay_graph(sandbox)` closes the nodes
over a provider of it.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.selfplay import nodes
from rolegraph.graphs.selfplay.problems import load_problems
from rolegraph.graphs.selfplay.state import SelfPlayOptions, SelfPlayState

EPISODE_PREFIX = "selfplay-"
REWARDS = (
    Reward(
        "passed",
        train=True,
        description="the rollout passed its check: math-verify against the reference, or the problem's tests "
        "in the sandbox (None when the check could not run)",
    ),
    Reward(
        "majority_vote",
        train=True,
        description="a teacher answer agrees with the teacher's majority answer, the problem's reference",
    ),
)


def build_graph(ctx: GraphContext, sandbox: nodes.SandboxProvider | None) -> StateGraph:
    async def reference(state: SelfPlayState) -> dict[str, Any]:
        return await nodes.reference(state, ctx)

    async def rollout(state: SelfPlayState) -> dict[str, Any]:
        return await nodes.rollout(state, ctx, sandbox)

    graph = StateGraph(SelfPlayState)
    graph.add_node(nodes.REFERENCE_NODE, reference)
    graph.add_node(nodes.ROLLOUT_NODE, rollout)
    graph.add_edge(START, nodes.REFERENCE_NODE)
    graph.add_conditional_edges(
        nodes.REFERENCE_NODE, nodes.route_after_reference, {"rollout": nodes.ROLLOUT_NODE, "end": END}
    )
    graph.add_edge(nodes.ROLLOUT_NODE, END)
    return graph


def inputs(params: RunParams) -> list[EpisodeInput]:
    """One episode per problem (at most `n`), keyed by the problem's id (stable for resuming)."""
    options = SelfPlayOptions.parse(params.options)
    return [
        EpisodeInput(
            key=EPISODE_PREFIX + problem.id,
            state={"options": options.model_dump(mode="json"), "problem": problem.to_state()},
        )
        for problem in load_problems(options.problems, params.n)
    ]


def outcome(final_state: dict[str, Any]) -> Outcome:
    """Kept when some rollout was verified; the pass rate is a metric (pairs are built from the rewards)."""
    passed = final_state.get("passed") or []
    verified = [ok for ok in passed if ok is not None]
    metrics = {"rollouts": float(len(passed)), "unverified": float(len(passed) - len(verified))}
    if verified:
        metrics["pass_rate"] = sum(verified) / len(verified)
    if final_state.get("failed"):
        return Outcome(kept=False, reason=final_state["failed"], metrics=metrics)
    if not verified:
        return Outcome(kept=False, reason="no rollout could be verified", metrics=metrics)
    return Outcome(kept=True, metrics=metrics)


def selfplay_graph(
    sandbox: nodes.SandboxProvider | None = None, *, roles: tuple[str, ...] = ("solver",)
) -> GraphDef:
    """The self-play rollout graph; `sandbox` provides the pool code problems run in, `roles` are the policy
    (and teacher) roles it calls."""
    return GraphDef(
        name="selfplay",
        roles=roles,
        build=lambda ctx: build_graph(ctx, sandbox),
        inputs=inputs,
        outcome=outcome,
        description="Self-play rollouts: reference answer → n policy rollouts → math-verify or sandbox tests",
        rewards=REWARDS,
        options=SelfPlayOptions,
    )
