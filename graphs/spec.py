"""Declarative graphs: a YAML spec of roles, state, nodes, edges and conditions, compiled to a StateGraph.

```yaml
name: critique
roles:                      # new roles from prompt files (relative to this file); built-in roles need none
  critic: {prompt: prompts/critic.md, parser: fields, sampling: {temperature: 0.3, max_tokens: 64}}
state: {problem: str, answer: str, verdict: str}
inputs: {file: problems.jsonl, fields: {problem: problem}, key: id}
nodes:
  solve: {role: solver, inputs: {problem: problem}, output: {answer: answer}}
  critique: {role: critic, output: {verdict: verdict}, max_visits: 2}
edges:
  - [START, solve]
  - [solve, critique]
  - {from: critique, when: [{field: verdict, equals: bad, to: solve}], default: END}
keep: {field: verdict, equals: good}
```

Conditions are data, never code: `{field, equals | not_equals | in | not_in | contains | gt | ge | lt | le |
empty}`; they are evaluated with plain comparisons. Before anything runs, networkx checks the graph: unknown
roles, unreachable nodes, nodes that cannot reach END, and cycles without an exit condition are errors that
name the node. Every node in a loop is guarded by `max_visits` (spec-wide default 3): once a target has been
visited that often, its conditional edge is skipped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import networkx as nx
import yaml
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rolegraph.agents.role import Role
from rolegraph.errors import ConfigError
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext

START_NAME, END_NAME = "START", "END"
VISITS = "_visits"
"""State channel counting node visits (the loop guard)."""
EPISODE_ID = "episode_id"
TEXT = "_text"
"""In a node's `output` mapping, the raw completion text instead of a parsed field."""

