"""The EM graphs' nodes: plain async functions `node(state, ctx) -> state update`."""

from __future__ import annotations

import asyncio
from typing import Any

from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.em.state import (
    EXTRACT_ROLE,
    P_ROLE,
    Q_ROLE,
    EMOptions,
    EMState,
    argmax,
    problem_prefix,
    proposal_continuation,
    proposer_variables,
    rationale_of,
    rationale_variables,
)
from rolegraph.store.records import Step


def _options(state: EMState) -> EMOptions:
    return EMOptions.parse(state.get("options", {}))


def _call_failure(role: str, step: Step) -> str | None:
    """Why a call gave nothing to work with, or None."""
    if step.error:
        return f"{role} call failed: {step.error}"
    if not step.choices:
        return f"{role} returned no choices"
    return None


async def extract(state: EMState, ctx: GraphContext) -> dict[str, Any]:
    """c for a seed that has none: concept_extractor, greedy."""
    options = _options(state)
    step = await ctx.call_role(
        EXTRACT_ROLE,
        node="extract",
        episode_id=state["episode_id"],
        variables={"problem": state["problem"], "k": options.concepts_k},
        n=1,
        temperature=0.0,
        max_tokens=options.max_tokens,
    )
    if failure := _call_failure(EXTRACT_ROLE, step):
        return {"failed": failure}
    items = (step.first or {}).get("items") or []
    concepts = [str(item).strip() for item in items if str(item).strip()][: options.concepts_k]
    if not concepts:
        return {"failed": f"concept_extractor wrote no concepts: {step.parse_errors[0]}"}
    return {"concepts": concepts, "failed": None}


async def e_sample(state: EMState, ctx: GraphContext) -> dict[str, Any]:
    """k rationales z ~ q(z|c,x) in one call."""
    options = _options(state)
    step = await ctx.call_role(
        Q_ROLE,
        node="e_sample",
        episode_id=state["episode_id"],
        variables=rationale_variables(state, options),
        n=options.k,
        temperature=options.temperature,
        max_tokens=options.max_tokens,
    )
    if failure := _call_failure(Q_ROLE, step):
        return {"failed": failure}
    rationales = [rationale_of(c.text, c.parsed) for c in step.choices]
    return {"rationales": rationales, "sample_step": step.id, "failed": None}


async def e_score(state: EMState, ctx: GraphContext) -> dict[str, Any]:
    """log p(z,x|c) under p for each sampled z; the argmax is selected (rewards on the sampling step)."""
    options = _options(state)
    variables = proposer_variables(state, options)
    steps = await asyncio.gather(
        *(
            ctx.score_role(
                P_ROLE,
                node="e_score",
                episode_id=state["episode_id"],
                variables=variables,
                continuation=proposal_continuation(z, state["problem"]),
            )
            for z in state["rationales"]
        )
    )
    scores = [step.metrics.get("log_p") for step in steps]
    best = argmax(scores)
    ctx.add_rewards(
        _sample_step(state),
        [{"log_p": s, "selected": None if s is None else float(i == best)} for i, s in enumerate(scores)],
    )
    if best is None:
        return {"scores": scores, "failed": "no rationale could be scored under p"}
    return {"scores": scores, "best": best, "best_log_p": scores[best], "failed": None}


def _sample_step(state: EMState) -> Step:
    """The E-step's sampling step as recorded by the previous node (rewards are attached by id)."""
    return Step(
        id=state["sample_step"],
        episode_id=state["episode_id"],
        attempt=0,
        kind="role",
        node="e_sample",
        role=Q_ROLE,
    )


async def m_decode(state: EMState, ctx: GraphContext) -> dict[str, Any]:
    """z* = the greedy rationale of the (updated) q."""
    options = _options(state)
    step = await ctx.call_role(
        Q_ROLE,
        node="m_decode",
        episode_id=state["episode_id"],
        variables=rationale_variables(state, options),
        n=1,
        temperature=0.0,
        max_tokens=options.max_tokens,
    )
    if failure := _call_failure(Q_ROLE, step):
        return {"failed": failure}
    return {"rationale": rationale_of(step.choices[0].text, step.choices[0].parsed), "failed": None}


async def m_score(state: EMState, ctx: GraphContext) -> dict[str, Any]:
    """log p(x|z*,c) = log p(z*,x|c) − log p(z*|c) under the current p (two scoring calls)."""
    options = _options(state)
    variables = proposer_variables(state, options)
    full, prefix = await asyncio.gather(
        *(
            ctx.score_role(
                P_ROLE, node="m_score", episode_id=state["episode_id"], variables=variables, continuation=text
            )
            for text in (
                proposal_continuation(state["rationale"], state["problem"]),
                problem_prefix(state["rationale"]),
            )
        )
    )
    whole, head = full.metrics.get("log_p"), prefix.metrics.get("log_p")
    if whole is None or head is None:
        return {"failed": f"scoring under p failed: {full.error or prefix.error}"}
    return {"log_p_x": whole - head, "failed": None}


def route(state: EMState) -> str:
    """Conditional edge: stop the episode once a node has failed."""
    return "stop" if state.get("failed") else "next"
