"""Fan-out (`n: K`) through LangGraph's `Send`, the reducers that collect branch results, and join nodes.

A node `X` with `n: K` compiles to three LangGraph nodes: `X` counts the visit and sends K copies of the
state to `X#branch` (one `Send` each, run in parallel); every branch writes its update under its index into
the `_fan` channel (a merging reducer); `X#gather` turns the K updates into one list per output field, in
branch order, and clears `_fan`. Edges into `X` reach the dispatcher; edges out of `X` leave from the gather
node. A join node (`join: majority | mean | any | all | best`) then aggregates such a list into one value.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import Send

FAN = "_fan"
"""State channel: node → {branch index → the branch's state update}, merged by `merge_fan`."""
UNKNOWN = "_unknown"
"""State channel: field → failure kind, for fields the infrastructure could not compute (merged)."""
BRANCH = "_branch"
"""Key of a branch's index in the state a `Send` carries."""
BRANCH_SUFFIX, GATHER_SUFFIX = "#branch", "#gather"
JOINS = ("majority", "mean", "any", "all", "best")

Update = dict[str, Any]


def merge_fan(
    left: dict[str, dict[int, Update]] | None, right: dict[str, dict[int, Update] | None] | None
) -> dict[str, dict[int, Update]]:
    """Merge branch updates per node; a node mapped to None is cleared (its gather has run)."""
    out = {node: dict(branches) for node, branches in (left or {}).items()}
    for node, branches in (right or {}).items():
        if branches is None:
            out.pop(node, None)
        else:
            out.setdefault(node, {}).update({int(k): v for k, v in branches.items()})
    return out


def merge_unknown(left: dict[str, str] | None, right: dict[str, str | None] | None) -> dict[str, str]:
    """Fields marked unknown (with the failure kind); a field mapped to None is known again."""
    out = dict(left or {})
    for name, kind in (right or {}).items():
        if kind is None:
            out.pop(name, None)
        else:
            out[name] = kind
    return out


def branch_name(node: str) -> str:
    return node + BRANCH_SUFFIX


def gather_name(node: str) -> str:
    return node + GATHER_SUFFIX


def dispatcher(node: str, visits_key: str) -> Callable[[dict[str, Any]], Awaitable[Update]]:
    """The node edges reach: counts the visit and drops results of an earlier visit."""

    async def dispatch(state: dict[str, Any]) -> Update:
        return {visits_key: {node: 1}, FAN: {node: None}}

    dispatch.__name__ = node
    return dispatch


def sends(node: str, n: int) -> Callable[[dict[str, Any]], list[Send]]:
    """The conditional edge after the dispatcher: K copies of the state, each tagged with its index."""

    def fan_out(state: dict[str, Any]) -> list[Send]:
        return [Send(branch_name(node), {**state, BRANCH: index}) for index in range(n)]

    return fan_out


def branch(
    node: str, run: Callable[[dict[str, Any], RunnableConfig], Awaitable[Update]]
) -> Callable[[dict[str, Any], RunnableConfig], Awaitable[Update]]:
    """One branch: the node's own runner on the sent state; its update goes under its index in `_fan`."""

    async def run_branch(state: dict[str, Any], config: RunnableConfig) -> Update:
        update = await run(state, config)
        return {FAN: {node: {int(state.get(BRANCH, 0)): update}}}

    run_branch.__name__ = branch_name(node)
    return run_branch


def gather(node: str, fields: Sequence[str]) -> Callable[[dict[str, Any]], Awaitable[Update]]:
    """One list per output field, in branch order; a field is unknown when no branch could compute it."""

    async def run_gather(state: dict[str, Any]) -> Update:
        branches = (state.get(FAN) or {}).get(node, {})
        updates = [branches[index] for index in sorted(branches)]
        out: Update = {FAN: {node: None}}
        unknown: dict[str, str | None] = {}
        for name in fields:
            out[name] = [update.get(name) for update in updates]
            kinds = [(update.get(UNKNOWN) or {}).get(name) for update in updates]
            given = [kind for kind in kinds if kind is not None]
            unknown[name] = given[0] if updates and len(given) == len(updates) else None
        out[UNKNOWN] = unknown
        return out

    run_gather.__name__ = gather_name(node)
    return run_gather


# --- joins ------------------------------------------------------------------------------------------------
def _key(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, sort_keys=True, default=str)


def join(kind: str, values: Sequence[Any], by: Sequence[Any] | None = None) -> dict[str, Any]:
    """Aggregate a fan-out's list. None entries (nothing computed) are left out; with none left the value is
    None. Gives `value`, plus `share` (majority: the winner's share of all entries), `index` and `score`
    (best: the position and score of the best entry; ties go to the first)."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if kind == "majority":
        counts: dict[str, list[int]] = {}
        for i, value in known:
            counts.setdefault(_key(value), []).append(i)
        if not counts:
            return {"value": None, "share": 0.0}
        winner = max(counts.values(), key=len)  # the first-seen class wins ties
        return {"value": values[winner[0]], "share": len(winner) / len(values)}
    if kind == "mean":
        numbers = [float(v) for _, v in known if isinstance(v, int | float)]
        return {"value": sum(numbers) / len(numbers) if numbers else None}
    if kind in ("any", "all"):
        flags = [bool(v) for _, v in known]
        if not flags:
            return {"value": None}
        return {"value": any(flags) if kind == "any" else all(flags)}
    if kind == "best":
        scores = list(by or [])
        scored = [(i, float(scores[i])) for i, _ in known if i < len(scores) and _is_number(scores[i])]
        if not scored:
            return {"value": None, "index": None, "score": None}
        index, score = max(scored, key=lambda item: item[1])
        return {"value": values[index], "index": index, "score": score}
    raise ValueError(f"unknown join '{kind}' (use one of: {', '.join(JOINS)})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # booleans count as 0 and 1


JOIN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "majority": ("value", "share"),
    "mean": ("value",),
    "any": ("value",),
    "all": ("value",),
    "best": ("value", "index", "score"),
}
