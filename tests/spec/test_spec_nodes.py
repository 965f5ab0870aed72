"""Spec nodes on the runtime: each environment kind (real sandbox), fan-out with each join, a subgraph,
rewards from env outputs, and an infrastructure failure that leaves a reward unknown. Roles answer from a
fake pool."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegraph.environments.sandbox.base import ExecResult, Limits
from rolegraph.environments.sandbox.pool import Job, SandboxPool
from rolegraph.errors import SandboxError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.graphs.spec import compile_spec
from rolegraph.store import Store
from tests.runtime.fakes import FakePool

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.bwrap


def _write(folder: Path, spec: dict[str, Any], name: str = "graph.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


async def _run(path: Path, run_dir: Path, pool: Any, sandbox: Any = None, n: int = 1) -> Store:
    async def provider() -> Any:
        if isinstance(sandbox, Exception):
            raise sandbox
        return sandbox

    graph = compile_spec(path, sandbox=provider)
    summary = await run_graph(graph, pool, RunParams(n=n), run_dir, concurrency=2, progress=False)
    if summary.failed:
        with Store(run_dir) as store:
            pytest.fail(f"episode failed: {[e.error for e in store.episodes()]}")
    return Store(run_dir)


def _humaneval() -> dict[str, Any]:
    first: dict[str, Any] = json.loads((DATA / "humaneval_dev.jsonl").read_text().splitlines()[2])
    return first  # truncate_number: return number % 1.0


async def test_every_env_kind_runs_in_the_sandbox_and_is_recorded(
    tmp_path: Path, bwrap_pool: SandboxPool
) -> None:
    problem = _humaneval()
    wrong = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"
    item = {
        "code": "print(input()[::-1])",
        "stdin": "abc",
        "program": "def f(x):\n    return x * 2",
        "call_input": "21",
        "prompt": problem["prompt"],
        "tests": problem["test"],
        "entry_point": problem["entry_point"],
        "solution": wrong,
        "answer": "\\boxed{0.5}",
        "reference": "\\frac{1}{2}",
        "cases": [{"input": "3\n", "output": "6"}, {"input": "4\n", "output": "9"}],
        "stdio_code": "print(int(input()) * 2)",
    }
    state = {k: "any" for k in item} | {
        "stdout": "str", "status": "str", "passed": "int", "failed": "int", "first_failure": "str",
        "all_passed": "bool", "io_passed": "int", "io_failure": "str", "correct": "bool", "valid": "bool",
        "output": "str", "score": "float", "judged": "bool", "py_score": "int", "even": "bool", "loud": "str",
    }  # fmt: skip
    spec = {
        "name": "envs",
        "state": state,
        "inputs": {"items": [item]},
        "nodes": {
            "run": {"env": "sandbox.run", "inputs": {"code": "code", "stdin": "stdin"},
                    "output": {"stdout": "stdout", "status": "status"}},
            "unit": {"env": "code.tests", "inputs": {"code": "solution", "prompt": "prompt", "tests": "tests",
                     "entry_point": "entry_point"},
                     "output": {"passed": "passed", "failed": "failed", "first_failure": "first_failure",
                                "all_passed": "all_passed"}},
            "stdio": {"env": "code.tests", "inputs": {"code": "stdio_code", "cases": "cases"},
                      "output": {"io_passed": "passed", "io_failure": "first_failure"}},
            "verify": {"env": "math.verify", "inputs": {"answer": "answer", "reference": "reference"},
                       "output": "correct"},
            "validate": {"env": "triplet.validate", "inputs": {"program": "program", "input": "call_input"},
                         "output": {"valid": "valid", "output": "output"}},
            "judge": {"env": "triplet.judge", "params": {"mode": "abduction"},
                      "inputs": {"program": "program", "output": "output", "predicted": "call_input"},
                      "output": {"score": "score", "judged": "correct"}},
            "py": {"env": "python", "target": "tests.spec.helpers.checks:score", "params": {"bonus": 1},
                   "inputs": {"answer": "call_input"}, "output": {"py_score": "score", "even": "even"}},
            "shout": {"env": "python", "target": "helpers/checks.py:shout", "inputs": {"text": "stdin"},
                      "output": "loud"},
        },
        "edges": [["START", "run"], ["run", "unit"], ["unit", "stdio"], ["stdio", "verify"],
                  ["verify", "validate"], ["validate", "judge"], ["judge", "py"], ["py", "shout"],
                  ["shout", "END"]],
        "rewards": {"correct": {"field": "correct", "equals": True, "weight": 2.0},
                    "asserts": {"field": "passed", "train": False}},
    }  # fmt: skip
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "checks.py").write_text((Path(__file__).parent / "helpers" / "checks.py").read_text())
    with await _run(_write(tmp_path, spec), tmp_path / "run", FakePool({}), bwrap_pool) as store:
        final = store.episodes()[0]
        s = final.final_state
        assert s is not None
        assert s["stdout"].strip() == "cba" and s["status"] == "ok"
        # the wrong solution passes the asserts whose expected value happens to equal the input
        assert s["all_passed"] is False and s["failed"] >= 1 and s["passed"] + s["failed"] == 3
        assert s["first_failure"].startswith("AssertionError: candidate(3.5) == 0.5 -> AssertionError")
        assert s["io_passed"] == 1 and "expected '9', got '8'" in s["io_failure"]
        assert s["correct"] is True
        assert s["valid"] is True and s["output"] == "42"
        assert s["judged"] is True and s["score"] == 1.0
        assert s["py_score"] == 22 and s["even"] is False  # 21 + the bonus param
        assert s["loud"] == "ABC"
        assert final.rewards == {"correct": 1.0, "asserts": float(s["passed"])}
        steps = store.steps()
        assert [st.node for st in steps] == list(spec["nodes"])
        assert all(st.kind == "env" and st.error is None and st.response is not None for st in steps)
        assert steps[0].role == "sandbox.run" and steps[0].request["args"]["stdin"] == "abc"
        assert steps[6].request["target"] == "tests.spec.helpers.checks:score"


class BrokenPool:
    """A pool whose sandbox fails on every run (the worker died), as `SandboxPool` reports it."""

    limits = Limits()

    def execute(self, job: Job) -> ExecResult:
        return ExecResult.sandbox_failure("the sandbox worker stopped answering", "fake")

    def map(self, jobs: list[Job], **options: Any) -> list[ExecResult]:
        return [self.execute(job) for job in jobs]

    async def arun(self, code: str, **options: Any) -> ExecResult:
        return self.execute(Job(op="exec", code=code))


@pytest.mark.parametrize(
    ("kind", "inputs", "output", "sandbox"),
    [
        ("sandbox.run", {"code": "code"}, "ok", SandboxError("no sandbox backend works", "start dockerd")),
        ("code.tests", {"code": "code", "cases": "cases"}, "all_passed", BrokenPool()),
        ("triplet.validate", {"program": "code", "input": "arg"}, "valid", BrokenPool()),
    ],
)
async def test_a_sandbox_failure_leaves_the_reward_unknown(
    tmp_path: Path, kind: str, inputs: dict[str, str], output: str, sandbox: Any
) -> None:
    spec = {
        "name": "broken",
        "state": {"code": "str", "arg": "str", "cases": "list", "ok": "bool"},
        "inputs": {
            "items": [{"code": "def f(x):\n    return x", "arg": "1", "cases": [{"input": "", "output": ""}]}]
        },
        "nodes": {"run": {"env": kind, "inputs": inputs, "output": {"ok": output}}},
        "edges": [["START", "run"], ["run", "END"]],
        "rewards": {"ran": {"field": "ok", "equals": True}},
    }
    with await _run(_write(tmp_path, spec), tmp_path / "run", FakePool({}), sandbox) as store:
        episode = store.episodes()[0]
        assert episode.status == "finished" and episode.rewards == {"ran": None}
        step = store.steps()[0]
        assert step.error_kind == "sandbox" and step.error


def _counter_replies(values: list[str]) -> Any:
    counter = itertools.cycle(values)
    return lambda messages, sampling: [next(counter)]


@pytest.mark.parametrize(
    ("join", "over", "expected"),
    [
        ("majority", "answers", {"value": "\\boxed{7}", "share": 2 / 3}),
        ("mean", "scores", {"value": 17 / 3}),
        ("any", "evens", {"value": False}),
        ("all", "odds", {"value": True}),
        ("best", "answers", {"value": "\\boxed{7}", "score": 7.0}),
    ],
)
async def test_fan_out_runs_k_calls_and_each_join_aggregates(
    tmp_path: Path, join: str, over: str, expected: dict[str, Any]
) -> None:
    outputs = {f"result_{key}": key for key in expected}
    join_node: dict[str, Any] = {"join": join, "over": over, "output": outputs}
    if join == "best":
        join_node["by"] = "scores"
    lists = {"answers": "list", "scores": "list", "evens": "list", "odds": "list", "checks": "list"}
    spec = {
        "name": "fan",
        "state": {"q": "str"} | lists | dict.fromkeys(outputs, "any"),
        "inputs": {"items": [{"q": "what?"}]},
        "nodes": {
            "solve": {"role": "solver", "n": 3, "inputs": {"problem": "q"}, "output": {"answers": "_text"}},
            "check": {"env": "python", "target": "tests.spec.helpers.checks:score", "n": 2,
                      "inputs": {"answer": "q"}, "output": {"checks": "score"}},
            "numbers": {"env": "python", "target": "tests.spec.helpers.checks:numbers",
                        "inputs": {"answers": "answers"},
                        "output": {"scores": "scores", "evens": "evens", "odds": "odds"}},
            "agg": join_node,
        },
        "edges": [["START", "solve"], ["solve", "check"], ["check", "numbers"], ["numbers", "agg"],
                  ["agg", "END"]],
    }  # fmt: skip
    pool = FakePool({"solver": _counter_replies(["\\boxed{7}", "\\boxed{7}", "\\boxed{3}"])})
    with await _run(_write(tmp_path, spec), tmp_path / "run", pool) as store:
        final = store.episodes()[0].final_state
        assert final is not None
        nodes = [s.node for s in store.steps()]
        assert nodes.count("solve") == 3 and nodes.count("check") == 2  # one recorded step per branch
        assert sorted(final["answers"]) == ["\\boxed{3}", "\\boxed{7}", "\\boxed{7}"]
        assert final["checks"] == [0, 0] and not (final.get("_fan") or {})
        for key, value in expected.items():
            assert final[f"result_{key}"] == pytest.approx(value), key


async def test_a_subgraph_runs_inside_its_node_with_mapped_fields(tmp_path: Path) -> None:
    sub = {
        "name": "inner",
        "state": {"question": "str", "reply": "str", "loud": "str"},
        "nodes": {
            "ask": {"role": "solver", "inputs": {"problem": "question"}, "output": "reply"},
            "shout": {"env": "python", "target": "tests.spec.helpers.checks:shout",
                      "inputs": {"text": "reply"}, "output": "loud"},
        },
        "edges": [["START", "ask"], ["ask", "shout"], ["shout", "END"]],
    }  # fmt: skip
    _write(tmp_path, sub, "inner.yaml")
    spec = {
        "name": "outer",
        "state": {"q": "str", "result": "str", "replies": "list"},
        "inputs": {"items": [{"q": "hi"}]},
        "nodes": {
            "inner": {"graph": "inner.yaml", "inputs": {"question": "q"}, "output": {"result": "loud"}},
            "many": {"graph": "inner.yaml", "n": 2, "inputs": {"question": "q"},
                     "output": {"replies": "reply"}},
        },
        "edges": [["START", "inner"], ["inner", "many"], ["many", "END"]],
    }  # fmt: skip
    pool = FakePool({"solver": lambda messages, sampling: ["yes " + messages[-1]["content"][-2:]]})
    with await _run(_write(tmp_path, spec), tmp_path / "run", pool) as store:
        final = store.episodes()[0].final_state
        assert final is not None and final["result"] == "YES HI"
        assert final["replies"] == ["yes hi", "yes hi"]
        nodes = [s.node for s in store.steps()]
        assert nodes[:2] == ["inner/ask", "inner/shout"] and nodes.count("many/ask") == 2
