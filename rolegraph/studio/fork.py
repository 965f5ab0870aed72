"""Fork a recorded rollout at a role step and replay the graph from that node on a live endpoint.

The state before the node comes from the run's LangGraph checkpoints (`get_state_history`); the branch is a
new thread seeded with it (`update_state`) in `RUN_DIR/forks/`, a run directory of its own, so the original
run's data (and what trains on it) never changes. Every call of the branch goes through the runtime's one
role-call path (`RuntimeContext`) and is recorded like any graph run; its first step, an environment step
named `fork`, links the branch to its parent episode and step, and the edits made.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START

from rolegraph.agents.role import Role
from rolegraph.config import RolegraphConfig, SamplingParams
from rolegraph.errors import ConfigError, EndpointDownError, EndpointError, ModelNotFoundError, RolegraphError
from rolegraph.graphs.base import GraphDef
from rolegraph.graphs.checkpointing import steps_first_saver
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.role_calls import RolePool, RuntimeContext
from rolegraph.serving.client import Client
from rolegraph.store import Step, Store
from rolegraph.store.check import CHECKPOINT_FILE
from rolegraph.store.lock import RunLock
from rolegraph.studio.runs import FORKS_DIR

FORK_STEP = "fork"
"""Name of the environment step that opens every branch and links it to its parent."""
RECURSION_LIMIT = 50


@dataclasses.dataclass(frozen=True)
class ForkEdits:
    """What the user changed at the fork point; None keeps what was recorded."""

    messages: list[dict[str, str]] | None = None
    sampling: dict[str, Any] | None = None
    model: str | None = None
    state: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FixedPrompt(Role):
    """A role whose prompt is a given list of messages (the edited ones); it parses as the role does."""

    fixed: tuple[tuple[str, str], ...] = ()

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": who, "content": text} for who, text in self.fixed]


class _Rebound:
    """The run's pool with one role moved to another model of the same endpoint."""

    def __init__(self, pool: RolePool, role: str, model: str | None) -> None:
        self.pool, self.role, self.model = pool, role, model

    def resolve(self, role: str) -> tuple[Any, str, SamplingParams]:
        client, model, binding = self.pool.resolve(role)
        return client, (self.model if role == self.role and self.model else model), binding


class _ForkContext(RuntimeContext):
    """The runtime's context; the forked role's first call at the fork node takes the edited prompt and
    sampling (still through `RuntimeContext.call_role`, so it is recorded like every call)."""

    def __init__(self, pool: RolePool, store: Store, *, at: Step, edits: ForkEdits, roles: Any) -> None:
        super().__init__(pool, store, roles=roles)
        self._at = at
        self._edits = edits
        self._pending = True

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
        if self._pending and node == self._at.node and role == self._at.role:
            self._pending = False
            if self._edits.messages is not None:
                spec = prompt or self.role(role)
                fixed = tuple((m["role"], m["content"]) for m in self._edits.messages)
                prompt = FixedPrompt(spec.name, spec.template, spec.parser, spec.sampling, fixed=fixed)
            sampling = {**sampling, **(self._edits.sampling or {})}
        return await super().call_role(
            role, node=node, episode_id=episode_id, variables=variables, prompt=prompt, **sampling
        )


class _ReadOnlyContext:
    """A context for compiling a graph only to read its checkpoints: its nodes never run."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("this graph was compiled to read checkpoints only")


def history(run_dir: Path, graph: GraphDef, episode_id: str) -> list[Any]:
    """The episode's LangGraph state snapshots, oldest first, read without writing (empty when none)."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        saver.is_setup = True  # the tables exist; setup would try to write
        compiled = graph.build(cast(GraphContext, _ReadOnlyContext())).compile(checkpointer=saver)
        config: RunnableConfig = {"configurable": {"thread_id": episode_id}}
        return list(reversed(list(compiled.get_state_history(config))))
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()


