"""The azr graph's nodes: propose → validate → learnability → solve, plain async functions over a ctx.

Validation and judging are environment calls on a TripletRunner (environments/triplets.py): programs and
inputs are parsed with `ast` on the host and run only in the sandbox. A check the sandbox could not run gives
the reward None (left out of training and counted), never a penalty or a 0 the model earned.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from rolegraph.agents.registry import get_role
from rolegraph.agents.role import Role
from rolegraph.environments.triplets import Judgement, TripletRunner, Validation, module_patches
from rolegraph.graphs.azr.parse import (
    PROPOSAL_PARSERS,
    SOLVE_PROGRAM_REGEX,
    SOLVE_REGEX,
    TRIPLET_PROPOSAL_REGEX,
    induction_proposal_regex,
    parse_r1_answer,
)
from rolegraph.graphs.azr.sandbox import RunnerProvider
from rolegraph.graphs.azr.state import PROPOSER, SOLVER, AZROptions, AZRState
from rolegraph.graphs.azr.tasks import Task, show_references, solver_variables
from rolegraph.graphs.context import GraphContext, env_or_none
from rolegraph.serving.types import Choice
from rolegraph.store.records import Step

T = TypeVar("T")
PROPOSE_NODE = "propose"
VALIDATE_NODE = "validate"
LEARNABILITY_NODE = "learnability"
SOLVE_NODE = "solve"
MIN_INDUCTION_PAIRS = 2
"""An induction task needs one shown and one held-back pair at least."""


def options(state: AZRState) -> AZROptions:
    return AZROptions.parse(state.get("options", {}))


def role_prompt(ctx: GraphContext, name: str, parser: Callable[[str], dict[str, Any]], regex: str) -> Role:
    """The prompt file `name` (overridable with --prompts-dir) with its AZR parser, decoding constrained to
    `regex` by default (the config binding can turn it off)."""
    role = get_role(name, getattr(ctx, "prompts_dir", None))
    extra = {"structured_outputs": {"regex": regex}, **(role.sampling.get("extra") or {})}
    return dataclasses.replace(role, parser=parser, sampling={**role.sampling, "extra": extra})


def _proposal_step(state: AZRState) -> Step:
    """A reference to the recorded proposer step (rewards are attached by id once they are known)."""
    return Step(
        id=state["propose_step"],
        episode_id=state["episode_id"],
        attempt=0,
        kind="role",
        node=PROPOSE_NODE,
        role=PROPOSER,
    )


async def propose(state: AZRState, ctx: GraphContext) -> dict[str, Any]:
    """The proposer writes a program and input (deduction, abduction) or inputs and a message (induction).
    A seed episode proposes nothing: its triplet is the proposal."""
    opts = options(state)
    task_type = state["task_type"]
    if seed := state.get("seed"):
        return {"proposal": {"program": seed["program"], "input": seed["input"]}}
    if task_type == "induction":
        variables: dict[str, Any] = {"program": state["program"], "num_inputs": opts.induction_inputs}
        regex = induction_proposal_regex(opts.induction_inputs)
    else:
        variables = {"references": show_references(state.get("references") or [])}
        regex = TRIPLET_PROPOSAL_REGEX
    step = await ctx.call_role(
        PROPOSER,
        node=PROPOSE_NODE,
        episode_id=state["episode_id"],
        variables=variables,
        prompt=role_prompt(ctx, f"azr_propose_{task_type}", PROPOSAL_PARSERS[task_type], regex),
        n=1,
        max_tokens=opts.propose_max_tokens,
        temperature=opts.temperature,
    )
    if step.error or not step.choices:
        return {"failed": f"proposer call failed: {step.error or 'no choices'}"}
    choice = step.choices[0]
    if choice.parsed is None:
        ctx.add_rewards(step, {"propose": opts.format_penalty})
        return {"proposal": None, "propose_step": step.id, "invalid": f"format: {choice.parse_error}"}
    proposal = dict(choice.parsed)
    if task_type == "induction":
        proposal["program"] = state["program"]
    return {"proposal": proposal, "propose_step": step.id}


def route_after_propose(state: AZRState) -> str:
    return "end" if state.get("failed") else "validate"


async def validate(state: AZRState, ctx: GraphContext, sandbox: RunnerProvider) -> dict[str, Any]:
    """Checks that the proposal is a task: it patches no module, parses and defines f, the input is only call
    arguments, it obeys the AST policy (on the host, `ast` only), runs in the sandbox, and gives the same
    output on two fresh runs."""
    opts = options(state)
    proposal = state.get("proposal")
    if proposal is None:
        return {"task": None}
    task_type = state["task_type"]
    program = str(proposal["program"])
    inputs = [str(i) for i in proposal["inputs"]] if task_type == "induction" else [str(proposal["input"])]
    if patches := module_patches(program):
        if "propose_step" in state:
            ctx.add_rewards(_proposal_step(state), {"propose": opts.invalid_penalty})
        return {"task": None, "invalid": f"program {', '.join(patches)}"}

    async def run() -> list[Validation]:
        return await (await sandbox()).avalidate_many([(program, i) for i in inputs])

    validations = await env_or_none(
        ctx,
        "triplet_validate",
        node=VALIDATE_NODE,
        episode_id=state["episode_id"],
        request={"program": program, "inputs": inputs},
        fn=run,
    )
    reward: float | None
    if validations is None or any(v.infrastructure for v in validations):
        update: dict[str, Any] = {"task": None, "infrastructure": True, "invalid": "the sandbox failed"}
        reward = None
    elif task_type == "induction":
        update = _induction_task(program, str(proposal.get("message", "")), inputs, validations)
        reward = None if update["task"] else opts.invalid_penalty
    elif validations[0].valid:
        task = Task(task_type, program, inputs[0], str(validations[0].output))
        update, reward = {"task": task.to_state()}, None
    else:
        update, reward = {"task": None, "invalid": validations[0].error}, opts.invalid_penalty
    if "propose_step" in state and (reward is not None or update.get("infrastructure")):
        ctx.add_rewards(_proposal_step(state), {"propose": reward})
    return update


def _induction_task(
    program: str, message: str, inputs: list[str], checks: list[Validation]
) -> dict[str, Any]:
    """Valid inputs with their sandbox outputs; the first half is shown to the solver, the rest held back."""
    pairs = [(i, str(v.output)) for i, v in zip(inputs, checks, strict=True) if v.valid]
    if len(pairs) < MIN_INDUCTION_PAIRS:
        errors = sorted({str(v.error) for v in checks if not v.valid})
        why = f"only {len(pairs)} of {len(inputs)} inputs are valid"
        return {"task": None, "invalid": f"{why}: {'; '.join(errors)}" if errors else why}
    half = len(pairs) // 2
    task = Task("induction", program, message=message, shown=pairs[:half], held=pairs[half:])
    return {"task": task.to_state()}


def route_after_validate(state: AZRState) -> str:
    return "learnability" if options(state).mode == "train" else "end"


async def _judge(runner: TripletRunner, task: Task, answer: str) -> Judgement:
    if task.type == "deduction":
        return runner.judge_deduction(task.output, answer)
    if task.type == "abduction":
        return await runner.ajudge_abduction(task.program, task.output, answer)
    return await runner.ajudge_induction(answer, task.held)


async def judge_choices(
    ctx: GraphContext, state: AZRState, node: str, task: Task, choices: list[Choice], sandbox: RunnerProvider
) -> list[float | None]:
    """Per choice: 1.0 correct, 0.0 wrong (an answer outside the format included), None when the sandbox
    could not judge it."""
    answers = [None if c.parsed is None else str(c.parsed["answer"]) for c in choices]

    async def run() -> list[dict[str, Any]]:
        runner = await sandbox()
        verdicts = await asyncio.gather(*(_judge(runner, task, a) for a in answers if a is not None))
        found = iter(verdicts)
        return [
            {"format": False} if a is None else dataclasses.asdict(next(found)) | {"format": True}
            for a in answers
        ]

    verdicts = await env_or_none(
        ctx,
        "triplet_judge",
        node=node,
        episode_id=state["episode_id"],
        request={"task_type": task.type, "answers": answers},
        fn=run,
    )
    if verdicts is None:
        return [None] * len(choices)
    return [
        0.0 if not v["format"] else None if v["infrastructure"] else float(v["correct"]) for v in verdicts
    ]


def _task(state: AZRState) -> Task | None:
    data = state.get("task")
    return Task.from_state(data) if data else None


async def learnability(state: AZRState, ctx: GraphContext, sandbox: RunnerProvider) -> dict[str, Any]:
    """n solver rollouts on a valid proposal; r_propose = 1 - rate if 0 < rate < 1, else `extreme_reward`."""
    opts = options(state)
    task = _task(state)
    if task is None:
        return {}
    step = await _solve_call(ctx, state, task, LEARNABILITY_NODE, opts.rollouts, opts)
    if step.error:
        return {"failed": f"solver call failed: {step.error}"}
    scores = await judge_choices(ctx, state, LEARNABILITY_NODE, task, step.choices, sandbox)
    known = [s for s in scores if s is not None]
    ctx.add_rewards(step, [{"rollout_correct": s} for s in scores])
    if not known:
        ctx.add_rewards(_proposal_step(state), {"propose": None})
        return {"solve_rate": None, "learnability": None}
    rate = sum(known) / len(known)
    reward = 1.0 - rate if 0.0 < rate < 1.0 else opts.extreme_reward
    ctx.add_rewards(_proposal_step(state), {"propose": reward})
    return {"solve_rate": rate, "learnability": reward}


async def solve(state: AZRState, ctx: GraphContext, sandbox: RunnerProvider) -> dict[str, Any]:
    """One solver answer on the proposal, or on a buffer task when the proposal is invalid; r_solve 1 or 0,
    `format_penalty` for an answer outside the R1 format, None when the sandbox could not judge it."""
    opts = options(state)
    task, source, fallback = _task(state), "proposal", state.get("fallback")
    if task is None and fallback:
        task, source = Task.from_state(fallback), "buffer"
    if task is None:
        return {"solve_source": None}
    step = await _solve_call(ctx, state, task, SOLVE_NODE, 1, opts)
    if step.error or not step.choices:
        return {"failed": f"solver call failed: {step.error or 'no choices'}"}
    (score,) = await judge_choices(ctx, state, SOLVE_NODE, task, step.choices[:1], sandbox)
    value = opts.format_penalty if step.choices[0].parsed is None else score
    ctx.add_rewards(step, {"solve": value})
    return {"solved": value, "solve_source": source}


async def _solve_call(
    ctx: GraphContext, state: AZRState, task: Task, node: str, n: int, opts: AZROptions
) -> Step:
    regex = SOLVE_PROGRAM_REGEX if task.type == "induction" else SOLVE_REGEX
    return await ctx.call_role(
        SOLVER,
        node=node,
        episode_id=state["episode_id"],
        variables=solver_variables(task),
        prompt=role_prompt(ctx, f"azr_solve_{task.type}", parse_r1_answer, regex),
        n=n,
        max_tokens=opts.solve_max_tokens,
        temperature=opts.temperature,
    )
