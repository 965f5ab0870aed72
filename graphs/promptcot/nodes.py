"""The PromptCoT graph's nodes: plain async functions `node(state, ctx) -> state update`."""

from __future__ import annotations

from typing import Any

from rolegraph.agents.parsers import CRITERIA, split_proposal, verdict_from_criteria
from rolegraph.agents.registry import get_role
from rolegraph.environments.math_verify import answers_equivalent, majority_answer
from rolegraph.errors import FailureKind
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.promptcot.state import PromptCotOptions, PromptCotState
from rolegraph.store.records import Step


def _options(state: PromptCotState) -> PromptCotOptions:
    return PromptCotOptions.parse(state.get("options", {}))


def _overrides(options: PromptCotOptions) -> dict[str, Any]:
    return {"max_tokens": options.max_tokens} if options.max_tokens else {}


def _failure(role: str, call: Step) -> dict[str, Any]:
    """The state update for a call that gave nothing usable: a one-line reason and its FailureKind."""
    if call.error:
        return {"failed": f"{role} call failed: {call.error}", "failed_kind": call.error_kind}
    first_error = next((e for e in call.parse_errors if e), "no choices returned")
    return {"failed": f"{role} output unparseable: {first_error}", "failed_kind": FailureKind.PARSE.value}


async def propose(state: PromptCotState, ctx: GraphContext) -> dict[str, Any]:
    """Rationale then problem from the concept set and difficulty (PromptCoT 1.0's joint proposal).

    Small models often stop after the rationale; with `recover_problem` the problem is then written by
    `problem_writer` from that rationale (PromptCoT 2.0's p(x | z, c)).
    """
    options = _options(state)
    difficulty = state.get("difficulty", options.difficulty)
    variables = {"concepts": state["concepts"], "difficulty": difficulty}
    call = await ctx.call_role(
        "proposer", node="propose", episode_id=state["episode_id"], variables=variables, **_overrides(options)
    )
    if call.ok and call.first is not None:
        return {
            "rationale": call.first["rationale"],
            "problem": call.first["problem"],
            "problem_source": "proposer",
            "failed": None,
        }
    rationale = split_proposal(get_role("proposer").prefill + call.texts[0])[0] if call.texts else ""
    if call.error or not options.recover_problem or not rationale:
        return _failure("proposer", call)
    recovery = await ctx.call_role(
        "problem_writer",
        node="propose",
        episode_id=state["episode_id"],
        variables={**variables, "rationale": rationale},
        **_overrides(options),
    )
    if not recovery.ok or recovery.first is None:
        return _failure("problem_writer", recovery)
    return {
        "rationale": rationale,
        "problem": recovery.first["problem"],
        "problem_source": "problem_writer",
        "failed": None,
    }


def _reasoning_tokens(call: Step) -> list[int]:
    counts = [len(c.token_ids) if c.token_ids is not None else None for c in call.choices]
    if all(c is not None for c in counts):
        return [int(c or 0) for c in counts]
    choices = max(len(call.choices), 1)
    return [call.completion_tokens // choices] * choices


async def solve(state: PromptCotState, ctx: GraphContext) -> dict[str, Any]:
    """k solver attempts in one call (n=k); majority answer, agreement and mean reasoning length."""
    options = _options(state)
    call = await ctx.call_role(
        "solver",
        node="solve",
        episode_id=state["episode_id"],
        variables={"problem": state["problem"]},
        n=options.k,
        **_overrides(options),
    )
    if call.error:
        return _failure("solver", call)
    answers: list[str | None] = [p["answer"] if p else None for p in call.parsed]
    answers += [None] * (options.k - len(answers))

    async def vote() -> dict[str, Any]:
        answer, share = majority_answer(answers)
        return {"majority_answer": answer, "agreement": share}

    agreement = await ctx.call_env(
        "math_verify", node="solve", episode_id=state["episode_id"], request={"answers": answers}, fn=vote
    )
    majority = agreement["majority_answer"]
    ctx.add_rewards(
        call,
        [
            {
                "majority": float(
                    majority is not None and answer is not None and answers_equivalent(answer, majority)
                )
            }
            for answer in answers[: len(call.choices)]
        ],
    )
    tokens = _reasoning_tokens(call)
    return {
        "attempts": call.texts,
        "answers": answers,
        "majority_answer": agreement["majority_answer"],
        "agreement": agreement["agreement"],
        "mean_reasoning_tokens": sum(tokens) / len(tokens) if tokens else 0.0,
    }


async def judge(state: PromptCotState, ctx: GraphContext) -> dict[str, Any]:
    """PromptCoT 1.0's five-criterion verdict."""
    options = _options(state)
    call = await ctx.call_role(
        "judge",
        node="judge",
        episode_id=state["episode_id"],
        variables={
            "rationale": state["rationale"],
            "problem": state["problem"],
            "concepts": state["concepts"],
            "difficulty": state.get("difficulty", options.difficulty),
        },
        **_overrides(options),
    )
    if not call.ok or call.first is None:
        return {"verdict": None, "criteria": {}, **_failure("judge", call)}
    criteria = dict(call.first["criteria"])
    verdict = call.first["verdict"]
    if options.judge_rule != "promptcot" and all(name in criteria for name in CRITERIA):
        verdict = verdict_from_criteria(criteria, options.judge_rule)
    return {"verdict": verdict, "criteria": criteria}


def decide_outcome(state: PromptCotState, options: PromptCotOptions) -> tuple[bool, str | None]:
    """Keep or reject by the configured rule; the reason names the first rule that failed."""
    failed = state.get("failed")
    parse_only = state.get("failed_kind") == FailureKind.PARSE.value
    if failed and (state.get("problem") is None or options.require_parsed or not parse_only):
        return False, failed
    verdict = state.get("verdict")
    if verdict is not None and verdict not in options.accept_verdicts:
        return False, f"judge verdict {verdict} (accepted: {', '.join(options.accept_verdicts)})"
    answers = state.get("answers") or []
    if options.min_agreement > 0 and not any(answers):
        return False, "no solver attempt gave a final answer"
    agreement = float(state.get("agreement", 0.0))
    if agreement < options.min_agreement:
        return False, f"agreement {agreement:.2f} < {options.min_agreement:.2f}"
    return True, None


async def decide(state: PromptCotState, ctx: GraphContext) -> dict[str, Any]:
    """Record keep/reject and the reason."""
    kept, reason = decide_outcome(state, _options(state))
    return {"kept": kept, "reject_reason": reason}


def route_after(state: PromptCotState) -> str:
    """Conditional edge: skip to `decide` once a step has failed."""
    return "decide" if state.get("failed") else "continue"
