"""YAML spec validation: each kind of problem is an error that names the node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegraph.errors import ConfigError
from rolegraph.graphs.render import to_mermaid, to_svg
from rolegraph.graphs.spec import Condition, GraphSpec, compile_spec, validate_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "critique" / "graph.yaml"


def _spec(nodes: dict[str, Any], edges: list[Any], **extra: Any) -> GraphSpec:
    return GraphSpec.model_validate(
        {
            "name": "t",
            "inputs": {"items": [{"q": "x"}]},
            "state": {"q": "str"},
            "nodes": nodes,
            "edges": edges,
            **extra,
        }
    )


def _problems(spec: GraphSpec) -> list[tuple[str, str]]:
    return [(p.kind, p.node) for p in validate_spec(spec, known_roles={"solver", "judge"})]


def test_the_example_is_valid() -> None:
    graph = compile_spec(EXAMPLE)
    assert graph.roles == ("solver", "critic") and "critic" in graph.role_defs
    assert validate_spec(graph.spec, known_roles={"solver"}) == []  # type: ignore[arg-type]


def test_missing_role_names_the_node() -> None:
    spec = _spec({"a": {"role": "ghost"}}, [["START", "a"], ["a", "END"]])
    assert _problems(spec) == [("missing_role", "a")]


def test_unknown_node_in_an_edge() -> None:
    spec = _spec({"a": {"role": "solver"}}, [["START", "a"], ["a", "b"]])
    assert ("unknown_node", "b") in _problems(spec)


def test_unreachable_node() -> None:
    spec = _spec(
        {"a": {"role": "solver"}, "lost": {"role": "solver"}}, [["START", "a"], ["a", "END"], ["lost", "END"]]
    )
    assert _problems(spec) == [("unreachable", "lost")]


def test_node_that_cannot_reach_the_end() -> None:
    spec = _spec(
        {"a": {"role": "solver"}, "sink": {"role": "solver"}}, [["START", "a"], ["a", "END"], ["a", "sink"]]
    )
    assert _problems(spec) == [("no_path_to_end", "sink")]


def test_cycle_without_exit_condition() -> None:
    spec = _spec(
        {"a": {"role": "solver"}, "b": {"role": "judge"}, "c": {"role": "solver"}},
        [["START", "a"], ["a", "b"], ["b", "c"], ["c", "b"], ["a", "END"]],
    )
    problems = validate_spec(spec, known_roles={"solver", "judge"})
    assert [(p.kind, p.node) for p in problems] == [("cycle_without_exit", "b")]
    assert "b → c → b" in problems[0].message


def test_cycle_with_a_conditional_exit_is_fine() -> None:
    spec = _spec(
        {"a": {"role": "solver"}, "b": {"role": "judge"}},
        [
            ["START", "a"],
            ["a", "b"],
            {"from": "b", "when": [{"field": "q", "equals": "bad", "to": "a"}], "default": "END"},
        ],
    )
    assert _problems(spec) == []


def test_compile_raises_one_line_error_naming_the_node(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["roles"]["critic"]["prompt"] = str(EXAMPLE.parent / "prompts" / "critic.md")
    raw["inputs"]["file"] = str(EXAMPLE.parent / "problems.jsonl")
    raw["nodes"]["orphan"] = {"role": "critic"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="node 'orphan' cannot be reached from START") as err:
        compile_spec(path)
    assert "\n" not in str(err.value)


def test_schema_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: t\ninputs: {items: []}\nnodes: {a: {role: solver, n: 0}}\nedges: [[START, a]]\n")
    with pytest.raises(ConfigError, match=r"nodes\.a\.n") as err:
        compile_spec(path)
    assert "\n" not in str(err.value)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        compile_spec(path)


def test_condition_needs_exactly_one_operator() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Condition.model_validate({"field": "x", "equals": 1, "gt": 0})
    assert Condition.model_validate({"field": "x", "in": [1, 2]}).holds({"x": 2})
    assert not Condition.model_validate({"field": "x", "gt": 3}).holds({"x": "not a number"})
    assert Condition.model_validate({"field": "x", "empty": True}).holds({})


def test_drawings_show_every_node_and_edge() -> None:
    graph = compile_spec(EXAMPLE)
    mermaid = to_mermaid(graph)
    assert "solve --> critique" in mermaid and "critique -.-> solve" in mermaid
    svg = to_svg(graph)
    assert svg.startswith("<svg") and ">critique</text>" in svg and "stroke-dasharray" in svg
