"""Declarative graphs: a YAML spec of roles, state, nodes, edges and conditions, compiled to a StateGraph.

```yaml
name: critique
roles:                      # new roles from prompt files (relative to this file); built-in roles need none
  critic: {prompt: prompts/critic.md, parser: text, sampling: {temperature: 0.3, max_tokens: 64}}
state: {problem: str, reference: str, answer: str, critique: str, correct: bool}
inputs: {file: problems.jsonl, fields: {problem: problem, reference: answer}, key: id}
nodes:
  solve: {role: solver, inputs: {problem: problem}, output: {answer: answer}}      # a role node
  critique: {role: critic, output: {critique: text}, max_visits: 2}
  check: {env: math.verify, inputs: {answer: answer, reference: reference}, output: {correct: correct}}
edges:
  - [START, solve]
  - [solve, critique]
  - {from: critique, when: [{field: critique, contains: REVISE, to: solve}], default: check}
  - [check, END]
rewards: {correct: {field: correct, equals: true, weight: 1.0, train: true}}
```

A node is one of: a role call (`role:`), an environment call (`env:`, see `graphs/spec_env.py`), a subgraph
(`graph:` another spec, relative to this file, or a graph name) or a join (`join:` majority, mean, any, all or
best `over:` a list field, `by:` a score field). `n: K` fans a role, env or subgraph node out into K parallel
calls (LangGraph `Send`) whose outputs become lists, in branch order (see `graphs/spec_fanout.py`).

Conditions are data, never code: `{field, equals | not_equals | in | not_in | contains | gt | ge | lt | le |
empty}`; they are evaluated with plain comparisons. Rewards are conditions (1.0 when it holds, else 0.0) or a
bare `field` (its number; a list's mean), with a `weight` and `train` (default true); a reward whose field the
infrastructure could not compute is None. Before anything runs, networkx and the node checks find unknown
roles, env kinds, state fields and python targets, bad subgraphs and joins, unreachable nodes, nodes that
cannot reach END, and cycles without an exit condition: each is an error that names the node. Every node in a
loop is guarded by `max_visits` (spec-wide default 3): once a target has been visited that often, its
conditional edge is skipped.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import networkx as nx
import yaml
from langgraph.graph import END, START, StateGraph
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rolegraph.agents.role import Role
from rolegraph.errors import ConfigError
from rolegraph.graphs import spec_fanout as fan
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, Reward, RunParams
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.spec_env import SandboxProvider

START_NAME, END_NAME = "START", "END"
VISITS = "_visits"
"""State channel counting node visits (the loop guard)."""
EPISODE_ID = "episode_id"
TEXT = "_text"
"""In a role node's `output` mapping, the raw completion text instead of a parsed field."""
RESERVED_IN_NAMES = ("#", ":", "|", "/")

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


class RewardSpec(Condition):
    """A named reward: a condition (1.0 when it holds, else 0.0) or a bare field (its number)."""

    weight: float = 1.0
    train: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _one_operator(self) -> RewardSpec:
        if len([op for op in _OPERATORS if op in self.model_fields_set]) > 1:
            raise ValueError(f"reward on '{self.field}' takes at most one of: {', '.join(_OPERATOR_NAMES)}")
        return self

    def value(self, state: dict[str, Any]) -> float | None:
        """The reward on a final state; None when its field is unknown (the infrastructure failed)."""
        if self.field in (state.get(fan.UNKNOWN) or {}):
            return None
        if any(op in self.model_fields_set for op in _OPERATORS):
            return 1.0 if self.holds(state) else 0.0
        return _number(state.get(self.field))

    def describe_reward(self) -> str:
        if any(op in self.model_fields_set for op in _OPERATORS):
            return f"1.0 when {self.describe()}, else 0.0"
        return f"the value of {self.field} (a list's mean)"


def _number(value: Any) -> float | None:
    if isinstance(value, list):
        numbers = [float(v) for v in value if isinstance(v, int | float)]
        return sum(numbers) / len(numbers) if numbers else None
    return float(value) if isinstance(value, int | float) else None


class ConditionalEdge(_Strict):
    source: str = Field(alias="from")
    when: list[Rule] = Field(default_factory=list)
    default: str = END_NAME


NodeKind = Literal["role", "env", "graph", "join"]


