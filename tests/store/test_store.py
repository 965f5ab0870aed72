"""The trajectory store and its exports (JSONL and Parquet that `datasets` loads)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from datasets import load_dataset

from rolegraph.errors import RolegraphError
from rolegraph.serving.types import Choice
from rolegraph.store import Step, Store, export_run

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]


def _fill(run_dir: Path) -> None:
    """Two finished episodes (one kept), each with a 3-choice solver step; rewards on episode a's choices."""
    with Store(run_dir) as store:
        store.start_run(
            "toy", {"endpoints": {}}, seed=7, params={"n": 2}, rewards=[{"name": "correct", "train": True}]
        )
        for episode, kept in (("a", True), ("b", False)):
            store.begin_episode(episode, {"problem": "2+3"})
            step = store.record_step(
                Step(
                    id=0,
                    episode_id=episode,
                    attempt=1,
                    kind="role",
                    node="solve",
                    role="solver",
                    started_at=1.0,
                    endpoint="local",
                    model="smollm2-135m-instruct",
                    sampling={"n": 3, "temperature": 0.7},
                    messages=PROMPT,
                    choices=[
                        Choice(text="\\boxed{5}", token_ids=[1, 2], parsed={"answer": "5"}),
                        Choice(text="\\boxed{6}", token_ids=[3], parsed={"answer": "6"}),
                        Choice(text="no idea", parse_error="no boxed answer"),
                    ],
                    prompt_tokens=12,
                    completion_tokens=9,
                    latency_s=0.5,
                )
            )
            if episode == "a":
                store.add_rewards(step.id, [{"correct": 1.0}, {"correct": 0.0}, {"correct": 0.0}])
            store.record_step(
                Step(
                    id=0,
                    episode_id=episode,
                    attempt=1,
                    kind="env",
                    node="verify",
                    role="math_verify",
                    started_at=2.0,
                    request={"answer": "5"},
                    response={"ok": True},
                )
            )
            store.finish_episode(
                episode,
                {"answer": "5"},
                kept=kept,
                reason=None if kept else "wrong",
                rewards={"correct": float(kept)},
                metrics={"tokens": 900.0},
            )


def test_store_round_trip_and_counts(tmp_path: Path) -> None:
    _fill(tmp_path)
    with Store(tmp_path, create=False) as store:
        assert store.run() is not None and store.run().seed == 7  # type: ignore[union-attr]
        assert store.counts() == {"running": 0, "finished": 2, "failed": 0, "kept": 1, "rejected": 1}
        assert store.rejection_reasons() == {"wrong": 1}
        steps = store.steps(episode_id="a")
        assert [s.kind for s in steps] == ["role", "env"]
        assert steps[0].choices[0].parsed == {"answer": "5"} and steps[0].choices[2].parse_error
        assert steps[0].rewards == [{"correct": 1.0}, {"correct": 0.0}, {"correct": 0.0}]
        assert steps[1].response == {"ok": True}
        assert store.usage_by_role() == {"solver": {"calls": 2, "prompt_tokens": 24, "completion_tokens": 18}}
        assert store.integrity_check() == "ok"
    db = sqlite3.connect(tmp_path / "store.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_run_dir_keeps_its_graph(tmp_path: Path) -> None:
    _fill(tmp_path)
    with Store(tmp_path) as store, pytest.raises(RolegraphError, match="holds a run of graph 'toy'"):
        store.start_run("other", {}, 0, {})


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RolegraphError, match="holds no rolegraph run"):
        Store(tmp_path / "nowhere", create=False)


