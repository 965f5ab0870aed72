"""Unit tests of the selfplay graph's nodes (a fake ctx), of reading its store back into DPO pairs, and of
distillation's trace selection. The end-to-end tests (real server, sandbox, TRL) are in test_selfplay.py."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from rolegraph.agents.registry import get_role
from rolegraph.agents.role import Role
from rolegraph.environments.sandbox.base import ExecResult, Status
from rolegraph.errors import ConfigError, ParseError, SandboxError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.selfplay import REWARDS, Problem, load_problems, nodes, selfplay_graph
from rolegraph.graphs.selfplay.graph import outcome
from rolegraph.serving.types import Choice
from rolegraph.store import Step, Store
from rolegraph.trainers.code_rollouts import code_spec
from rolegraph.trainers.distill import verified_traces
from rolegraph.trainers.pairs import ProblemRollouts, Rollout, build_pairs, keep_reason
from rolegraph.trainers.selfplay import read_rollouts

ADD = {
    "task_id": "easy/add",
    "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}
DECLARED = [dataclasses.asdict(r) for r in REWARDS]


class FakeCtx:
    """A GraphContext answering each role with fixed texts and running environment calls for real."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies
        self.calls: list[dict[str, Any]] = []
        self.envs: list[tuple[str, dict[str, Any], str | None]] = []
        self.rewards: dict[str, list[dict[str, float | None]]] = {}
        self._ids = itertools.count(1)

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
        spec = prompt or get_role(role)
        messages = spec.render(variables)
        self.calls.append({"role": role, "node": node, "messages": messages, "sampling": sampling})
        return Step(
            id=next(self._ids),
            episode_id=episode_id,
            attempt=1,
            kind="role",
            node=node,
            role=role,
            messages=messages,
            choices=[_parse(spec, text) for text in self.replies[role]],
        )

    async def call_env(
        self, name: str, *, node: str, episode_id: str, request: dict[str, Any], fn: Any
    ) -> Any:
        try:
            value = await fn()
        except Exception as exc:
            self.envs.append((name, request, type(exc).__name__))
            raise
        self.envs.append((name, request, None))
        return value

    def add_rewards(self, step: Step, rewards: Any) -> None:
        self.rewards[step.node] = rewards if isinstance(rewards, list) else [rewards] * len(step.choices)


def _parse(spec: Role, text: str) -> Choice:
    try:
        return Choice(text=text, parsed=spec.parse(text))
    except ParseError as exc:
        return Choice(text=text, parse_error=exc.message)


def _state(problem: Problem, **options: Any) -> dict[str, Any]:
    return {
        "episode_id": f"selfplay-{problem.id}",
        "options": {"problems": "unused.jsonl", "n": 4, **options},
        "problem": problem.to_state(),
    }


async def _episode(ctx: FakeCtx, state: dict[str, Any], sandbox: Any = None) -> dict[str, Any]:
    """The graph's path for one episode: reference, then (unless it failed) the rollouts."""
    state = {**state, **await nodes.reference(state, ctx)}  # type: ignore[arg-type]
    if nodes.route_after_reference(state) == "rollout":  # type: ignore[arg-type]
        state = {**state, **await nodes.rollout(state, ctx, sandbox)}  # type: ignore[arg-type]
    return state


# --- math: the teacher's majority is the reference -----------------------------------------------------
async def test_teacher_majority_is_the_reference_and_each_rollout_is_rewarded() -> None:
    ctx = FakeCtx(
        {
            "judge": ["\\boxed{5}", "so \\boxed{5}", "\\boxed{6}"],
            "solver": ["\\boxed{5}", "\\boxed{7}", "no idea", "the answer is \\boxed{5.0}"],
        }
    )
    problem = Problem("q", "What is 2+3?")
    final = await _episode(ctx, _state(problem, teacher_role="judge", teacher_n=3, seed=7))

    assert final["reference"] == "5" and final["reference_source"] == "teacher"
    teacher, policy = ctx.calls
    # The teacher answers the policy's prompt (the solver's), with its own binding and n.
    assert teacher["role"] == "judge" and teacher["messages"] == get_role("solver").render(
        {"problem": problem.problem}
    )
    assert teacher["sampling"]["n"] == 3
    assert policy["role"] == "solver" and policy["sampling"] == {
        "n": 4,
        "max_tokens": 64,
        "temperature": 1.0,
        "seed": 7,
    }
    assert ctx.rewards[nodes.REFERENCE_NODE] == [
        {"majority_vote": 1.0},
        {"majority_vote": 1.0},
        {"majority_vote": 0.0},
    ]
    assert ctx.rewards[nodes.ROLLOUT_NODE] == [
        {"passed": 1.0},
        {"passed": 0.0},
        {"passed": 0.0},
        {"passed": 1.0},
    ]
    assert final["passed"] == [True, False, False, True] and final["verdicts"][1] == "7"
    # One math-verify call for the vote and one per rollout, all recorded as environment calls.
    assert [name for name, _, _ in ctx.envs] == ["math_verify"] * 5
    result = outcome(final)
    assert result.kept and result.metrics["pass_rate"] == 0.5 and result.metrics["unverified"] == 0


