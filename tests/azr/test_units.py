"""Unit tests of Absolute Zero's pieces that need no server: task-relative advantages (checked against a hand
computation), the completion parsers, the patch check, buffers and episode planning."""

from __future__ import annotations

import math

import pytest

from rolegraph.environments.triplets import AZR_POLICY, check_program, module_patches
from rolegraph.errors import ConfigError, ParseError
from rolegraph.graphs.azr.parse import parse_induction_proposal, parse_r1_answer, parse_triplet_proposal
from rolegraph.graphs.azr.state import AZROptions
from rolegraph.graphs.azr.tasks import Task, empty_buffers, load_seed_triplets, plan_episodes
from rolegraph.trainers.reinforce_pp import Sample, dataset_rows, task_relative_advantages


def _sample(task_type: str, role: str, reward: float) -> Sample:
    return Sample(task_type, role, [1, 2], [3], reward)


def test_advantages_match_a_hand_computation_over_all_six_groups() -> None:
    batch = [
        _sample("deduction", "proposer", 1.0),
        _sample("induction", "solver", -1.0),
        _sample("deduction", "solver", 1.0),
        _sample("abduction", "proposer", -0.5),
        _sample("deduction", "proposer", 0.0),
        _sample("abduction", "solver", 1.0),
        _sample("induction", "proposer", 0.25),
        _sample("deduction", "solver", 1.0),
        _sample("abduction", "proposer", 0.5),
        _sample("induction", "solver", 0.0),
        _sample("deduction", "solver", 0.0),
        _sample("induction", "proposer", 0.75),
        _sample("abduction", "proposer", 0.0),
        _sample("induction", "solver", 1.0),
        _sample("deduction", "solver", 0.0),
        _sample("induction", "solver", 0.0),
    ]
    # By hand, per group: mean, population std, then (r - mean) / std.
    # deduction/proposer [1, 0]: mean 0.5, std 0.5 → +1, -1
    # deduction/solver [1, 1, 0, 0]: mean 0.5, std 0.5 → +1, +1, -1, -1
    # abduction/proposer [-0.5, 0.5, 0]: mean 0, std sqrt(1/6) = 0.408248 → -1.224745, +1.224745, 0
    # abduction/solver [1]: one sample → 0
    # induction/proposer [0.25, 0.75]: mean 0.5, std 0.25 → -1, +1
    # induction/solver [-1, 0, 1, 0]: mean 0, std sqrt(1/2) = 0.707107 → -1.414214, 0, +1.414214, 0
    expected = [
        1.0, -1.414214, 1.0, -1.224745, -1.0, 0.0, -1.0, 1.0,
        1.224745, 0.0, -1.0, 1.0, 0.0, 1.414214, -1.0, 0.0,
    ]  # fmt: skip
    assert len({s.group for s in batch}) == 6
    assert task_relative_advantages(batch) == pytest.approx(expected, abs=1e-5)
    rows = dataset_rows(batch)
    assert [r["advantage"] for r in rows] == pytest.approx(expected, abs=1e-5)
    assert rows[1]["group"] == "induction/solver" and rows[1]["completion_ids"] == [3]


def test_equal_rewards_give_zero_advantages_not_a_division_by_zero() -> None:
    advantages = task_relative_advantages([_sample("deduction", "solver", 1.0)] * 3)
    assert advantages == [0.0, 0.0, 0.0] and all(math.isfinite(a) for a in advantages)


def test_proposals_and_r1_answers_parse() -> None:
    text = "idea\n```python\ndef f(x):\n    return x + 1\n```\n```input\n41\n```"
    assert parse_triplet_proposal(text) == {"program": "def f(x):\n    return x + 1", "input": "41"}
    induction = "```input\n1\n```\n```input\n2\n```\n```input\n1\n```\n```message\nadds one\n```"
    assert parse_induction_proposal(induction) == {"inputs": ["1", "2"], "message": "adds one"}
    assert parse_r1_answer("<think>\nhm</think>\n<answer> 42 </answer>") == {"answer": "42"}
    fenced = "<think>x</think><answer>```python\ndef f(a):\n    return a\n```</answer>"
    assert parse_r1_answer(fenced) == {"answer": "def f(a):\n    return a"}
    for bad in ("<answer>42</answer>", "<think>x</think> 42", "<think>x</think><answer> </answer>"):
        with pytest.raises(ParseError):
            parse_r1_answer(bad)
    with pytest.raises(ParseError):
        parse_triplet_proposal("```python\ndef f(x): return x\n```")


def test_patches_and_reflection_are_caught_on_the_host() -> None:
    assert module_patches("import math\nmath.floor = abs\ndef f(x):\n    return 1") == ["patches module math"]
    assert module_patches("import math as m\ndel m.pi\ndef f(x):\n    return 1") == ["patches module m"]
    assert module_patches("def f(x):\n    x.y = 1\n    return 1") == []
    trick = "def f(x):\n    return getattr(__builtins__, '__imp' + 'ort__')('o' + 's').sep"
    assert check_program(trick) is None  # the default policy does not see it ...
    assert "uses getattr" in str(check_program(trick, AZR_POLICY))  # ... the AZR policy does
    assert "imports builtins" in str(check_program("import builtins\ndef f(x):\n    return 1", AZR_POLICY))


def test_episode_plans_draw_references_and_need_a_program_for_induction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    buffers = empty_buffers()
    buffers["deduction"] = [
        Task("deduction", f"def f(a):\n    return a + {k}", "1", str(1 + k)) for k in range(8)
    ]
    plan = plan_episodes(buffers, ["deduction", "abduction", "induction"], 2, 6, seed=3)
    assert [p["key"] for p in plan] == [
        f"{t}-{i}" for t in ("deduction", "abduction", "induction") for i in (0, 1)
    ]
    assert len(plan[0]["references"]) == 6 and plan[2]["references"] == [] and plan[2]["fallback"] is None
    assert plan[4]["program"].startswith("def f(a)")
    assert plan == plan_episodes(buffers, ["deduction", "abduction", "induction"], 2, 6, seed=3)
    with pytest.raises(ConfigError, match="induction has no program"):
        plan_episodes(empty_buffers(), ["induction"], 1, 6, seed=0)
    assert load_seed_triplets(None)[0]["program"] == "def f(a):\n    return a"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"code": 1}\n')
    with pytest.raises(ConfigError, match="line 1 is not a triplet"):
        load_seed_triplets(bad)
    with pytest.raises(ConfigError, match="extreme_reward"):
        AZROptions.parse({"extreme_reward": "low"})


def test_a_run_without_buffer_runs_proposes_from_the_zero_triplet() -> None:
    import asyncio

    from rolegraph.graphs.azr.graph import AZR, prepare
    from rolegraph.graphs.base import RunParams

    planned = asyncio.run(prepare(None, RunParams(n=3, options={})))  # type: ignore[arg-type]
    (deduction, abduction, induction) = AZR.inputs(RunParams(n=3, options=planned))
    assert induction.state["program"] == "def f(a):\n    return a"
    assert deduction.state["references"][0]["output"] == '"Hello World"'
    assert abduction.state["fallback"]["type"] == "abduction"
