"""Unit tests of the trainer plumbing that needs no model: export validation, E-step selection, DPO pairs,
adapter versions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rolegraph.errors import TrainingError
from rolegraph.trainers.data import read_rows
from rolegraph.trainers.em import argmax, load_seeds, proposal_text, select_candidate
from rolegraph.trainers.grpo import StoreReward, extract_boxed, prompts_dataset
from rolegraph.trainers.pairs import ProblemRollouts, Rollout, build_pairs, keep_reason
from rolegraph.trainers.registry import AdapterRegistry, parse_lora_name
from tests.data import shared_file

PROMPT = [{"role": "user", "content": "What is 2+3?"}]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- exports ------------------------------------------------------------------------------------------
def test_empty_export_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.jsonl", [])
    with pytest.raises(TrainingError) as info:
        read_rows(path, "sft")
    assert str(path) in str(info.value) and "no rows" in str(info.value)
    assert "rolegraph export" in (info.value.hint or "")


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": PROMPT, "completion": [{"role": "assistant", "content": "5"}]})
    path = _write(tmp_path / "bad.jsonl", [good, "{not json"])
    with pytest.raises(TrainingError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        read_rows(path, "sft")


@pytest.mark.parametrize(
    ("method", "row", "message"),
    [
        ("sft", {"prompt": PROMPT}, "missing column"),
        ("dpo", {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "a"}]}, "rejected"),
        ("sft", {"prompt": [{"content": "x"}], "completion": "y"}, "without 'role'"),
        ("sft", {"prompt": PROMPT, "completion": []}, "non-empty list"),
        ("grpo", [1, 2], "expected a JSON object"),
    ],
)
def test_malformed_rows_are_rejected(tmp_path: Path, method: str, row: object, message: str) -> None:
    path = _write(tmp_path / "rows.jsonl", [json.dumps(row)])
    with pytest.raises(TrainingError, match=message):
        read_rows(path, method)


def test_missing_export_and_unknown_method(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl", "dpo")
    with pytest.raises(TrainingError, match="unknown training method"):
        read_rows(tmp_path / "nope.jsonl", "ppo")


def test_corrupt_parquet_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TrainingError, match="not a readable Parquet file"):
        read_rows(path, "sft")


def test_valid_export_reads(tmp_path: Path) -> None:
    row = {"prompt": PROMPT, "chosen": "\\boxed{5}", "rejected": "\\boxed{6}"}
    rows = read_rows(_write(tmp_path / "dpo.jsonl", [json.dumps(row)] * 3), "dpo")
    assert len(rows) == 3 and rows[0]["chosen"] == "\\boxed{5}"


# --- E-step selection ---------------------------------------------------------------------------------
def test_e_step_picks_the_argmax_with_a_deterministic_scorer() -> None:
    candidates = ["short", "a much longer rationale", "mid length"]

    async def score(text: str) -> float:
        return -abs(len(text) - 10)  # deterministic: closest to 10 characters wins

    best, scores = asyncio.run(select_candidate(candidates, score))
    assert scores == [-5, -13, 0]
    assert best == 2


def test_argmax_ties_and_nan() -> None:
    assert argmax([1.0, 3.0, 3.0]) == 1
    assert argmax([float("nan"), -2.0, -1.0]) == 2
    with pytest.raises(TrainingError):
        argmax([])


def test_proposal_text_is_the_proposer_format() -> None:
    text = proposal_text(" think ", "What is x?")
    assert text == "## Rationale\nthink\n## Problem\nWhat is x?"


def test_seeds_from_math500_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.jsonl", [json.dumps({"problem": "p1", "answer": "1"}), json.dumps({"problem": "p2"})]
    )
    seeds = load_seeds(path, limit=5)
    assert [s.problem for s in seeds] == ["p1", "p2"] and seeds[0].concepts == ()
    with pytest.raises(TrainingError, match="no 'problem'"):
        load_seeds(_write(tmp_path / "b.jsonl", [json.dumps({"question": "x"})]), limit=5)


# --- DPO pairs ----------------------------------------------------------------------------------------
def _problem(pid: str, passes: list[bool]) -> ProblemRollouts:
    rollouts = [Rollout(text=f"{pid}-{i}-{'ok' if ok else 'bad'}", passed=ok) for i, ok in enumerate(passes)]
    return ProblemRollouts(problem_id=pid, prompt=PROMPT, rollouts=rollouts)


def test_pairs_follow_the_filtering_rules() -> None:
    problems = [
        _problem("none", [False, False, False, False]),  # no pass → dropped
        _problem("easy", [True, True, True, False]),  # 3/4 > 1/2 → dropped
        _problem("half", [True, False, True, False]),  # 1/2 → kept
        _problem("hard", [False, True, False, False]),  # 1/4 → kept
        _problem("empty", []),
    ]
    rows, report = build_pairs(problems, max_pass_rate=0.5, max_pairs_per_problem=10)
    assert report.kept == ["half", "hard"]
    assert report.dropped == {"none": "no_pass", "easy": "too_easy", "empty": "no_rollouts"}
    assert len(rows) == 2 * 2 + 1 * 3
    for row in rows:
        assert row["chosen"][0]["content"].endswith("ok")
        assert row["rejected"][0]["content"].endswith("bad")
        assert row["prompt"] == PROMPT
    assert {r["problem_id"] for r in rows} == {"half", "hard"}


def test_pair_threshold_is_configurable_and_capped() -> None:
    easy = _problem("easy", [True, True, True, False])
    rows, report = build_pairs([easy], max_pass_rate=0.8, max_pairs_per_problem=2)
    assert report.kept == ["easy"] and len(rows) == 2
    assert keep_reason(_problem("all", [True, True]), 1.0) == "no_fail"


# --- GRPO rewards -------------------------------------------------------------------------------------
def test_grpo_reward_prefers_stored_then_verifier() -> None:
    rows = [
        {"prompt": PROMPT, "input": json.dumps({"answer": "5"}), "completion": "seen text", "reward": 0.25},
    ]
    reward = StoreReward(rows)
    dataset = prompts_dataset(rows)
    assert dataset[0]["answer"] == "5"
    completions = ["seen text", "so \\boxed{5}", "\\boxed{7}"]
    values = reward([PROMPT] * 3, completions, answer=["5"] * 3)
    assert values == [0.25, 1.0, 0.0]
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"


# --- adapter registry ---------------------------------------------------------------------------------
def _fake_adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_registry_publishes_increasing_versions_atomically(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    first = registry.publish("solver", _fake_adapter(registry.staging("solver")))
    second = registry.publish("solver", _fake_adapter(tmp_path / "elsewhere"))
    assert (first.version, second.version) == (1, 2)
    assert second.lora_name == "solver-v2" and second.path == tmp_path / "adapters" / "solver" / "v2"
    # A half-written temp dir is never listed as a version.
    (registry.role_dir("solver") / ".tmp-crashed").mkdir()
    assert [v.version for v in registry.versions("solver")] == [1, 2]
    assert registry.latest("solver") == second
    assert parse_lora_name("rationale_writer-v12") == ("rationale_writer", 12)
    assert parse_lora_name("smollm2-135m-instruct") is None
    with pytest.raises(TrainingError, match="holds no adapter"):
        registry.publish("solver", tmp_path)


# --- code rollouts (parsed on the host with ast only) -------------------------------------------------
def test_code_problems_are_recognised_and_programs_built() -> None:
    from rolegraph.trainers.code_rollouts import code_spec, extract_code, program_for

    humaneval = json.loads(shared_file("humaneval_dev.jsonl").read_text().splitlines()[0])
    spec = code_spec(humaneval)
    assert spec is not None and spec.kind == "unit" and spec.entry_point == "has_close_elements"
    codeforces = json.loads(shared_file("codeforces_dev.jsonl").read_text().splitlines()[0])
    stdio = code_spec(codeforces)
    assert stdio is not None and stdio.kind == "stdio" and stdio.stdio[0][0].startswith("10\n")
    assert code_spec({"problem": "What is 2+3?", "answer": "5"}) is None

    full = "Sure:\n```python\ndef has_close_elements(numbers, threshold):\n    return False\n```\nDone."
    assert extract_code(full).startswith("def has_close_elements")
    program = program_for(spec, full)
    assert program is not None and program.startswith(humaneval["prompt"])
    assert program.rstrip().endswith("return False")
    body = "    return True\n"  # a bare body continues the stub
    assert program_for(spec, body) == humaneval["prompt"] + body
    assert program_for(spec, "```python\ndef broken(:\n```") is None  # not Python: never run
    assert program_for(stdio, "print(1") is None


def test_selfplay_problem_file_mixes_math_and_code(tmp_path: Path) -> None:
    from rolegraph.trainers.selfplay import load_problems

    humaneval = shared_file("humaneval_dev.jsonl").read_text().splitlines()[0]
    path = _write(
        tmp_path / "p.jsonl", [json.dumps({"id": "m", "problem": "1+1?", "answer": "2"}), humaneval]
    )
    problems = load_problems(path, limit=5)
    assert [(p.id, p.kind) for p in problems] == [("m", "math"), ("HumanEval/0", "code")]
    assert problems[0].answer == "2"
    with pytest.raises(TrainingError, match=r"line 1 has no 'problem'"):
        load_problems(_write(tmp_path / "b.jsonl", [json.dumps({"question": "x"})]), limit=5)
    with pytest.raises(TrainingError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl", limit=5)


def test_loop_settings_per_trainer() -> None:
    from rolegraph.trainers.config import DPOSettings, GRPOSettings, SFTSettings
    from rolegraph.trainers.loop import default_settings

    assert isinstance(default_settings("sft"), SFTSettings)
    assert isinstance(default_settings("dpo"), DPOSettings)
    assert isinstance(default_settings("grpo"), GRPOSettings)
    with pytest.raises(TrainingError, match="unknown trainer 'ppo'"):
        default_settings("ppo")


# --- self-play verification against a teacher's majority (fake pool: no model needed) -----------------
def test_selfplay_uses_teacher_majority_when_a_problem_has_no_answer(tmp_path: Path) -> None:
    from rolegraph.trainers.selfplay import SelfPlay, SelfPlaySettings, load_problems
    from tests.runtime.fakes import FakePool

    problems = _write(tmp_path / "p.jsonl", [json.dumps({"id": "q", "problem": "What is 2+3?"})])
    teacher = ["\\boxed{5}", "so \\boxed{5}", "\\boxed{6}"]
    policy = ["\\boxed{5}", "\\boxed{7}", "no idea", "\\boxed{5}"]
    pool = FakePool({"judge": lambda m, s: teacher, "solver": lambda m, s: policy})
    settings = SelfPlaySettings(
        problems=problems, run_dir=tmp_path / "run", model_dir=tmp_path, teacher_role="judge"
    )
    play = SelfPlay(pool, settings)
    try:
        (problem,) = load_problems(problems, 5)
        group = asyncio.run(play.rollouts(problem))
        steps = {s.node: s for s in play.rec.store.steps()}
    finally:
        play.close()
    assert group is not None and [r.passed for r in group.rollouts] == [True, False, False, True]
    assert [r["majority_vote"] for r in steps["teacher"].rewards] == [1.0, 1.0, 0.0]
    assert [r["reward"] for r in steps["rollout"].rewards] == [1.0, 0.0, 0.0, 1.0]
    assert pool.clients["solver"].calls[0][1].n == 4  # n rollouts in one call