async def test_a_problem_without_reference_is_not_rolled_out() -> None:
    ctx = FakeCtx({"solver": ["\\boxed{1}"]})
    final = await _episode(ctx, _state(Problem("q", "What is 2+3?")))
    assert ctx.calls == []  # nothing sampled: the rollouts could not be checked
    result = outcome(final)
    assert not result.kept and result.reason and "no reference answer" in result.reason


async def test_a_verifier_timeout_is_an_unknown_verdict_not_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow(pred: str | None, gold: str | None) -> bool:
        time.sleep(0.3)
        return True

    monkeypatch.setattr(nodes, "VERIFY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(nodes, "verify", slow)
    ctx = FakeCtx({"solver": ["\\boxed{5}", "\\boxed{5}"]})
    final = await _episode(ctx, _state(Problem("q", "What is 2+3?", answer="5"), n=2))
    assert final["passed"] == [None, None]
    assert ctx.rewards[nodes.ROLLOUT_NODE] == [{"passed": None}, {"passed": None}]
    assert [error for _, _, error in ctx.envs] == ["VerifierTimeoutError"] * 2
    result = outcome(final)
    assert not result.kept and result.metrics["unverified"] == 2 and "pass_rate" not in result.metrics


# --- code: sandbox verdicts, and a sandbox failure is None ---------------------------------------------
class FakeSandbox:
    """Answers like a SandboxPool: the right sum passes, `a - b` fails its tests, a `crash` breaks the
    sandbox itself."""

    def execute(self, job: Any) -> ExecResult:
        if "crash" in job.code:
            return ExecResult(Status.SANDBOX_ERROR, error="worker died")
        return ExecResult(Status.OK, passed="a + b" in job.code)


def _code_problem() -> Problem:
    spec = code_spec(ADD)
    assert spec is not None
    return Problem("easy/add", ADD["prompt"], None, spec)


async def test_code_rollouts_run_in_the_sandbox_and_its_failures_are_left_unjudged() -> None:
    fence = "```python\ndef add(a, b):\n    {}\n```"
    replies = [
        fence.format("return a + b"),
        fence.format("return a - b"),
        fence.format("crash = 1"),
        "def add(:",
    ]
    ctx = FakeCtx({"solver": replies})
    sandbox = FakeSandbox()

    async def provider() -> FakeSandbox:
        return sandbox

    final = await _episode(ctx, _state(_code_problem()), provider)
    assert final["passed"] == [True, False, None, False]
    assert final["verdicts"] == ["ok", "ok", None, "syntax_error"]
    assert ctx.rewards[nodes.ROLLOUT_NODE] == [
        {"passed": 1.0},
        {"passed": 0.0},
        {"passed": None},
        {"passed": 0.0},
    ]
    assert sorted(error or "" for _, _, error in ctx.envs) == ["", "", "", "SandboxError"]
    # The code prompt replaced the solver's, under the solver's name (its binding).
    assert ctx.calls[0]["role"] == "solver" and "```python" in ctx.calls[0]["messages"][-1]["content"]
    assert outcome(final).metrics == {"rollouts": 4.0, "unverified": 1.0, "pass_rate": 1 / 3}


async def test_a_sandbox_that_cannot_start_leaves_every_rollout_unjudged() -> None:
    async def broken() -> Any:
        raise SandboxError("bubblewrap is not installed", "install it")

    ctx = FakeCtx({"solver": ["```python\ndef add(a, b):\n    return a + b\n```"] * 2})
    final = await _episode(ctx, _state(_code_problem(), n=2), broken)
    assert final["passed"] == [None, None]
    assert outcome(final).reason == "no rollout could be verified"


async def test_a_code_problem_without_a_sandbox_is_a_config_error() -> None:
    ctx = FakeCtx({"solver": ["def add(a, b): return a + b"]})
    with pytest.raises(ConfigError, match="no sandbox"):
        await _episode(ctx, _state(_code_problem(), n=1))


# --- problems from a promptcot run dir ------------------------------------------------------------------
def test_problems_from_a_promptcot_run_use_the_solver_majority_answer(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.start_run("promptcot", {}, 0, {})
        finals: dict[str, tuple[dict[str, Any], bool]] = {
            "a": ({"problem": "What is 2+3?", "majority_answer": "5", "agreement": 1.0}, True),
            "b": ({"problem": "Name a prime.", "majority_answer": None, "agreement": 0.0}, True),
            "c": ({"problem": "Rejected.", "majority_answer": "1", "agreement": 0.5}, False),
        }
        for key, (final, kept) in finals.items():
            store.begin_episode(key, {})
            store.finish_episode(key, final, kept=kept)
    problems = load_problems(tmp_path, limit=10)
    assert [(p.id, p.answer, p.kind) for p in problems] == [("a", "5", "math"), ("b", None, "math")]


def test_problems_round_trip_through_the_state() -> None:
    code = _code_problem()
    assert Problem.from_state(json.loads(json.dumps(code.to_state()))) == code
    stdio = Problem("cf", "Sum.", None, code_spec({"tests": [{"input": "1 2\n", "output": "3\n"}]}))
    assert Problem.from_state(json.loads(json.dumps(stdio.to_state()))) == stdio


def test_graph_inputs_are_one_stable_episode_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        "".join(json.dumps(row) + "\n" for row in ({"id": "m", "problem": "1+1?", "answer": "2"}, ADD))
    )
    graph = selfplay_graph()
    items = graph.inputs(RunParams(n=5, options={"problems": str(path)}))
    assert [i.key for i in items] == ["selfplay-m", "selfplay-easy/add"]
    assert graph.inputs(RunParams(n=1, options={"problems": str(path)})) == items[:1]
    with pytest.raises(ConfigError, match="selfplay option 'n'"):
        graph.inputs(RunParams(n=1, options={"problems": str(path), "n": 0}))
    assert {r.name for r in graph.rewards if r.train} == {"passed", "majority_vote"}


# --- reading the run back: pairs and distillation -------------------------------------------------------
def _rollout_run(run_dir: Path, passed: list[float | None]) -> None:
    """A selfplay store with one kept episode whose rollouts carry `passed`."""
    with Store(run_dir) as store:
        store.start_run("selfplay", {}, 0, {}, rewards=DECLARED)
        store.begin_episode("selfplay-q", {})
        messages = [{"role": "user", "content": "What is 2+3?"}]
        step = store.record_step(
            Step(
                id=0,
                episode_id="selfplay-q",
                attempt=1,
                kind="role",
                node=nodes.ROLLOUT_NODE,
                role="solver",
                messages=messages,
                choices=[Choice(text=f"rollout {i}", parsed={"answer": str(i)}) for i in range(len(passed))],
            )
        )
        store.add_rewards(step.id, [{"passed": value} for value in passed])
        final = {"passed": [None if v is None else bool(v) for v in passed], "verdicts": ["0", "1", "2", "3"]}
        store.finish_episode("selfplay-q", final, kept=True)
        store.begin_episode("selfplay-r", {})
        store.finish_episode(
            "selfplay-r", {"failed": "no reference answer"}, kept=False, reason="no reference"
        )


def test_rollouts_read_back_leave_unverified_ones_out_of_pairs_and_count_them(tmp_path: Path) -> None:
    _rollout_run(tmp_path, [1.0, 0.0, None, 0.0])
    groups, skipped = read_rollouts(tmp_path, "solver")
    (group,) = groups
    assert [r.passed for r in group.rollouts] == [True, False, None, False]
    assert group.pass_rate == 1 / 3 and group.prompt == [{"role": "user", "content": "What is 2+3?"}]
    assert skipped == {"r": "no reference"}
    rows, report = build_pairs(groups, max_pass_rate=0.5)
    assert report.kept == ["q"] and report.unverified == 1
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("rollout 0", "rollout 1"),
        ("rollout 0", "rollout 3"),
    ]