def state_before(run_dir: Path, graph: GraphDef, step: Step) -> tuple[dict[str, Any], str]:
    """The state the step's node started from, and the node to write it as (its predecessor, or START)."""
    snapshots = history(run_dir, graph, step.episode_id)
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in snapshots}
    for snapshot in snapshots:
        if any(task.id == step.checkpoint for task in snapshot.tasks):
            parent = by_id.get((snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id"))
            ran = [t.name for t in parent.tasks if t.name != START] if parent is not None else []
            return dict(snapshot.values), (ran[0] if ran else START)
    raise ConfigError(
        f"step {step.id} has no checkpoint to fork from (its episode's checkpoints were not kept)",
        "fork a step of an episode whose checkpoints are in the run's checkpoints.sqlite",
    )


def attach_config(config: RolegraphConfig, roles: tuple[str, ...]) -> RolegraphConfig:
    """The run's config, each launched endpoint replaced by its running server: a fork never starts one."""
    from rolegraph.serving.launcher import running_servers

    used = {config.roles[r].endpoint for r in roles if r in config.roles}
    endpoints = dict(config.endpoints)
    servers = {s.endpoint: s for s in running_servers()}
    for name in used:
        endpoint = endpoints[name]
        if endpoint.launch is None:
            continue
        server = servers.get(name)
        if server is None:
            raise EndpointDownError(
                f"endpoint '{name}' (launched by rolegraph for this run) is not running",
                "start it with `rolegraph serve --config FILE` (the run's config), then fork again",
            )
        endpoints[name] = endpoint.model_copy(update={"launch": None, "base_url": server.base_url})
    return config.model_copy(update={"endpoints": endpoints})


async def served_models(config: RolegraphConfig, role: str) -> tuple[str, list[str]]:
    """The endpoint a role is bound to and the models it serves; a down endpoint is an EndpointDownError
    that names it and how to start it."""
    if role not in config.roles:
        raise ConfigError(f"the run's config binds no role '{role}'", "pass --config with the role bound")
    name = config.roles[role].endpoint
    endpoint = attach_config(config, (role,)).endpoints[name]
    assert endpoint.base_url is not None
    client = Client(name, endpoint.base_url, api_key=endpoint.api_key, timeout_s=10.0, max_retries=0)
    try:
        return name, await client.list_models()
    except EndpointError as exc:
        raise EndpointDownError(
            f"endpoint '{name}' at {endpoint.base_url} is down ({exc.message})",
            "start it (e.g. `rolegraph serve --config FILE` with the run's config), then fork again",
        ) from None
    finally:
        await client.aclose()


def branch_id(store: Store, parent: str) -> str:
    taken = {e.id for e in store.episodes()}
    index = 1
    while f"{parent}~{index}" in taken:
        index += 1
    return f"{parent}~{index}"


async def fork(
    run_dir: Path,
    graph: GraphDef,
    config: RolegraphConfig,
    step: Step,
    edits: ForkEdits,
) -> str:
    """Replay `graph` from `step`'s node with `edits` into `RUN_DIR/forks/`; returns the branch's episode id.

    The branch is recorded (and judged by the graph's outcome, so its rewards are computed again) even when
    it fails; an endpoint that is down before anything ran raises EndpointDownError and records nothing.
    """
    if step.kind != "role" or step.checkpoint is None:
        raise ConfigError(f"step {step.id} is not a role call inside a graph node", "fork a role step")
    state, as_node = state_before(run_dir, graph, step)
    if edits.state is not None:
        state = dict(edits.state)
    endpoint, models = await served_models(config, step.role)
    if edits.model and edits.model not in models:
        raise ModelNotFoundError(
            f"endpoint '{endpoint}' does not serve '{edits.model}' (it serves: {', '.join(models)})",
            "pick a model the endpoint serves",
        )
    forks_dir = run_dir / FORKS_DIR
    lock = await RunLock(forks_dir).acquire_async(wait=True)
    try:
        with Store(forks_dir) as store:
            run = Store(run_dir, create=False)
            try:
                record = run.run()
            finally:
                run.close()
            store.start_run(
                graph.name,
                config.model_dump(mode="json"),
                record.seed if record else 0,
                {"forks_of": str(run_dir)},
                [dataclasses.asdict(reward) for reward in graph.rewards],
            )
            return await _replay(store, forks_dir, graph, config, step, edits, state, as_node)
    finally:
        lock.release()


async def _replay(
    store: Store,
    forks_dir: Path,
    graph: GraphDef,
    config: RolegraphConfig,
    step: Step,
    edits: ForkEdits,
    state: dict[str, Any],
    as_node: str,
) -> str:
    from rolegraph.serving import EndpointPool

    key = branch_id(store, step.episode_id)
    state = {**state, "episode_id": key}
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(EndpointPool(attach_config(config, graph.roles)))
        ctx = _ForkContext(
            _Rebound(pool, step.role, edits.model),
            store,
            at=step,
            edits=edits,
            roles=getattr(graph, "role_defs", None),
        )
        ctx.attempts[key] = store.begin_episode(key, state)
        link = {
            "parent_episode": step.episode_id,
            "parent_step": step.id,
            "node": step.node,
            "role": step.role,
            "edits": _changed(edits),
        }

        async def seed() -> dict[str, Any]:
            return link

        await ctx.call_env(FORK_STEP, node=step.node, episode_id=key, request=link, fn=seed)
        saver = await stack.enter_async_context(
            steps_first_saver(str(forks_dir / CHECKPOINT_FILE), store.aflush)
        )
        compiled = graph.build(ctx).compile(checkpointer=saver)
        config_: RunnableConfig = {"configurable": {"thread_id": key}, "recursion_limit": RECURSION_LIMIT}
        try:
            await compiled.aupdate_state(config_, state, as_node=as_node)
            final = await compiled.ainvoke(None, config_)
        except ModelNotFoundError:
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, RolegraphError) else f"{type(exc).__name__}: {exc}"
            store.fail_episode(key, message, getattr(getattr(exc, "kind", None), "value", "other"))
            return key
        error = ctx.endpoint_errors.get(key)
        if error is not None:
            store.fail_episode(key, f"endpoint error: {error.message}", error.kind.value)
            return key
        outcome = graph.outcome(dict(final))
        store.finish_episode(
            key,
            dict(final),
            kept=outcome.kept,
            reason=outcome.reason,
            rewards=dict(outcome.rewards),
            metrics=dict(outcome.metrics),
        )
    return key


def _changed(edits: ForkEdits) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(edits).items() if v is not None}


def link_of(step: Step) -> Mapping[str, Any] | None:
    """A branch's fork link (parent episode, step, node, edits) from its opening step, else None."""
    if step.kind == "env" and step.role == FORK_STEP and isinstance(step.request, dict):
        return step.request
    return None
