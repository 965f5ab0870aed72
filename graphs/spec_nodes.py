"""The runners behind a spec's nodes: a role call, an environment call, a subgraph, a join.

A runner maps `(state, config) -> update of its output fields`; `single` adds the visit count, and a
fan-out node runs it once per branch (`graphs/spec_fanout.py`). Every role and environment call goes
through the GraphContext, which records it as a step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from rolegraph.agents.role import Role
from rolegraph.errors import RolegraphError
from rolegraph.graphs import spec_fanout as fan
from rolegraph.graphs.base import GraphDef
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.spec_checks import env_inputs
from rolegraph.graphs.spec_env import KINDS, EnvCall, SandboxProvider, resolve_target
from rolegraph.store.records import Rewards, Step

if TYPE_CHECKING:
    from rolegraph.graphs.spec import GraphSpec, NodeSpec

Runner = Callable[[dict[str, Any], RunnableConfig], Awaitable[dict[str, Any]]]
HIDDEN = ("_visits", fan.FAN, fan.UNKNOWN, fan.BRANCH, "episode_id")


def episode_id(state: dict[str, Any], config: RunnableConfig) -> str:
    return str(state.get("episode_id") or config.get("configurable", {}).get("thread_id", ""))


def single(name: str, run: Runner, visits_key: str) -> Runner:
    """A node that runs once per visit: its runner's update plus the visit count."""

    async def run_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return {**await run(state, config), visits_key: {name: 1}}

    run_node.__name__ = name
    return run_node


def node_runner(
    spec: GraphSpec,
    name: str,
    node: NodeSpec,
    ctx: GraphContext,
    subgraph: GraphDef | None,
    sandbox: SandboxProvider,
) -> tuple[Runner, list[str]]:
    """The node's runner and the state fields it writes."""
    if node.kind == "role":
        outputs = node.outputs()
        return _role(name, node, ctx, outputs), list(outputs)
    if node.kind == "env":
        assert node.env is not None
        outputs = node.outputs(KINDS[node.env].primary)
        return _env(spec, name, node, ctx, sandbox, outputs), list(outputs)
    if node.kind == "graph":
        assert subgraph is not None
        outputs = node.outputs()
        return _subgraph(name, node, ctx, subgraph, outputs), list(outputs)
    outputs = node.outputs("value")
    return _join(node, outputs), list(outputs)


def _role(name: str, node: NodeSpec, ctx: GraphContext, outputs: dict[str, str]) -> Runner:
    assert node.role is not None
    role = node.role

    async def run(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        if node.inputs:
            variables = {var: state.get(field_name) for var, field_name in node.inputs.items()}
        else:
            variables = {k: v for k, v in state.items() if k not in HIDDEN}
        call = await ctx.call_role(
            role, node=name, episode_id=episode_id(state, config), variables=variables, **node.sampling
        )
        text = call.texts[0] if call.texts else None
        parsed = (call.parsed or [None])[0] or {}
        return {
            state_field: text if source == "_text" else parsed.get(source)
            for state_field, source in outputs.items()
        }

    return run


def _env(
    spec: GraphSpec,
    name: str,
    node: NodeSpec,
    ctx: GraphContext,
    sandbox: SandboxProvider,
    outputs: dict[str, str],
) -> Runner:
    assert node.env is not None
    kind = KINDS[node.env]
    mapping = env_inputs(spec, node)
    function = resolve_target(node.target, spec.base) if node.target is not None else None

    async def run(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        args = {arg: state.get(state_field) for arg, state_field in mapping.items()}
        call = EnvCall(args=args, params=dict(node.params), sandbox=sandbox, function=function)
        request: dict[str, Any] = {"args": args, "params": dict(node.params)}
        if node.target is not None:
            request["target"] = node.target
        try:
            result = await ctx.call_env(
                kind.name,
                node=name,
                episode_id=episode_id(state, config),
                request=request,
                fn=lambda: kind.run(call),
            )
        except RolegraphError as exc:
            if not exc.kind.infrastructure:
                raise
            # The step records the failure; the outputs are unknown, never a failure the model earned.
            return {**dict.fromkeys(outputs), fan.UNKNOWN: dict.fromkeys(outputs, exc.kind.value)}
        update = {state_field: result.get(source) for state_field, source in outputs.items()}
        return {**update, fan.UNKNOWN: dict.fromkeys(outputs)}

    return run


def _join(node: NodeSpec, outputs: dict[str, str]) -> Runner:
    assert node.join is not None and node.over is not None
    kind, over, by = node.join, node.over, node.by

    async def run(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        values = state.get(over)
        values = values if isinstance(values, list) else [values]
        scores = state.get(by) if by is not None else None
        result = fan.join(kind, values, scores if isinstance(scores, list) else None)
        update = {state_field: result.get(source) for state_field, source in outputs.items()}
        failed = (state.get(fan.UNKNOWN) or {}).get(over)
        unknown = failed if failed is not None and result.get("value") is None else None
        return {**update, fan.UNKNOWN: dict.fromkeys(outputs, unknown)}

    return run


class PrefixedContext:
    """The parent's context for a subgraph's nodes: their steps are named `node/subnode`."""

    def __init__(self, ctx: GraphContext, prefix: str) -> None:
        self.ctx = ctx
        self.prefix = prefix

    async def call_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        prompt: Role | None = None,
        **sampling: Any,
    ) -> Step:
        return await self.ctx.call_role(
            role,
            node=f"{self.prefix}/{node}",
            episode_id=episode_id,
            variables=variables,
            prompt=prompt,
            **sampling,
        )

    async def complete_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        continuation_ids: Sequence[int] = (),
        append_text: str = "",
        prompt: Role | None = None,
        **sampling: Any,
    ) -> Step:
        return await self.ctx.complete_role(
            role,
            node=f"{self.prefix}/{node}",
            episode_id=episode_id,
            variables=variables,
            continuation_ids=continuation_ids,
            append_text=append_text,
            prompt=prompt,
            **sampling,
        )

    async def score_role(
        self,
        role: str,
        *,
        node: str,
        episode_id: str,
        variables: dict[str, Any],
        continuation: str,
        prompt: Role | None = None,
    ) -> Step:
        return await self.ctx.score_role(
            role,
            node=f"{self.prefix}/{node}",
            episode_id=episode_id,
            variables=variables,
            continuation=continuation,
            prompt=prompt,
        )

    async def call_env(
        self,
        name: str,
        *,
        node: str,
        episode_id: str,
        request: dict[str, Any],
        fn: Callable[[], Awaitable[Any]],
    ) -> Any:
        return await self.ctx.call_env(
            name, node=f"{self.prefix}/{node}", episode_id=episode_id, request=request, fn=fn
        )

    def add_rewards(self, step: Step, rewards: Rewards | list[Rewards]) -> None:
        self.ctx.add_rewards(step, rewards)


def _subgraph(
    name: str, node: NodeSpec, ctx: GraphContext, subgraph: GraphDef, outputs: dict[str, str]
) -> Runner:
    compiled = subgraph.build(PrefixedContext(ctx, name)).compile()

    async def run(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        sub_state = {sub_field: state.get(parent_field) for sub_field, parent_field in node.inputs.items()}
        sub_state["episode_id"] = episode_id(state, config)
        final = dict(await compiled.ainvoke(sub_state, config))
        failed = final.get(fan.UNKNOWN) or {}
        update = {parent: final.get(sub_field) for parent, sub_field in outputs.items()}
        return {**update, fan.UNKNOWN: {parent: failed.get(sub) for parent, sub in outputs.items()}}

    return run