def test_a_problem_with_no_verified_rollout_is_dropped() -> None:
    group = ProblemRollouts("q", [], [Rollout("a", None), Rollout("b", None)])
    assert keep_reason(group, 1.0) == "unverified" and group.pass_rate == 0.0
    rows, report = build_pairs([group])
    assert rows == [] and report.dropped == {"q": "unverified"} and report.unverified == 2


def test_distillation_keeps_positive_traces_and_counts_unverified_ones(tmp_path: Path) -> None:
    _rollout_run(tmp_path, [1.0, 0.0, None, 1.0])
    traces = verified_traces(tmp_path, "solver")
    assert [row["completion"][0]["content"] for row in traces.rows] == ["rollout 0", "rollout 3"]
    assert traces.unverified == 1 and traces.rejected == 1
    assert traces.rows[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    assert verified_traces(tmp_path, "judge").rows == []


# --- the graph on the real runtime and store (fake endpoints) --------------------------------------------
def test_the_graph_runs_on_the_runtime_and_resumes(tmp_path: Path) -> None:
    from rolegraph.graphs.runtime import run_graph
    from tests.runtime.fakes import FakePool

    problems = tmp_path / "p.jsonl"
    rows = [{"id": "m", "problem": "1+1?", "answer": "2"}, {"id": "x", "problem": "No answer."}]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = FakePool({"solver": lambda m, s: ["\\boxed{2}", "\\boxed{3}"]})
    options = {"problems": str(problems), "n": 2}
    run_dir = tmp_path / "run"

    async def run() -> Any:
        return await run_graph(
            selfplay_graph(), pool, RunParams(n=2, options=options), run_dir, progress=False
        )

    summary = asyncio.run(run())
    assert (summary.kept, summary.rejected, summary.failed) == (1, 1, 0)
    groups, skipped = read_rollouts(run_dir, "solver")
    assert [[r.passed for r in g.rollouts] for g in groups] == [[True, False]]
    assert list(skipped) == ["x"]
    with Store(run_dir, create=False) as store:
        assert store.run().rewards == DECLARED  # type: ignore[union-attr]
        steps = len(store.steps())
    asyncio.run(run())  # finished episodes are not sampled again
    with Store(run_dir, create=False) as store:
        assert len(store.steps()) == steps
    assert len(pool.clients["solver"].calls) == 1
