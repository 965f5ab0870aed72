"""The `promptcot` GraphDef: concepts → rationale + problem → k solver attempts → judge → keep/reject."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from langgraph.graph import END, START, StateGraph

from rolegraph.agents.parsers import normalize_concept
from rolegraph.errors import ConfigError
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.promptcot import nodes
from rolegraph.graphs.promptcot.concepts import prepare_concepts
from rolegraph.graphs.promptcot.embeddings import embed, texts_key
from rolegraph.graphs.promptcot.sampler import ConceptSampler, cooccurrence_graph
from rolegraph.graphs.promptcot.state import PromptCotOptions, PromptCotState

NodeFn = Callable[[PromptCotState, GraphContext], Awaitable[dict[str, Any]]]
VERDICT_REWARD = {"perfect": 1.0, "acceptable": 0.5, "bad": 0.0}


def _bind(fn: NodeFn, ctx: GraphContext) -> Callable[[PromptCotState], Awaitable[dict[str, Any]]]:
    async def node(state: PromptCotState) -> dict[str, Any]:
        return await fn(state, ctx)

    node.__name__ = fn.__name__
    return node


def build(ctx: GraphContext) -> StateGraph:
    graph = StateGraph(PromptCotState)
    for fn in (nodes.propose, nodes.solve, nodes.judge, nodes.decide):
        graph.add_node(fn.__name__, _bind(fn, ctx))  # type: ignore[arg-type, call-overload, unused-ignore]
    graph.add_edge(START, "propose")
    graph.add_conditional_edges("propose", nodes.route_after, {"continue": "solve", "decide": "decide"})
    graph.add_conditional_edges("solve", nodes.route_after, {"continue": "judge", "decide": "decide"})
    graph.add_edge("judge", "decide")
    graph.add_edge("decide", END)
    return graph


async def prepare(ctx: GraphContext, params: RunParams) -> dict[str, Any]:
    """Concept extraction (role calls go through ctx) and the concept embeddings for sampling."""
    options = PromptCotOptions.parse(params.options)
    prepared = await prepare_concepts(ctx, options)
    if options.use_embeddings:
        cache = Path(prepared["concepts_file"]).parent
        await asyncio.to_thread(embed, prepared["concept_pool"], cache)
        prepared["embeddings_file"] = str(cache / f"embeddings-{texts_key(prepared['concept_pool'])}.npy")
    return prepared


def sample_concept_sets(params: RunParams, options: PromptCotOptions) -> list[list[str]]:
    lists = params.options.get("concept_lists")
    if not lists:
        raise ConfigError("promptcot inputs need a concept pool", "run the graph's prepare step first")
    graph = cooccurrence_graph(lists)
    embeddings = None
    if options.use_embeddings and params.options.get("embeddings_file"):
        pool = params.options["concept_pool"]
        vectors = np.load(params.options["embeddings_file"])
        by_key = {normalize_concept(c): vectors[i] for i, c in enumerate(pool)}
        embeddings = np.stack([by_key[key] for key in sorted(graph.nodes)])
    sampler = ConceptSampler(
        graph,
        embeddings,
        temperature=options.concept_temperature,
        similarity_weight=options.similarity_weight,
    )
    return sampler.sample_many(params.n, options.concepts_per_problem, params.seed)


def inputs(params: RunParams) -> list[EpisodeInput]:
    """`n` concept sets sampled deterministically from the run seed; keys are stable for resuming."""
    options = PromptCotOptions.parse(params.options)
    episodes = []
    for index, concepts in enumerate(sample_concept_sets(params, options)):
        digest = hashlib.sha256(json.dumps([concepts, options.difficulty]).encode()).hexdigest()[:8]
        key = f"{params.seed}-{index:05d}-{digest}"
        state: PromptCotState = {
            "episode_id": key,
            "options": options.model_dump(mode="json"),
            "concepts": concepts,
            "difficulty": options.difficulty,
        }
        episodes.append(EpisodeInput(key=key, state=dict(state)))
    return episodes


REWARDS = (
    Reward(
        "verdict",
        weight=1.0,
        train=True,
        description="the judge's verdict on the problem: perfect 1, acceptable 0.5, bad 0; 0 when the "
        "proposer wrote no parseable problem; None when the judge gave no verdict",
    ),
    Reward(
        "majority",
        weight=1.0,
        train=True,
        description="per solver attempt: 1 when its answer is the majority answer, else 0",
    ),
)


def verdict_reward(final_state: dict[str, Any]) -> float | None:
    """The proposer's reward: the judge's verdict, 0 for no usable problem, None when no verdict came."""
    verdict = final_state.get("verdict")
    if verdict in VERDICT_REWARD:
        return VERDICT_REWARD[verdict]
    if final_state.get("problem") is None:
        return 0.0
    return None


def outcome(final_state: dict[str, Any]) -> Outcome:
    kept = bool(final_state.get("kept"))
    metrics = {
        "agreement": float(final_state.get("agreement", 0.0)),
        "mean_reasoning_tokens": float(final_state.get("mean_reasoning_tokens", 0.0)),
    }
    reason = None if kept else (final_state.get("reject_reason") or "episode did not reach the decision")
    return Outcome(
        kept=kept, reason=reason, rewards={"verdict": verdict_reward(final_state)}, metrics=metrics
    )


PROMPTCOT = GraphDef(
    name="promptcot",
    roles=("concept_extractor", "proposer", "problem_writer", "solver", "judge"),
    build=build,
    inputs=inputs,
    outcome=outcome,
    prepare=prepare,
    description="PromptCoT 1.0 problem synthesis: concepts → rationale + problem → solver agreement → judge",
    rewards=REWARDS,
    options=PromptCotOptions,
)
