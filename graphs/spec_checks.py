"""Per-node checks of a YAML spec (env kinds, state fields, python targets, subgraphs, joins), each naming the
node, and resolving a subgraph node to the GraphDef it runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rolegraph.errors import ConfigError
from rolegraph.graphs import spec_fanout as fan
from rolegraph.graphs.base import GraphDef
from rolegraph.graphs.spec_env import KINDS, SandboxProvider, resolve_target, signature_problem

if TYPE_CHECKING:
    from rolegraph.graphs.spec import GraphSpec, NodeSpec, SpecProblem

INPUT_EXTRAS = ("episode_id",)
"""Fields every node may read besides the declared state."""


def _problem(node: str, kind: str, message: str) -> SpecProblem:
    from rolegraph.graphs.spec import SpecProblem

    return SpecProblem(node, kind, f"node '{node}': {message}")  # type: ignore[arg-type]


def node_problems(
    spec: GraphSpec, name: str, node: NodeSpec, roles: set[str], stack: tuple[Path, ...]
) -> list[SpecProblem]:
    """Every problem of one node (empty when it can run)."""
    from rolegraph.graphs.spec import RESERVED_IN_NAMES

    if any(char in name for char in RESERVED_IN_NAMES):
        reserved = " ".join(RESERVED_IN_NAMES)
        return [_problem(name, "bad_name", f"its name may not contain any of {reserved}")]
    problems = _field_problems(spec, name, node)
    if node.kind == "role" and node.role not in roles:
        problems.append(
            _problem(
                name,
                "missing_role",
                f"uses role '{node.role}', which is neither declared under `roles` nor built in",
            )
        )
    elif node.kind == "env":
        problems += _env_problems(spec, name, node)
    elif node.kind == "graph":
        problems += _subgraph_problems(spec, name, node, stack)
    elif node.kind == "join":
        problems += _join_problems(name, node)
    return problems


def _field_problems(spec: GraphSpec, name: str, node: NodeSpec) -> list[SpecProblem]:
    """Inputs read and outputs write declared state fields."""
    problems = []
    readable = set(spec.state) | set(INPUT_EXTRAS)
    read = list(node.inputs.values()) + [f for f in (node.over, node.by) if f is not None]
    for state_field in read:
        if state_field not in readable:
            problems.append(
                _problem(
                    name, "unknown_input", f"input field '{state_field}' is not in the state (declare it)"
                )
            )
    for state_field in node.outputs():
        if state_field not in spec.state:
            problems.append(
                _problem(
                    name, "unknown_output", f"output field '{state_field}' is not in the state (declare it)"
                )
            )
    return problems


def env_inputs(spec: GraphSpec, node: NodeSpec) -> dict[str, str]:
    """An env node's input → state field mapping; empty `inputs` takes the kind's inputs from same-named
    state fields."""
    if node.inputs or node.env not in KINDS:
        return dict(node.inputs)
    return {arg: arg for arg in KINDS[node.env].inputs if arg in spec.state}


def _env_problems(spec: GraphSpec, name: str, node: NodeSpec) -> list[SpecProblem]:
    assert node.env is not None
    kind = KINDS.get(node.env)
    if kind is None:
        return [
            _problem(name, "unknown_env", f"unknown env kind '{node.env}' (use one of: {', '.join(KINDS)})")
        ]
    mapping = env_inputs(spec, node)
    if node.env == "python":
        assert node.target is not None
        try:
            function = resolve_target(node.target, spec.base)
        except ConfigError as exc:
            return [_problem(name, "bad_target", exc.message)]
        why = signature_problem(function, [*node.params, *mapping])
        return [_problem(name, "bad_target", f"{node.target} cannot take its inputs: {why}")] if why else []
    problems = []
    for arg in mapping:
        if arg not in kind.inputs:
            problems.append(
                _problem(
                    name,
                    "unknown_input",
                    f"{kind.name} has no input '{arg}' (it takes: {', '.join(kind.inputs)})",
                )
            )
    for arg in kind.required:
        if arg not in mapping:
            problems.append(_problem(name, "missing_input", f"{kind.name} needs input '{arg}' (map it)"))
    for state_field, result in node.outputs(kind.primary).items():
        if result not in kind.outputs:
            problems.append(
                _problem(
                    name,
                    "unknown_output",
                    f"{kind.name} gives no '{result}' for '{state_field}' "
                    f"(it gives: {', '.join(kind.outputs)})",
                )
            )
    return problems


def _join_problems(name: str, node: NodeSpec) -> list[SpecProblem]:
    assert node.join is not None
    known = fan.JOIN_OUTPUTS[node.join]
    return [
        _problem(
            name,
            "bad_join",
            f"join '{node.join}' gives no '{result}' for '{state_field}' (it gives: {', '.join(known)})",
        )
        for state_field, result in node.outputs("value").items()
        if result not in known
    ]


def _subgraph_problems(
    spec: GraphSpec, name: str, node: NodeSpec, stack: tuple[Path, ...]
) -> list[SpecProblem]:
    from rolegraph.graphs.spec import load_spec, validate_spec

    assert node.graph is not None
    if isinstance(node.output, str):
        return [_problem(name, "bad_subgraph", "a subgraph's `output` maps state fields to its fields")]
    path = subgraph_path(spec, node.graph)
    if path is None:
        try:
            _named_graph(node.graph)
        except ConfigError as exc:
            return [_problem(name, "bad_subgraph", f"subgraph '{node.graph}': {exc.message}")]
        return []
    here = (*stack, *(p for p in [spec.path] if p is not None))
    if path in here:
        return [_problem(name, "bad_subgraph", f"subgraph {path.name} includes itself")]
    try:
        sub = load_spec(path)
    except ConfigError as exc:
        return [_problem(name, "bad_subgraph", exc.message)]
    problems = [
        _problem(name, "bad_subgraph", f"in subgraph {path.name}: {p.message}")
        for p in validate_spec(sub, _stack=here)
    ]
    readable = set(sub.state)
    for sub_field in node.inputs:
        if sub_field not in readable:
            problems.append(
                _problem(name, "unknown_input", f"subgraph {path.name} has no state field '{sub_field}'")
            )
    for sub_field in node.outputs().values():
        if sub_field not in readable:
            problems.append(
                _problem(name, "unknown_output", f"subgraph {path.name} has no state field '{sub_field}'")
            )
    return problems


def subgraph_path(spec: GraphSpec, ref: str) -> Path | None:
    """The spec file a subgraph reference names (relative to the spec), or None for a graph's name."""
    from rolegraph.graphs.registry import is_spec_path

    return (spec.base / ref).resolve() if is_spec_path(ref) else None


def _named_graph(name: str) -> GraphDef:
    from rolegraph.graphs.registry import get_graph

    return get_graph(name)


def resolve_subgraph(
    spec: GraphSpec, ref: str, *, sandbox: SandboxProvider | None, stack: tuple[Path, ...]
) -> GraphDef:
    """The GraphDef a subgraph node runs: a spec compiled with the same sandbox provider, or a named graph."""
    from rolegraph.graphs.spec import compile_spec

    path = subgraph_path(spec, ref)
    if path is None:
        return _named_graph(ref)
    return compile_spec(path, sandbox=sandbox, _stack=stack)
