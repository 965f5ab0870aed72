"""The `azr` GraphDef (Absolute Zero): one episode proposes, validates and solves one task of one type.

    propose ──▶ validate ──▶ learnability ──▶ solve        (mode=train)
    propose ──▶ validate                                   (mode=propose, mode=seed: no model call)

The buffers the proposer draws references from are the valid tasks of earlier runs (`buffer_runs`); the
graph's prepare draws each episode's references once per run, so a resumed run proposes from the same ones.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from rolegraph.graphs.azr import nodes
from rolegraph.graphs.azr.sandbox import RunnerProvider, TripletSandbox
from rolegraph.graphs.azr.state import PROPOSER, SOLVER, AZROptions, AZRState
from rolegraph.graphs.azr.tasks import plan_episodes, read_buffers, zero_buffers
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext

REWARDS = (
    Reward(
        "propose",
        train=True,
        description="r_propose on the proposer's completion: learnability 1 - solve rate when 0 < rate < 1, "
        "else extreme_reward; invalid_penalty for an invalid task, format_penalty for a malformed one",
    ),
    Reward(
        "solve",
        train=True,
        description="r_solve on the solver's completion: 1 correct, 0 wrong, format_penalty outside the "
        "R1 format",
    ),
    Reward(
        "rollout_correct",
        description="a learnability rollout solved the task (measures the proposal; not trained on)",
    ),
)


def build_graph(ctx: GraphContext, sandbox: RunnerProvider) -> StateGraph:
    async def propose(state: AZRState) -> dict[str, Any]:
        return await nodes.propose(state, ctx)

    async def validate(state: AZRState) -> dict[str, Any]:
        return await nodes.validate(state, ctx, sandbox)

    async def learnability(state: AZRState) -> dict[str, Any]:
        return await nodes.learnability(state, ctx, sandbox)

    async def solve(state: AZRState) -> dict[str, Any]:
        return await nodes.solve(state, ctx, sandbox)

    graph = StateGraph(AZRState)
    graph.add_node(nodes.PROPOSE_NODE, propose)
    graph.add_node(nodes.VALIDATE_NODE, validate)
    graph.add_node(nodes.LEARNABILITY_NODE, learnability)
    graph.add_node(nodes.SOLVE_NODE, solve)
    graph.add_edge(START, nodes.PROPOSE_NODE)
    graph.add_conditional_edges(
        nodes.PROPOSE_NODE, nodes.route_after_propose, {"validate": nodes.VALIDATE_NODE, "end": END}
    )
    graph.add_conditional_edges(
        nodes.VALIDATE_NODE, nodes.route_after_validate, {"learnability": nodes.LEARNABILITY_NODE, "end": END}
    )
    graph.add_edge(nodes.LEARNABILITY_NODE, nodes.SOLVE_NODE)
    graph.add_edge(nodes.SOLVE_NODE, END)
    return graph


async def prepare(ctx: GraphContext, params: RunParams) -> dict[str, Any]:
    """Draw each episode's references, induction program and fallback task from the buffers (once per run);
    with no buffer runs, from the zero triplet."""
    opts = AZROptions.parse(params.options)
    if opts.mode == "seed":
        return {}
    buffers = read_buffers(opts.buffer_runs)
    if not any(buffers.values()):  # e.g. `rolegraph run azr` without --set buffer_runs=[...]
        buffers = zero_buffers()
    return {"episodes": plan_episodes(buffers, opts.types, opts.batch, opts.references, opts.seed)}


def inputs(params: RunParams) -> list[EpisodeInput]:
    """Seed runs: one episode per seed triplet. Otherwise the episodes prepare planned. At most `n`."""
    opts = AZROptions.parse(params.options)
    shared = opts.model_dump(mode="json", exclude={"episodes", "seeds"})
    if opts.mode == "seed":
        items = [
            EpisodeInput(
                key=f"seed-{index}-{seed.get('id', '')}",
                state={"options": shared, "task_type": "deduction", "seed": seed},
            )
            for index, seed in enumerate(opts.seeds)
        ]
    else:
        items = [
            EpisodeInput(
                key=entry["key"], state={"options": shared, **{k: v for k, v in entry.items() if k != "key"}}
            )
            for entry in opts.episodes
        ]
    return items[: params.n]


def outcome(final_state: dict[str, Any]) -> Outcome:
    """Kept when the proposal is a valid task. Rewards live on the steps (per role); metrics here."""
    metrics: dict[str, float] = {}
    for name in ("solve_rate", "learnability", "solved"):
        if final_state.get(name) is not None:
            metrics[name] = float(final_state[name])
    if final_state.get("failed"):
        return Outcome(kept=False, reason=final_state["failed"], metrics=metrics)
    if not final_state.get("infrastructure"):
        metrics["valid"] = float(bool(final_state.get("task")))
    if final_state.get("task"):
        return Outcome(kept=True, metrics=metrics)
    return Outcome(kept=False, reason=_reason(final_state.get("invalid")), metrics=metrics)


def _reason(invalid: str | None) -> str:
    """A rejection reason short enough to count by kind in the summary."""
    text = (invalid or "invalid proposal").splitlines()[0]
    return text if len(text) <= 120 else text[:117] + "..."


def azr_graph(sandbox: RunnerProvider | None = None) -> GraphDef:
    """The azr graph; `sandbox` provides the TripletRunner (default: a pool started on first use)."""
    provider = sandbox or TripletSandbox()
    return GraphDef(
        name="azr",
        roles=(PROPOSER, SOLVER),
        build=lambda ctx: build_graph(ctx, provider),
        inputs=inputs,
        outcome=outcome,
        prepare=prepare,
        description="Absolute Zero: propose a code task → validate in the sandbox → learnability → solve",
        rewards=REWARDS,
        options=AZROptions,
    )


AZR = azr_graph()
"""The built-in graph for `rolegraph run azr` (its sandbox pool starts on first use)."""