_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "any": Any,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RoleSpec(_Strict):
    prompt: str
    """Prompt file, relative to the spec file."""
    parser: str = "text"
    sampling: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class Condition(_Strict):
    """One test of a state field; exactly one operator is given."""

    field: str
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    contains: Any = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    empty: bool | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        given = [op for op in _OPERATORS if op in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(
                f"condition on '{self.field}' needs exactly one of: {', '.join(_OPERATOR_NAMES)}"
            )
        return self

    @property
    def operator(self) -> str:
        return next(op for op in _OPERATORS if op in self.model_fields_set)

    def holds(self, state: dict[str, Any]) -> bool:
        """Evaluate against the state with plain comparisons (a missing field is None)."""
        value = state.get(self.field)
        op = self.operator
        target = getattr(self, op)
        if op == "equals":
            return bool(value == target)
        if op == "not_equals":
            return bool(value != target)
        if op == "in_":
            return value in target
        if op == "not_in":
            return value not in target
        if op == "contains":
            return value is not None and target in value
        if op == "empty":
            return (value in (None, "", [], {})) == target
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return {"gt": number > target, "ge": number >= target, "lt": number < target, "le": number <= target}[
            op
        ]

    def describe(self) -> str:
        """The condition as a short phrase, e.g. `verdict == "good"` or `answer is not empty`."""
        op = self.operator
        if op == "empty":
            return f"{self.field} is {'' if self.empty else 'not '}empty"
        symbol = {"equals": "==", "not_equals": "!=", "in_": "in", "not_in": "not in", "contains": "contains"}
        symbol |= {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        return f"{self.field} {symbol[op]} {json.dumps(getattr(self, op), default=str)}"


_OPERATORS = ("equals", "not_equals", "in_", "not_in", "contains", "gt", "ge", "lt", "le", "empty")
_OPERATOR_NAMES = [op.rstrip("_") for op in _OPERATORS]


class Rule(Condition):
    """A condition with the node it routes to."""

    to: str


class ConditionalEdge(_Strict):
    source: str = Field(alias="from")
    when: list[Rule] = Field(default_factory=list)
    default: str = END_NAME


class NodeSpec(_Strict):
    role: str
    inputs: dict[str, str] = Field(default_factory=dict)
    """Template variable → state field; empty passes every state field under its own name."""
    output: dict[str, str] | str = Field(default_factory=dict)
    """State field → parsed field (`_text` for the raw completion), or one state field for the raw text."""
    n: int = Field(1, ge=1)
    max_visits: int | None = Field(None, ge=1)
    sampling: dict[str, Any] = Field(default_factory=dict)
    """Per-node overrides of the role's sampling (temperature, max_tokens, …)."""


class InputsSpec(_Strict):
    file: str | None = None
    """A JSONL file of records, relative to the spec file."""
    items: list[dict[str, Any]] | None = None
    """Records written inline instead of a file."""
    fields: dict[str, str] = Field(default_factory=dict)
    """State field → record field; empty copies every record field that the state declares."""
    key: str | None = None
    """Record field that names an episode (for resuming); default: the record's position."""
    shuffle: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> InputsSpec:
        if (self.file is None) == (self.items is None):
            raise ValueError("inputs need exactly one of `file` (a JSONL path) or `items` (inline records)")
        return self


class NoOptions(_Strict):
    """A spec graph reads no `--set` options: any key is refused."""


class GraphSpec(_Strict):
    name: str
    description: str = ""
    roles: dict[str, RoleSpec] = Field(default_factory=dict)
    state: dict[str, str] = Field(default_factory=dict)
    inputs: InputsSpec
    nodes: dict[str, NodeSpec]
    edges: list[tuple[str, str] | ConditionalEdge]
    keep: Condition | list[Condition] | None = None
    rewards: dict[str, Condition] = Field(default_factory=dict)
    """Outcome rewards: 1.0 when the condition holds on the final state, else 0.0."""
    max_visits: int = Field(3, ge=1)
    """Default loop guard for every node."""

    @field_validator("state")
    @classmethod
    def _known_types(cls, state: dict[str, str]) -> dict[str, str]:
        for name, type_name in state.items():
            if type_name not in _TYPES:
                raise ValueError(
                    f"state field '{name}' has unknown type '{type_name}' (use {', '.join(_TYPES)})"
                )
        return state

    @property
    def keep_conditions(self) -> list[Condition]:
        if self.keep is None:
            return []
        return self.keep if isinstance(self.keep, list) else [self.keep]

    def visits_limit(self, node: str) -> int:
        return self.nodes[node].max_visits or self.max_visits


@dataclass(frozen=True)
class SpecProblem:
    """One validation problem, naming the node it concerns."""

    node: str
    kind: Literal[
        "missing_role", "unknown_node", "unreachable", "no_path_to_end", "cycle_without_exit", "no_start"
    ]
    message: str


@dataclass(frozen=True)
class SpecGraphDef(GraphDef):
    """A GraphDef compiled from a YAML spec; it carries the roles the spec declares."""

    role_defs: dict[str, Role] = field(default_factory=dict)
    spec: GraphSpec | None = None
    path: Path | None = None


# --- loading ---------------------------------------------------------------------------------------------
def load_spec(path: Path | str) -> GraphSpec:
    """Read and validate a spec file's schema (not yet its graph: see `validate_spec`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"graph spec {path} does not exist", "pass a YAML spec path or a built-in graph name"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a graph spec is a mapping with name, nodes and edges", "see examples/critique"
        )
    try:
        return GraphSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("tuple[", "ConditionalEdge")))
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"{path}: {where}: {message}", "see examples/critique/graph.yaml for the format"
        ) from None


def spec_graph(spec: GraphSpec) -> nx.DiGraph:
    """The spec as a networkx graph over node names plus START and END; conditional edges are marked."""
    graph = nx.DiGraph()
    graph.add_nodes_from([START_NAME, END_NAME, *spec.nodes])
    for edge in spec.edges:
        if isinstance(edge, ConditionalEdge):
            for target in [rule.to for rule in edge.when] + [edge.default]:
                graph.add_edge(edge.source, target, conditional=True)
        else:
            graph.add_edge(edge[0], edge[1], conditional=graph.edges.get(edge, {}).get("conditional", False))
    return graph


def validate_spec(spec: GraphSpec, known_roles: set[str] | None = None) -> list[SpecProblem]:
    """Every problem of the spec's graph, each naming its node (empty when the spec can run)."""
    problems: list[SpecProblem] = []
    roles = set(spec.roles) | (known_roles if known_roles is not None else _builtin_roles())
    for name, node in spec.nodes.items():
        if node.role not in roles:
            problems.append(
                SpecProblem(
                    name,
                    "missing_role",
                    f"node '{name}' uses role '{node.role}', which is neither declared under `roles` "
                    "nor built in",
                )
            )
    graph = spec_graph(spec)
    for source, target in graph.edges:
        for end, forbidden in ((source, END_NAME), (target, START_NAME)):
            if end == forbidden:
                problems.append(
                    SpecProblem(end, "unknown_node", f"edge {source} → {target}: {end} cannot be there")
                )
        for end in (source, target):
            if end not in spec.nodes and end not in (START_NAME, END_NAME):
                problems.append(
                    SpecProblem(end, "unknown_node", f"edge {source} → {target} names unknown node '{end}'")
                )
    if problems:
        return problems
    if not any(True for _ in graph.successors(START_NAME)):
        return [SpecProblem(START_NAME, "no_start", "no edge leaves START (add e.g. [START, first_node])")]
    reachable = nx.descendants(graph, START_NAME)
    for name in spec.nodes:
        if name not in reachable:
            problems.append(SpecProblem(name, "unreachable", f"node '{name}' cannot be reached from START"))
    in_trapped_cycle: set[str] = set()
    for component in nx.strongly_connected_components(graph):
        cyclic = len(component) > 1 or any(graph.has_edge(n, n) for n in component)
        if not cyclic:
            continue
        exits = [
            (u, v)
            for u in component
            for v in graph.successors(u)
            if v not in component and graph[u][v]["conditional"]
        ]
        if not exits:
            members = sorted(component)
            in_trapped_cycle |= component
            loop = " → ".join([*members, members[0]])
            problems.append(
                SpecProblem(
                    members[0],
                    "cycle_without_exit",
                    f"cycle {loop} has no exit condition "
                    f"(node '{members[0]}' needs a conditional edge leaving the cycle)",
                )
            )
    for name in spec.nodes:
        if name in in_trapped_cycle or name not in reachable:
            continue
        if not nx.has_path(graph, name, END_NAME):
            problems.append(SpecProblem(name, "no_path_to_end", f"node '{name}' has no path to END"))
    return problems


def _builtin_roles() -> set[str]:
    from rolegraph.agents.registry import list_roles

    return set(list_roles())


def check_spec(spec: GraphSpec, path: Path | str | None = None) -> None:
    """Raise a ConfigError naming the first problem's node (and how many more there are)."""
    problems = validate_spec(spec)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        where = f"{path}: " if path else ""
        raise ConfigError(
            f"{where}graph '{spec.name}': {problems[0].message}{more}",
            "run `rolegraph graph check SPEC` to list every problem",
        )


# --- compiling -------------------------------------------------------------------------------------------
def _merge_visits(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    out = dict(left or {})
    for name, count in (right or {}).items():
        out[name] = out.get(name, 0) + count
    return out


def state_type(spec: GraphSpec) -> type:
    """The typed LangGraph state: the spec's fields, the episode id and the visit counter."""
    fields: dict[str, Any] = {name: _TYPES[t] | None for name, t in spec.state.items()}
    fields.setdefault(EPISODE_ID, str)
    fields[VISITS] = Annotated[dict[str, int], _merge_visits]
    return TypedDict(f"{spec.name.title().replace('_', '')}State", fields, total=False)  # type: ignore[operator]


def _target(name: str) -> str:
    return {START_NAME: START, END_NAME: END}.get(name, name)


def _role_node(
    spec: GraphSpec, name: str, node: NodeSpec, ctx: GraphContext
) -> Callable[[dict[str, Any], RunnableConfig], Any]:
    async def run_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        episode_id = str(state.get(EPISODE_ID) or config.get("configurable", {}).get("thread_id", ""))
        if node.inputs:
            variables = {var: state.get(field_name) for var, field_name in node.inputs.items()}
        else:
            variables = {k: v for k, v in state.items() if k not in (VISITS, EPISODE_ID)}
        call = await ctx.call_role(
            node.role, node=name, episode_id=episode_id, variables=variables, **{"n": node.n, **node.sampling}
        )
        update: dict[str, Any] = {VISITS: {name: 1}}
        outputs = {node.output: TEXT} if isinstance(node.output, str) else node.output
        texts = call.texts
        for state_field, parsed_field in outputs.items():
            values = [
                (texts[i] if parsed_field == TEXT else (parsed or {}).get(parsed_field))
                for i, parsed in enumerate(call.parsed or [None] * len(texts))
            ]
            update[state_field] = values if node.n > 1 else (values[0] if values else None)
        return update

    run_node.__name__ = name
    return run_node


def _router(spec: GraphSpec, edge: ConditionalEdge) -> Callable[[dict[str, Any]], str]:
    def route(state: dict[str, Any]) -> str:
        visits = state.get(VISITS) or {}
        for rule in edge.when:
            if rule.holds(state) and not _exhausted(spec, rule.to, visits):
                return _target(rule.to)
        if _exhausted(spec, edge.default, visits):
            return END
        return _target(edge.default)

    return route


def _exhausted(spec: GraphSpec, target: str, visits: dict[str, int]) -> bool:
    return target in spec.nodes and visits.get(target, 0) >= spec.visits_limit(target)


def build_state_graph(spec: GraphSpec, ctx: GraphContext) -> StateGraph:
    """The uncompiled StateGraph of a (validated) spec, with nodes closed over `ctx`."""
    graph: StateGraph = StateGraph(state_type(spec))
    for name, node in spec.nodes.items():
        graph.add_node(name, _role_node(spec, name, node, ctx))  # type: ignore[call-overload]
    for edge in spec.edges:
        if isinstance(edge, ConditionalEdge):
            targets = {_target(t) for t in [rule.to for rule in edge.when] + [edge.default]} | {END}
            graph.add_conditional_edges(edge.source, _router(spec, edge), {t: t for t in targets})
        else:
            graph.add_edge(_target(edge[0]), _target(edge[1]))
    return graph


def recursion_limit(spec: GraphSpec) -> int:
    """A LangGraph step limit that the visit guards can never reach."""
    return max(25, 2 + sum(spec.visits_limit(n) for n in spec.nodes) * 2)


def _records(spec: GraphSpec, base: Path) -> list[dict[str, Any]]:
    if spec.inputs.items is not None:
        return list(spec.inputs.items)
    assert spec.inputs.file is not None
    path = (base / spec.inputs.file).resolve()
    if not path.is_file():
        raise ConfigError(
            f"graph '{spec.name}': input file {path} does not exist", "fix `inputs.file` in the spec"
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number}: not a JSON line", "write one JSON object per line") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object", "write one JSON object per line")
        records.append(record)
    if not records:
        raise ConfigError(f"graph '{spec.name}': input file {path} has no records", "add JSON lines to it")
    return records


def episode_inputs(spec: GraphSpec, base: Path, params: RunParams) -> list[EpisodeInput]:
    """The first `n` records (cycled when n exceeds them), mapped to initial states with stable keys."""
    records = _records(spec, base)
    order = list(range(len(records)))
    if spec.inputs.shuffle:
        random.Random(params.seed).shuffle(order)
    inputs = []
    for i in range(params.n):
        index = order[i % len(order)]
        record = records[index]
        if spec.inputs.fields:
            state = {name: record.get(source) for name, source in spec.inputs.fields.items()}
        else:
            state = {k: v for k, v in record.items() if k in spec.state}
        key = str(record.get(spec.inputs.key, index)) if spec.inputs.key else str(index)
        if i >= len(order):
            key = f"{key}#{i // len(order)}"
        inputs.append(EpisodeInput(key=key, state=state))
    return inputs


def outcome(spec: GraphSpec, state: dict[str, Any]) -> Outcome:
    """Kept when every keep condition holds; the first failed condition is the rejection reason."""
    rewards: dict[str, float | None] = {
        name: 1.0 if cond.holds(state) else 0.0 for name, cond in spec.rewards.items()
    }
    for cond in spec.keep_conditions:
        if not cond.holds(state):
            return Outcome(kept=False, reason=f"failed keep: {cond.describe()}", rewards=rewards)
    return Outcome(kept=True, rewards=rewards)


def compile_spec(path: Path | str) -> SpecGraphDef:
    """Load, validate and compile a YAML spec into a GraphDef the runtime can run."""
    from rolegraph.agents.registry import role_from_file

    path = Path(path).resolve()
    spec = load_spec(path)
    check_spec(spec, path)
    base = path.parent
    role_defs = {
        name: role_from_file(name, base / role.prompt, role.parser, role.sampling)
        for name, role in spec.roles.items()
    }
    roles = tuple(dict.fromkeys(node.role for node in spec.nodes.values()))
    return SpecGraphDef(
        name=spec.name,
        roles=roles,
        build=lambda ctx: build_state_graph(spec, ctx),
        inputs=lambda params: episode_inputs(spec, base, params),
        outcome=lambda state: outcome(spec, state),
        description=spec.description,
        rewards=tuple(Reward(name, train=True) for name in spec.rewards),
        options=NoOptions,
        role_defs=role_defs,
        spec=spec,
        path=path,
    )
