"""Validation of env, join and subgraph nodes: each problem is a one-line error that names the node."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegraph.errors import ConfigError
from rolegraph.graphs.render import to_mermaid, to_networkx, to_svg
from rolegraph.graphs.spec import GraphSpec, compile_spec, validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(nodes: dict[str, Any], **extra: Any) -> GraphSpec:
    names = list(nodes)
    edges = [
        ["START", names[0]],
        *([a, b] for a, b in itertools.pairwise(names)),
        [names[-1], "END"],
    ]
    return GraphSpec.model_validate(
        {
            "name": "t",
            "inputs": {"items": [{"q": "x"}]},
            "state": {"q": "str", "a": "str", "ok": "bool", "many": "list"},
            "nodes": nodes,
            "edges": edges,
            **extra,
        }
    )


def _problems(spec: GraphSpec) -> list[tuple[str, str]]:
    return [(p.kind, p.node) for p in validate_spec(spec, known_roles={"solver"})]


@pytest.mark.parametrize(
    ("node", "kind", "words"),
    [
        ({"env": "math.check", "inputs": {"answer": "a"}}, "unknown_env", "unknown env kind 'math.check'"),
        ({"env": "math.verify", "inputs": {"answer": "a", "reference": "ref"}}, "unknown_input", "'ref'"),
        ({"env": "math.verify", "inputs": {"answer": "a", "reference": "q"},
          "output": {"verdict": "correct"}}, "unknown_output", "output field 'verdict' is not in the state"),
        ({"env": "math.verify", "inputs": {"answer": "a", "reference": "q"}, "output": {"ok": "score"}},
         "unknown_output", "math.verify gives no 'score'"),
        ({"env": "math.verify", "inputs": {"answer": "a"}}, "missing_input", "needs input 'reference'"),
        ({"env": "python", "target": "no_such_module_xyz:f"}, "bad_target", "does not import"),
        ({"env": "python", "target": "json:no_such_function"}, "bad_target", "has no function"),
        ({"env": "python", "target": "json:dumps", "inputs": {"nonsense": "q"}, "params": {"x": 1}},
         "bad_target", "cannot take its inputs"),
        ({"join": "best", "over": "many", "by": "many", "output": {"a": "share"}}, "bad_join",
         "gives no 'share'"),
        ({"graph": "missing.yaml"}, "bad_subgraph", "does not exist"),
        ({"graph": "no_such_graph"}, "bad_subgraph", "unknown graph"),
        ({"role": "solver", "inputs": {"problem": "nope"}}, "unknown_input", "input field 'nope'"),
    ],
)  # fmt: skip
def test_each_node_problem_names_the_node(node: dict[str, Any], kind: str, words: str) -> None:
    spec = _spec({"bad": node})
    problems = validate_spec(spec, known_roles={"solver"})
    assert (kind, "bad") in [(p.kind, p.node) for p in problems]
    message = next(p.message for p in problems if p.kind == kind)
    assert message.startswith("node 'bad': ") and words in message and "\n" not in message


def test_schema_rules_of_node_kinds() -> None:
    for node, words in [
        ({"role": "solver", "env": "math.verify"}, "exactly one of"),
        ({"join": "best", "over": "many"}, "needs `by:`"),
        ({"env": "python"}, "needs `target"),
        ({"env": "math.verify", "sampling": {"temperature": 0}}, "belongs to role nodes"),
    ]:
        with pytest.raises(ValueError, match=words):
            _spec({"bad": node})


def test_a_subgraph_that_includes_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "loop", "state": {"q": "str"}, "inputs": {"items": [{"q": "x"}]},
             "nodes": {"again": {"graph": "loop.yaml"}}, "edges": [["START", "again"], ["again", "END"]]}
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"node 'again': subgraph loop\.yaml includes itself") as err:
        compile_spec(path)
    assert "\n" not in str(err.value)


def test_a_bad_target_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "g", "state": {"q": "str"}, "inputs": {"items": [{"q": "x"}]},
             "nodes": {"f": {"env": "python", "target": "helpers.py:score"}},
             "edges": [["START", "f"], ["f", "END"]]}
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"node 'f': python target file .*helpers.py does not exist"):
        compile_spec(path)


def test_drawings_tell_env_nodes_fan_out_and_subgraphs_apart(tmp_path: Path) -> None:
    (tmp_path / "inner.yaml").write_text(
        yaml.safe_dump(
            {"name": "inner", "state": {"q": "str"},
             "nodes": {"ask": {"role": "solver", "inputs": {"problem": "q"}}},
             "edges": [["START", "ask"], ["ask", "END"]]}
        )
    )  # fmt: skip
    spec = {
        "name": "drawn", "state": {"q": "str", "a": "list", "ok": "bool", "v": "str"},
        "inputs": {"items": [{"q": "x"}]},
        "nodes": {
            "solve": {"role": "solver", "n": 4, "inputs": {"problem": "q"}, "output": {"a": "_text"}},
            "vote": {"join": "majority", "over": "a", "output": "v"},
            "check": {"env": "math.verify", "inputs": {"answer": "v", "reference": "q"}, "output": "ok"},
            "sub": {"graph": "inner.yaml", "inputs": {"q": "q"}},
        },
        "edges": [["START", "solve"], ["solve", "vote"], ["vote", "check"], ["check", "sub"], ["sub", "END"]],
    }  # fmt: skip
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    graph = compile_spec(path)
    mermaid = to_mermaid(graph)
    assert 'solve["solve · solver ×4"]:::role:::fanout' in mermaid
    assert 'check{{"check · math.verify"}}:::env' in mermaid
    assert 'vote(("vote · majority of a"))' in mermaid
    assert 'subgraph sub ["sub · inner.yaml"]' in mermaid and 'sub__ask["ask · solver"]' in mermaid
    assert "check --> sub" in mermaid
    kinds = dict(to_networkx(graph).nodes(data="kind"))
    assert kinds["check"] == "env" and kinds["solve"] == "role" and kinds["sub"] == "graph"
    svg = to_svg(graph)
    assert '<g class="node env" data-node="check"><polygon' in svg
    assert svg.count('data-node="solve"') == 1 and "solver ×4" in svg


def test_the_examples_are_valid() -> None:
    for example in ("critique", "code-repair"):
        graph = compile_spec(EXAMPLES / example / "graph.yaml")
        assert graph.spec is not None and validate_spec(graph.spec) == []
        assert [r.name for r in graph.rewards if r.train] == [
            "correct" if example == "critique" else "passed"
        ]
