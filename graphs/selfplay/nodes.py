"""The self-play graph's nodes: plain async functions `node(state, ctx) -> state update`.

Verification runs as environment calls: math-verify in a worker thread under a deadline, code in the sandbox
(`rolegraph.trainers.code_rollouts.verify_code`; model code is only parsed on the host). A check the
infrastructure could not run (sandbox failure, verifier timeout) gives the rollout the reward None, never 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rolegraph.agents.registry import get_role
from rolegraph.environments import math_verify
from rolegraph.environments.math_verify import answers_equivalent, majority_answer, verify
from rolegraph.errors import ConfigError
from rolegraph.graphs.context import GraphContext, env_or_none
from rolegraph.graphs.selfplay.problems import Problem, rollout_answer
from rolegraph.graphs.selfplay.state import SelfPlayOptions, SelfPlayState
from rolegraph.store.records import Step
from rolegraph.trainers.code_rollouts import code_role, task_text, verify_code

T = TypeVar("T")
SandboxProvider = Callable[[], Awaitable[Any]]
"""Returns the sandbox pool code rollouts run in (started on first use by whoever owns it)."""

REFERENCE_NODE = "reference"
ROLLOUT_NODE = "rollout"
VERIFY_TIMEOUT_S = math_verify.VERIFY_TIMEOUT_S
"""Deadline for one math-verify check (tests shorten it)."""


def _options(state: SelfPlayState) -> SelfPlayOptions:
    return SelfPlayOptions.parse(state.get("options", {}))


def _problem(state: SelfPlayState) -> Problem:
    return Problem.from_state(state["problem"])


async def _in_thread(fn: Callable[[], T]) -> T:
    return await math_verify.verify_within(fn, VERIFY_TIMEOUT_S)


async def reference(state: SelfPlayState, ctx: GraphContext) -> dict[str, Any]:
    """The math reference answer: the problem's own, else the majority of `teacher_role` answering the
    policy's prompt (its choices get `majority_vote`: 1 when they agree with the majority)."""
    options = _options(state)
    problem = _problem(state)
    if problem.code is not None:
        return {"reference": None, "reference_source": None}
    if problem.answer is not None:
        return {"reference": problem.answer, "reference_source": "problem"}
    if options.teacher_role is None:
        return {"failed": "no reference answer (give the problem an answer, or pass --teacher-role)"}
    step = await ctx.call_role(
        options.teacher_role,
        node=REFERENCE_NODE,
        episode_id=state["episode_id"],
        variables={"problem": problem.problem},
        prompt=get_role(options.policy_role),
        n=options.teacher_n,
        max_tokens=options.max_tokens,
    )
    if step.error:
        return {"failed": f"teacher call failed: {step.error}"}
    answers = [rollout_answer(text, fields) for text, fields in zip(step.texts, step.parsed, strict=True)]

    def vote() -> dict[str, Any]:
        answer, share = majority_answer(answers)
        agrees = [float(answer is not None and answers_equivalent(a, answer)) for a in answers]
        return {"majority_answer": answer, "agreement": share, "agrees": agrees}

    result = await env_or_none(
        ctx,
        "math_verify",
        node=REFERENCE_NODE,
        episode_id=state["episode_id"],
        request={"answers": answers},
        fn=lambda: _in_thread(vote),
    )
    if result is None:
        ctx.add_rewards(step, {"majority_vote": None})
        return {"failed": "the teacher's majority vote could not be computed"}
    ctx.add_rewards(step, [{"majority_vote": value} for value in result["agrees"]])
    if result["majority_answer"] is None:
        return {"failed": f"teacher role '{options.teacher_role}' gave no answer"}
    return {"reference": result["majority_answer"], "reference_source": "teacher"}


def route_after_reference(state: SelfPlayState) -> str:
    """Conditional edge: without a reference the rollouts could not be checked, so none are sampled."""
    return "end" if state.get("failed") else "rollout"


async def rollout(state: SelfPlayState, ctx: GraphContext, sandbox: SandboxProvider | None) -> dict[str, Any]:
    """n rollouts of the policy in one call, each verified, each rewarded with `passed` (None: unknown)."""
    options = _options(state)
    problem = _problem(state)
    variables: dict[str, Any] = {"problem": problem.problem}
    prompt = None
    if problem.code is not None:
        prompt = code_role(options.policy_role)
        variables = {"task": task_text(problem.problem, problem.code)}
    sampling: dict[str, Any] = {
        "n": options.n,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
    }
    if options.seed is not None:
        sampling["seed"] = options.seed
    step = await ctx.call_role(
        options.policy_role,
        node=ROLLOUT_NODE,
        episode_id=state["episode_id"],
        variables=variables,
        prompt=prompt,
        **sampling,
    )
    if step.error:
        return {"failed": f"policy call failed: {step.error}"}
    checks = [
        _check(ctx, state["episode_id"], problem, state.get("reference"), index, step, sandbox)
        for index in range(len(step.choices))
    ]
    verdicts = await asyncio.gather(*checks)
    passed = [ok for _, ok in verdicts]
    ctx.add_rewards(step, [{"passed": None if ok is None else float(ok)} for ok in passed])
    return {"verdicts": [verdict for verdict, _ in verdicts], "passed": passed}


async def _check(
    ctx: GraphContext,
    episode_id: str,
    problem: Problem,
    gold: str | None,
    index: int,
    step: Step,
    sandbox: SandboxProvider | None,
) -> tuple[str | None, bool | None]:
    """(verdict, passed) of one rollout: the sandbox status for code, the extracted answer for math."""
    text = step.texts[index]
    if problem.code is not None:
        if sandbox is None:
            raise ConfigError(
                f"problem {problem.id} is a code problem but the graph has no sandbox",
                "run self-play with `rolegraph train selfplay`, which starts one",
            )
        spec = problem.code

        async def run_tests() -> Any:
            return await verify_code(await sandbox(), spec, text)

        code = await env_or_none(
            ctx,
            "code_tests",
            node=ROLLOUT_NODE,
            episode_id=episode_id,
            request={"rollout": index, "kind": spec.kind},
            fn=run_tests,
        )
        return (None, None) if code is None else (code.status, code.passed)
    answer = rollout_answer(text, step.parsed[index])

    async def check_answer() -> dict[str, Any]:
        return {"answer": answer, "passed": await _in_thread(lambda: verify(answer, gold))}

    math = await env_or_none(
        ctx,
        "math_verify",
        node=ROLLOUT_NODE,
        episode_id=episode_id,
        request={"rollout": index, "answer": answer, "reference": gold},
        fn=check_answer,
    )
    return (answer, None) if math is None else (answer, bool(math["passed"]))