class NodeSpec(_Strict):
    """One node: exactly one of `role`, `env`, `graph` (a subgraph) or `join`."""

    role: str | None = None
    env: str | None = None
    """An environment kind (see `graphs/spec_env.py`)."""
    target: str | None = None
    """For `env: python`: `package.module:function`, or `file.py:function` relative to the spec."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Fixed arguments of an env call (e.g. `timeout_s`, a triplet `mode`, a python function's keywords)."""
    graph: str | None = None
    """A subgraph: another spec (a path relative to this one) or a graph's name."""
    join: Literal["majority", "mean", "any", "all", "best"] | None = None
    over: str | None = None
    """For a join: the list field (a fan-out's output) to aggregate."""
    by: str | None = None
    """For `join: best`: the list field of scores, parallel to `over`."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """Variable (template variable, env input, subgraph field) → state field; empty passes fields by name."""
    output: dict[str, str] | str = Field(default_factory=dict)
    """State field → result field (parsed field or `_text`, env output, subgraph field, join output), or
    one state field for the main result (a role's raw text, an env's main output, a join's value)."""
    n: int = Field(1, ge=1)
    """Fan-out: K parallel calls whose outputs become lists."""
    max_visits: int | None = Field(None, ge=1)
    sampling: dict[str, Any] = Field(default_factory=dict)
    """Per-node overrides of the role's sampling (temperature, max_tokens, …)."""

    @model_validator(mode="after")
    def _one_kind(self) -> NodeSpec:
        given = [k for k in ("role", "env", "graph", "join") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a node needs exactly one of: role, env, graph (a subgraph), join")
        if self.join is not None:
            if self.over is None:
                raise ValueError("a join node needs `over:` (the list field to aggregate)")
            if self.join == "best" and self.by is None:
                raise ValueError("`join: best` needs `by:` (the list field of scores)")
            if self.n > 1:
                raise ValueError("a join node cannot fan out (n must be 1)")
        elif self.over is not None or self.by is not None:
            raise ValueError("`over:` and `by:` belong to join nodes")
        if (self.target is not None) != (self.env == "python"):
            raise ValueError("`env: python` needs `target: module:function` (and only it takes one)")
        if self.sampling and self.role is None:
            raise ValueError("`sampling:` belongs to role nodes")
        return self

    @property
    def kind(self) -> NodeKind:
        if self.role is not None:
            return "role"
        if self.env is not None:
            return "env"
        return "graph" if self.graph is not None else "join"

    def outputs(self, primary: str = TEXT) -> dict[str, str]:
        """The output mapping, a single state field read as {field: the main result}."""
        return {self.output: primary} if isinstance(self.output, str) else dict(self.output)


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


class SandboxSpec(_Strict):
    """The sandbox pool env nodes share (started on first use)."""

    backend: str = "auto"
    size: int = Field(2, ge=1)


class NoOptions(_Strict):
    """A spec graph reads no `--set` options: any key is refused."""


class GraphSpec(_Strict):
    name: str
    description: str = ""
    roles: dict[str, RoleSpec] = Field(default_factory=dict)
    state: dict[str, str] = Field(default_factory=dict)
    inputs: InputsSpec | None = None
    """Where episodes come from; a spec used only as a subgraph needs none."""
    nodes: dict[str, NodeSpec]
    edges: list[tuple[str, str] | ConditionalEdge]
    keep: Condition | list[Condition] | None = None
    rewards: dict[str, RewardSpec] = Field(default_factory=dict)
    """Outcome rewards, each with a weight and whether it is trained on."""
    max_visits: int = Field(3, ge=1)
    """Default loop guard for every node."""
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)
    _path: Path | None = PrivateAttr(default=None)

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
    def path(self) -> Path | None:
        """The file it was loaded from (paths in it are relative to its folder)."""
        return self._path

    @property
    def base(self) -> Path:
        return self._path.parent if self._path is not None else Path.cwd()

    @property
    def keep_conditions(self) -> list[Condition]:
        if self.keep is None:
            return []
        return self.keep if isinstance(self.keep, list) else [self.keep]

    def visits_limit(self, node: str) -> int:
        return self.nodes[node].max_visits or self.max_visits


ProblemKind = Literal[
    "missing_role",
    "unknown_node",
    "unreachable",
    "no_path_to_end",
    "cycle_without_exit",
    "no_start",
    "bad_name",
    "unknown_env",
    "unknown_input",
    "unknown_output",
    "missing_input",
    "bad_target",
    "bad_subgraph",
    "bad_join",
    "unknown_field",
    "no_inputs",
]


@dataclass(frozen=True)
class SpecProblem:
    """One validation problem, naming the node it concerns."""

    node: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class SpecGraphDef(GraphDef):
    """A GraphDef compiled from a YAML spec; it carries the roles the spec (and its subgraphs) declare."""

    role_defs: dict[str, Role] = field(default_factory=dict)
    spec: GraphSpec | None = None
    path: Path | None = None
    subgraphs: dict[str, GraphDef] = field(default_factory=dict)
    """Node name → the GraphDef a subgraph node runs."""


# --- loading ---------------------------------------------------------------------------------------------
def load_spec(path: Path | str) -> GraphSpec:
    """Read and validate a spec file's schema (not yet its graph: see `validate_spec`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"graph spec {path} does not exist",
            "pass a YAML spec path or a graph name (rolegraph graph list)",
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
        spec = GraphSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("tuple[", "ConditionalEdge")))
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"{path}: {where}: {message}", "see examples/critique/graph.yaml for the format"
        ) from None
    spec._path = path.resolve()
    return spec


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


def validate_spec(
    spec: GraphSpec, known_roles: set[str] | None = None, *, _stack: tuple[Path, ...] = ()
) -> list[SpecProblem]:
    """Every problem of the spec, each naming its node (empty when the spec can run)."""
    from rolegraph.graphs.spec_checks import node_problems

    problems: list[SpecProblem] = []
    roles = set(spec.roles) | (known_roles if known_roles is not None else _builtin_roles())
    for name, node in spec.nodes.items():
        problems += node_problems(spec, name, node, roles, _stack)
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
    from rolegraph.graphs.plugins import register_plugin_roles

    register_plugin_roles()
    return set(list_roles())


def check_spec(spec: GraphSpec, path: Path | str | None = None, *, _stack: tuple[Path, ...] = ()) -> None:
    """Raise a ConfigError naming the first problem's node (and how many more there are)."""
    problems = validate_spec(spec, _stack=_stack)
    if spec.inputs is None and not _stack:
        problems.append(
            SpecProblem(START_NAME, "no_inputs", "the spec has no `inputs:` (only a subgraph may omit them)")
        )
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
    """The typed LangGraph state: the spec's fields, the episode id, the visit counter and the channels of
    fan-out results and of fields the infrastructure could not compute."""
    fields: dict[str, Any] = {name: _TYPES[t] | None for name, t in spec.state.items()}
    fields.setdefault(EPISODE_ID, str)
    fields[VISITS] = Annotated[dict[str, int], _merge_visits]
    fields[fan.FAN] = Annotated[dict[str, dict[int, dict[str, Any]]], fan.merge_fan]
    fields[fan.UNKNOWN] = Annotated[dict[str, str], fan.merge_unknown]
    fields[fan.BRANCH] = int
    return TypedDict(f"{spec.name.title().replace('_', '')}State", fields, total=False)  # type: ignore[operator]


def _target(name: str) -> str:
    return {START_NAME: START, END_NAME: END}.get(name, name)


def _router(spec: GraphSpec, edge: ConditionalEdge) -> Any:
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


def build_state_graph(
    spec: GraphSpec,
    ctx: GraphContext,
    *,
    subgraphs: dict[str, GraphDef] | None = None,
    sandbox: SandboxProvider | None = None,
) -> StateGraph:
    """The uncompiled StateGraph of a (validated) spec, with nodes closed over `ctx`.

    A fan-out node becomes a dispatcher, its branches and a gather node (see `graphs/spec_fanout.py`)."""
    from rolegraph.graphs.spec_env import LazySandbox
    from rolegraph.graphs.spec_nodes import node_runner, single

    provider = sandbox or LazySandbox(spec.sandbox.backend, spec.sandbox.size)
    graph: StateGraph = StateGraph(state_type(spec))
    exits: dict[str, str] = {}
    for name, node in spec.nodes.items():
        run, fields = node_runner(spec, name, node, ctx, (subgraphs or {}).get(name), provider)
        if node.n == 1:
            graph.add_node(name, single(name, run, VISITS))  # type: ignore[arg-type, call-overload, unused-ignore]
            exits[name] = name
            continue
        graph.add_node(name, fan.dispatcher(name, VISITS))  # type: ignore[arg-type, call-overload, unused-ignore]
        graph.add_node(fan.branch_name(name), fan.branch(name, run))  # type: ignore[arg-type, call-overload, unused-ignore]
        graph.add_node(fan.gather_name(name), fan.gather(name, fields))  # type: ignore[arg-type, call-overload, unused-ignore]
        graph.add_conditional_edges(name, fan.sends(name, node.n), [fan.branch_name(name)])
        graph.add_edge(fan.branch_name(name), fan.gather_name(name))
        exits[name] = fan.gather_name(name)
    for edge in spec.edges:
        if isinstance(edge, ConditionalEdge):
            targets = {_target(t) for t in [rule.to for rule in edge.when] + [edge.default]} | {END}
            graph.add_conditional_edges(
                exits.get(edge.source, edge.source), _router(spec, edge), {t: t for t in targets}
            )
        else:
            graph.add_edge(exits.get(edge[0], _target(edge[0])), _target(edge[1]))
    return graph


def recursion_limit(spec: GraphSpec) -> int:
    """A LangGraph step limit that the visit guards can never reach (a fan-out visit takes three steps); a
    subgraph runs under the same limit, so it is at least the subgraphs' own."""
    from rolegraph.graphs.spec_checks import subgraph_path

    steps = sum(spec.visits_limit(n) * (3 if spec.nodes[n].n > 1 else 1) for n in spec.nodes)
    subs = [subgraph_path(spec, node.graph) for node in spec.nodes.values() if node.graph is not None]
    return max([25, 2 + steps * 2, *(recursion_limit(load_spec(path)) for path in subs if path is not None)])


def _records(spec: GraphSpec, base: Path) -> list[dict[str, Any]]:
    assert spec.inputs is not None
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
    if spec.inputs is None:
        raise ConfigError(
            f"graph '{spec.name}' has no `inputs:`, so it only runs as a subgraph",
            "add `inputs:` to the spec",
        )
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
    rewards = {name: reward.value(state) for name, reward in spec.rewards.items()}
    for cond in spec.keep_conditions:
        if not cond.holds(state):
            return Outcome(kept=False, reason=f"failed keep: {cond.describe()}", rewards=rewards)
    return Outcome(kept=True, rewards=rewards)


def compile_spec(
    path: Path | str, *, sandbox: SandboxProvider | None = None, _stack: tuple[Path, ...] = ()
) -> SpecGraphDef:
    """Load, validate and compile a YAML spec into a GraphDef the runtime can run.

    `sandbox` provides the SandboxPool env nodes use; by default each build starts its own on first use."""
    from rolegraph.agents.registry import role_from_file
    from rolegraph.graphs.spec_checks import resolve_subgraph

    path = Path(path).resolve()
    spec = load_spec(path)
    check_spec(spec, path, _stack=_stack)
    base = path.parent
    if sandbox is None:  # one pool for the graph and its subgraphs, started only if an env node needs it
        from rolegraph.graphs.spec_env import LazySandbox

        sandbox = LazySandbox(spec.sandbox.backend, spec.sandbox.size)
    role_defs = {
        name: role_from_file(name, base / role.prompt, role.parser, role.sampling)
        for name, role in spec.roles.items()
    }
    roles = [node.role for node in spec.nodes.values() if node.role is not None]
    subgraphs: dict[str, GraphDef] = {}
    for name, node in spec.nodes.items():
        if node.graph is None:
            continue
        sub = resolve_subgraph(spec, node.graph, sandbox=sandbox, stack=(*_stack, path))
        subgraphs[name] = sub
        roles += sub.roles
        role_defs = {**getattr(sub, "role_defs", {}), **role_defs}
    return SpecGraphDef(
        name=spec.name,
        roles=tuple(dict.fromkeys(roles)),
        build=lambda ctx: build_state_graph(spec, ctx, subgraphs=subgraphs, sandbox=sandbox),
        inputs=lambda params: episode_inputs(spec, base, params),
        outcome=lambda state: outcome(spec, state),
        description=spec.description,
        rewards=tuple(
            Reward(name, weight=r.weight, train=r.train, description=r.description or r.describe_reward())
            for name, r in spec.rewards.items()
        ),
        options=NoOptions,
        role_defs=role_defs,
        spec=spec,
        path=path,
        subgraphs=subgraphs,
    )
