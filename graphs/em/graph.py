"""PromptCoT 2.0's EM steps as GraphDefs, one episode per seed.

em_concepts  concepts for seeds that have none (concept_extractor)
em_e         E-step: k rationales from q → log p(z,x|c) of each under p → the argmax is selected
em_m         M-step: z* decoded greedily from the updated q → log p(x|z*,c) under p
em_score     log p(x|z*,c) under the updated p, for the z* of an em_m run
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph

from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.em import nodes
from rolegraph.graphs.em.state import EXTRACT_ROLE, P_ROLE, Q_ROLE, EMOptions, EMState

NodeFn = Callable[[EMState, GraphContext], Awaitable[dict[str, Any]]]


def _bind(fn: NodeFn, ctx: GraphContext) -> Callable[[EMState], Awaitable[dict[str, Any]]]:
    async def node(state: EMState) -> dict[str, Any]:
        return await fn(state, ctx)

    node.__name__ = fn.__name__
    return node


def _chain(*fns: NodeFn) -> Callable[[GraphContext], StateGraph]:
    """A linear graph of `fns` that ends early once a node sets `failed`."""

    def build(ctx: GraphContext) -> StateGraph:
        graph = StateGraph(EMState)
        for fn in fns:
            graph.add_node(fn.__name__, _bind(fn, ctx))  # type: ignore[arg-type, call-overload, unused-ignore]
        graph.add_edge(START, fns[0].__name__)
        for fn, after in itertools.pairwise(fns):
            graph.add_conditional_edges(fn.__name__, nodes.route, {"next": after.__name__, "stop": END})
        graph.add_edge(fns[-1].__name__, END)
        return graph

    return build


def inputs(params: RunParams) -> list[EpisodeInput]:
    """One episode per seed of `options.seeds`, keyed by the seed's id (stable for resuming)."""
    options = EMOptions.parse(params.options)
    shared = options.model_dump(mode="json", exclude={"seeds"})
    episodes = []
    for seed in options.seeds:
        key = str(seed["id"])
        state: EMState = {
            "episode_id": key,
            "options": shared,
            "seed": key,
            "problem": str(seed["problem"]),
            "concepts": [str(c) for c in seed.get("concepts") or []],
        }
        if seed.get("rationale") is not None:
            state["rationale"] = str(seed["rationale"])
        episodes.append(EpisodeInput(key=key, state=dict(state)))
    return episodes


def _outcome(field: str) -> Callable[[dict[str, Any]], Outcome]:
    """Kept when the episode reached `field`; its number (if any) is the episode's metric."""

    def outcome(final_state: dict[str, Any]) -> Outcome:
        value = final_state.get(field)
        if value is None or final_state.get("failed"):
            return Outcome(kept=False, reason=final_state.get("failed") or f"no {field}")
        metrics = {field: float(value)} if isinstance(value, int | float) else {}
        return Outcome(kept=True, metrics=metrics)

    return outcome


EM_CONCEPTS = GraphDef(
    name="em_concepts",
    roles=(EXTRACT_ROLE,),
    build=_chain(nodes.extract),
    inputs=inputs,
    options=EMOptions,
    outcome=_outcome("concepts"),
    description="EM: foundational concepts c of seed problems that have none",
)

EM_E = GraphDef(
    name="em_e",
    roles=(Q_ROLE, P_ROLE),
    build=_chain(nodes.e_sample, nodes.e_score),
    inputs=inputs,
    options=EMOptions,
    outcome=_outcome("best_log_p"),
    rewards=(
        Reward("log_p", weight=0.0, description="log p(z,x|c) of the rationale under the problem model p"),
        Reward("selected", train=True, description="1 for the argmax rationale (q's training rows), else 0"),
    ),
    description="EM E-step: k rationales from q, scored by log p(z,x|c) under p, the best selected",
)

EM_M = GraphDef(
    name="em_m",
    roles=(Q_ROLE, P_ROLE),
    build=_chain(nodes.m_decode, nodes.m_score),
    inputs=inputs,
    options=EMOptions,
    outcome=_outcome("log_p_x"),
    description="EM M-step: z* decoded greedily from q, scored by log p(x|z*,c) under p",
)

EM_SCORE = GraphDef(
    name="em_score",
    roles=(P_ROLE,),
    build=_chain(nodes.m_score),
    inputs=inputs,
    options=EMOptions,
    outcome=_outcome("log_p_x"),
    description="EM: log p(x|z*,c) under the updated p, for an M-step's z*",
)
