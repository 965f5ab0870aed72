"""The `cruxeval` GraphDef: CRUXEval-O (predict the output) or CRUXEval-I (find an input) for the solver role.

One episode per problem: the solver answers the azr solver prompt of the matching task type (deduction for
output, abduction for input) in the R1 format, greedily; the answer is judged like an azr task. CRUXEval-I
runs `f(answer)` in the sandbox; CRUXEval-O compares the answer with the reference output as typed literals
(parsed with `ast`, nothing of the model's runs), so `1` and `1.0` differ where CRUXEval's `==` would not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from rolegraph.errors import ConfigError
from rolegraph.graphs.azr import nodes
from rolegraph.graphs.azr.parse import SOLVE_REGEX, parse_r1_answer
from rolegraph.graphs.azr.sandbox import RunnerProvider
from rolegraph.graphs.azr.state import SOLVER
from rolegraph.graphs.azr.tasks import Task, solver_variables
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.trainers.data import jsonl_values

MODE_TYPE = {"output": "deduction", "input": "abduction"}


class CruxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    mode: Literal["output", "input"] = "output"
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)


class CruxState(TypedDict, total=False):
    episode_id: str
    options: dict[str, Any]
    task: dict[str, Any]
    correct: float | None
    """1.0 / 0.0; None when the sandbox could not judge it."""
    formatted: bool
    failed: str | None


def load_problems(path: Path | str, mode: str) -> list[tuple[str, Task]]:
    """(id, task) per CRUXEval line (`code`, `input`, `output`, `id`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CRUXEval file {path} does not exist", "pass --file path/to/cruxeval.jsonl")
    problems = []
    for number, row in jsonl_values(path, "fix or drop the line"):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("code", "input", "output")
        ):
            raise ConfigError(
                f"{path}: line {number} is not a CRUXEval problem",
                "every line needs 'code', 'input', 'output'",
            )
        task = Task(MODE_TYPE[mode], row["code"], row["input"], row["output"])
        problems.append((str(row.get("id", f"line{number}")), task))
    return problems


async def solve(state: CruxState, ctx: GraphContext, sandbox: RunnerProvider) -> dict[str, Any]:
    opts = CruxOptions.model_validate(state["options"])
    task = Task.from_state(state["task"])
    step = await ctx.call_role(
        SOLVER,
        node="solve",
        episode_id=state["episode_id"],
        variables=solver_variables(task),
        prompt=nodes.role_prompt(ctx, f"azr_solve_{task.type}", parse_r1_answer, SOLVE_REGEX),
        n=1,
        max_tokens=opts.max_tokens,
        temperature=opts.temperature,
    )
    if step.error or not step.choices:
        return {"failed": f"solver call failed: {step.error or 'no choices'}"}
    (score,) = await nodes.judge_choices(ctx, state, "solve", task, step.choices[:1], sandbox)  # type: ignore[arg-type]
    formatted = step.choices[0].parsed is not None
    correct = 0.0 if not formatted else score
    ctx.add_rewards(step, {"correct": correct})
    return {"correct": correct, "formatted": formatted}


def outcome(final_state: dict[str, Any]) -> Outcome:
    if final_state.get("failed"):
        return Outcome(kept=False, reason=final_state["failed"])
    correct = final_state.get("correct")
    metrics = {"formatted": float(bool(final_state.get("formatted")))}
    if correct is not None:
        metrics["correct"] = float(correct)
    if correct is None:
        return Outcome(kept=False, reason="the sandbox could not judge the answer", metrics=metrics)
    return Outcome(kept=bool(correct), reason=None if correct else "wrong answer", metrics=metrics)


def cruxeval_graph(sandbox: RunnerProvider) -> GraphDef:
    def build(ctx: GraphContext) -> StateGraph:
        async def node(state: CruxState) -> dict[str, Any]:
            return await solve(state, ctx, sandbox)

        graph = StateGraph(CruxState)
        graph.add_node("solve", node)
        graph.add_edge(START, "solve")
        graph.add_edge("solve", END)
        return graph

    def inputs(params: RunParams) -> list[EpisodeInput]:
        opts = CruxOptions.model_validate(params.options)
        return [
            EpisodeInput(key=pid, state={"options": opts.model_dump(), "task": task.to_state()})
            for pid, task in load_problems(opts.file, opts.mode)[: params.n]
        ]

    return GraphDef(
        name="cruxeval",
        roles=(SOLVER,),
        build=build,
        inputs=inputs,
        outcome=outcome,
        description="CRUXEval-O / CRUXEval-I accuracy of the solver role (R1 format, judged in the sandbox)",
        rewards=(
            Reward("correct", description="the answer is right (None: the sandbox could not judge it)"),
        ),
        options=CruxOptions,
    )
