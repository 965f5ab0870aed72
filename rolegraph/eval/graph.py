"""The `eval` GraphDef: one episode per problem × binding; each samples k answers and checks every one.

The episode itself is a solver graph: by default `direct`, the self-play rollout graph (graphs/selfplay/):
one call of the binding's role with n = samples, then math-verify or the sandboxed tests per sample, each
sample rewarded `passed` (None when its check could not run). Other solver graphs (e.g. tool-integrated
reasoning) register in `SOLVER_GRAPHS` under the same contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolegraph.agents.registry import get_role
from rolegraph.agents.role import Role
from rolegraph.errors import ConfigError
from rolegraph.eval.bindings import Binding
from rolegraph.eval.tasks import TASKS, load_task
from rolegraph.graphs.base import EpisodeInput, GraphDef, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.selfplay import REWARDS
from rolegraph.graphs.selfplay.graph import build_graph, outcome
from rolegraph.graphs.selfplay.nodes import SandboxProvider
from rolegraph.graphs.selfplay.state import SelfPlayOptions

GRAPH_NAME = "eval"
EPISODE_PREFIX = "eval-"

SolverGraph = Callable[[GraphContext, SandboxProvider | None], StateGraph]
"""Builds the StateGraph of one eval episode. Its input state is `options` (SelfPlayOptions: `policy_role` is
the binding's role, `n` the samples) and `problem` (Problem.to_state()); its final state has `passed`, one
entry per sample (None: the check could not run), and its role calls record `passed` rewards per sample."""

SOLVER_GRAPHS: dict[str, SolverGraph] = {"direct": build_graph}


class EvalOptions(BaseModel):
    """What an eval run evaluates (stored with the run; a resume must ask for the same)."""

    model_config = ConfigDict(extra="forbid")

    task: str
    file: str
    bindings: list[dict[str, str]]
    """Binding role → label, in table order."""
    solver: str = "direct"
    samples: int = Field(1, ge=1)
    """Answers sampled per problem (pass@k is estimated from all of them)."""
    k: int = Field(1, ge=1)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    seed: int | None = None

    @classmethod
    def parse(cls, options: dict[str, Any]) -> EvalOptions:
        try:
            parsed = cls.model_validate(options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                f"eval option '{where}': {err['msg']}", "fix the eval command's options"
            ) from None
        if parsed.task not in TASKS:
            raise ConfigError(f"unknown eval task '{parsed.task}'", f"use one of: {', '.join(TASKS)}")
        if parsed.solver not in SOLVER_GRAPHS:
            raise ConfigError(
                f"unknown solver graph '{parsed.solver}'", f"use one of: {', '.join(SOLVER_GRAPHS)}"
            )
        if parsed.samples > 1 and parsed.temperature == 0:
            raise ConfigError(
                f"{parsed.samples} samples at temperature 0: greedy decoding gives one answer",
                "pass --temperature above 0 with --samples above 1",
            )
        if parsed.k > parsed.samples:
            raise ConfigError(
                f"pass@{parsed.k} needs at least {parsed.k} samples, got {parsed.samples}",
                "pass --samples at least --k",
            )
        return parsed


@dataclasses.dataclass(frozen=True)
class EvalGraphDef(GraphDef):
    """The eval GraphDef; it carries the solver prompt under each binding's role name."""

    role_defs: dict[str, Role] = dataclasses.field(default_factory=dict)


def episode_key(role: str, problem_id: str) -> str:
    return f"{EPISODE_PREFIX}{role}-{problem_id}"


def inputs(params: RunParams) -> list[EpisodeInput]:
    """Problem-major order, so every binding has answered the same problems when a run stops early."""
    options = EvalOptions.parse(params.options)
    problems = load_task(options.task, Path(options.file), params.n)
    out = []
    for problem in problems:
        for binding in options.bindings:
            rollout = SelfPlayOptions(
                problems=options.file,
                policy_role=binding["role"],
                n=options.samples,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                seed=options.seed,
            )
            out.append(
                EpisodeInput(
                    key=episode_key(binding["role"], problem.id),
                    state={"options": rollout.model_dump(mode="json"), "problem": problem.to_state()},
                )
            )
    return out


def eval_graph(
    bindings: list[Binding],
    sandbox: SandboxProvider | None = None,
    *,
    solver: str = "direct",
    solver_role: str = "solver",
    prompts_dir: Path | None = None,
) -> EvalGraphDef:
    """The eval graph over `bindings`; `sandbox` provides the pool code answers run in."""
    if solver not in SOLVER_GRAPHS:
        raise ConfigError(f"unknown solver graph '{solver}'", f"use one of: {', '.join(SOLVER_GRAPHS)}")
    build = SOLVER_GRAPHS[solver]
    prompt = get_role(solver_role, prompts_dir)
    return EvalGraphDef(
        name=GRAPH_NAME,
        roles=tuple(b.role for b in bindings),
        build=lambda ctx: build(ctx, sandbox),
        inputs=inputs,
        outcome=outcome,
        description=f"Eval: {solver} solver graph per problem × binding; answers checked by math-verify or "
        "sandboxed tests",
        rewards=tuple(r for r in REWARDS if r.name == "passed"),
        options=EvalOptions,
        role_defs={b.role: dataclasses.replace(prompt, name=b.role) for b in bindings},
    )
