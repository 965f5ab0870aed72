"""Unit tests of the trainer plumbing that needs no model: export validation, DPO pairs, adapter versions,
periodic-mode checks. (EM's units are in test_em_units.py, self-play's graph in test_selfplay_graph.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rolegraph.errors import ConfigError, TrainingError
from rolegraph.trainers.data import read_rows
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
    assert (
        second.lora_name == f"solver-v2-{second.id}"
        and second.path == tmp_path / "adapters" / "solver" / "v2"
    )
    assert first.id != second.id  # names are never reused, even where a version number repeats
    # A half-written temp dir is never listed as a version.
    (registry.role_dir("solver") / ".tmp-crashed").mkdir()
    assert [v.version for v in registry.versions("solver")] == [1, 2]
    assert registry.latest("solver") == second
    assert parse_lora_name("rationale_writer-v12-0123abcd") == ("rationale_writer", 12)
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


def test_periodic_checks_its_role_and_options_before_the_graph_runs(tmp_path: Path) -> None:
    from rolegraph.trainers.loop import LoopSettings, periodic

    class NoPool:
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"the loop used the pool ({name}) before checking its settings")

    def settings(role: str = "solver", options: dict[str, object] | None = None) -> LoopSettings:
        run_dir = tmp_path / "run"
        return LoopSettings("promptcot", run_dir, tmp_path, role=role, options=dict(options or {}))

    with pytest.raises(ConfigError, match="graph 'promptcot' has no role 'critic'"):
        asyncio.run(periodic(NoPool(), settings(role="critic")))
    with pytest.raises(ConfigError, match="no option 'colour'"):
        asyncio.run(periodic(NoPool(), settings(options={"colour": "red"})))
    assert not (tmp_path / "run").exists()  # nothing was started


def test_training_on_a_gpu_torch_cannot_see_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rolegraph.trainers.config import DPOSettings, check_device

    check_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU") as info:
        check_device("gpu")
    assert info.value.hint is not None and "--device cpu" in info.value.hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_device("gpu")
    kwargs = DPOSettings(device="gpu", bf16=True).common_trl_kwargs(Path("out"))
    assert kwargs["use_cpu"] is False and kwargs["bf16"] is True