def test_training_runs_are_recorded(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = store.record_training(
            trainer="sft",
            inputs=[tmp_path / "run"],
            hyperparams={"lr": 1e-4, "steps": 2},
            metrics={"loss": 1.5},
            adapter_name="solver-sft",
            adapter_version="v1",
            adapter_path=tmp_path / "adapters" / "v1",
        )
        (record,) = store.training_runs()
    assert record.id == run_id and record.adapter_version == "v1" and record.metrics == {"loss": 1.5}
    assert record.inputs == [str(tmp_path / "run")]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_exports_load_in_datasets(tmp_path: Path, suffix: str) -> None:
    _fill(tmp_path)
    loader = "json" if suffix == "jsonl" else "parquet"

    def load(fmt: str, **kwargs: object) -> list[dict]:
        out = tmp_path / f"{fmt}.{suffix}"
        report = export_run(tmp_path, out, fmt=fmt, **kwargs)  # type: ignore[arg-type]
        rows = list(load_dataset(loader, data_files=str(out), split="train"))
        assert len(rows) == report.rows and report.no_reward == 0
        return rows

    raw = load("raw")
    assert len(raw) == 4 and {r["kind"] for r in raw} == {"role", "env"}
    assert raw[0]["completions"] == ["\\boxed{5}", "\\boxed{6}", "no idea"] and raw[0]["messages"] == PROMPT

    sft = load("sft", role="solver")
    assert len(sft) == 4  # two parsed choices in each of two episodes; the unparsed one is left out
    assert sft[0]["prompt"] == PROMPT and sft[0]["completion"] == [
        {"role": "assistant", "content": "\\boxed{5}"}
    ]
    assert len(load("sft", kept_only=True)) == 2

    dpo = load("dpo")
    # episode a's step rewards rank \boxed{5} over \boxed{6}; episode b falls back to its outcome reward (0)
    assert (
        dpo[0]["chosen"][0]["content"] == "\\boxed{5}" and dpo[0]["score_chosen"] > dpo[0]["score_rejected"]
    )
    assert all(r["prompt"] == PROMPT for r in dpo)

    grpo = load("grpo")
    assert len(grpo) == 1 and grpo[0]["prompt"] == PROMPT  # one row per distinct prompt
    assert grpo[0]["reward_correct"] == pytest.approx(1 / 6)


def test_failed_export_leaves_the_existing_file_alone(tmp_path: Path) -> None:
    _fill(tmp_path)
    out = tmp_path / "sft.jsonl"
    out.write_text("precious\n")
    with pytest.raises(RolegraphError, match="no sft rows"):
        export_run(tmp_path, out, fmt="sft", role="nobody")
    assert out.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sft")] == []


def test_prefilled_assistant_text_moves_from_prompt_to_completion(tmp_path: Path) -> None:
    """A prefilled role trains on prefix + continuation; the prefix leaves the prompt."""
    prefill = [*PROMPT, {"role": "assistant", "content": "## Rationale\n"}]
    with Store(tmp_path) as store:
        store.start_run("toy", {"endpoints": {}}, seed=0, params={"n": 1})
        store.begin_episode("a", {})
        step = store.record_step(
            Step(
                id=0,
                episode_id="a",
                attempt=1,
                kind="role",
                node="propose",
                role="proposer",
                started_at=1.0,
                messages=prefill,
                choices=[Choice(text="think\n## Problem\nX", parsed={"problem": "X"})],
            )
        )
        store.add_rewards(step.id, [{"reward": 1.0}])
        store.finish_episode("a", {}, kept=True)
    out = tmp_path / "sft.jsonl"
    export_run(tmp_path, out, fmt="sft")
    row = load_dataset("json", data_files=str(out), split="train")[0]
    assert row["prompt"] == PROMPT
    assert row["completion"] == [{"role": "assistant", "content": "## Rationale\nthink\n## Problem\nX"}]


def _step(episode: str, choices: list[str], **fields: object) -> Step:
    return Step(
        id=0,
        episode_id=episode,
        attempt=1,
        kind="role",
        node="solve",
        role="solver",
        messages=PROMPT,
        choices=[Choice(text=t, parsed={"answer": t}) for t in choices],
        **fields,  # type: ignore[arg-type]
    )


def test_exports_train_on_the_declared_reward_and_count_none(tmp_path: Path) -> None:
    """Only `train` rewards rank DPO pairs (a large undeclared number does not), and a None reward is left
    out of training and counted, never read as 0."""
    declared = [{"name": "correct", "weight": 2.0, "train": True}, {"name": "length", "train": False}]
    with Store(tmp_path) as store:
        store.start_run("toy", {}, seed=0, params={}, rewards=declared)
        store.begin_episode("a", {})
        step = store.record_step(_step("a", ["A", "B", "C", "D"]))
        store.add_rewards(
            step.id,
            [
                {"correct": 0.0, "length": 900.0},
                {"correct": 1.0, "length": 10.0},
                {"correct": None, "length": 500.0},
                {"correct": 0.5, "length": 5.0},
            ],
        )
        store.finish_episode("a", {}, kept=True)
        assert store.missing_rewards() == {"correct": 1}
    out = tmp_path / "dpo.jsonl"
    report = export_run(tmp_path, out, fmt="dpo")
    assert report.no_reward == 1
    rows = list(load_dataset("json", data_files=str(out), split="train"))
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("B", "A")]
    assert (rows[0]["score_chosen"], rows[0]["score_rejected"]) == (2.0, 0.0)
    sft = export_run(tmp_path, tmp_path / "sft.jsonl", fmt="sft")
    assert (sft.rows, sft.no_reward) == (3, 1)
    grpo_out = tmp_path / "grpo.jsonl"
    export_run(tmp_path, grpo_out, fmt="grpo")
    (grpo,) = load_dataset("json", data_files=str(grpo_out), split="train")
    assert grpo["reward"] == pytest.approx((0.0 + 2.0 + 1.0) / 3)


def test_resume_supersedes_steps_of_tasks_that_never_completed(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.start_run("toy", {}, seed=0, params={})
        store.begin_episode("a", {})
        store.record_step(_step("a", ["done"], checkpoint="task-1"))
        store.record_step(_step("a", ["cut off"], checkpoint="task-2"))
        assert store.begin_episode("a", {}) == 2
        assert store.supersede_interrupted("a", 2, completed={"task-1"}) == 1
        assert [s.texts for s in store.steps(episode_id="a")] == [["done"]]
        assert store.begin_episode("a", {}) == 3
        assert store.supersede_interrupted("a", 3, completed=None) == 1  # a restart from scratch
        assert store.steps(episode_id="a") == []
        assert len(store.steps(episode_id="a", include_superseded=True)) == 2
