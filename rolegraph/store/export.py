"""Exports of a run's steps: raw rows, and the conversational datasets TRL's SFT, DPO and GRPO trainers take.

Free-form fields (sampling, parsed output, rewards, environment requests) are JSON strings so every row has
the same schema in both JSONL and Parquet. Files are written to a temporary name and renamed into place.

The sft, dpo and grpo formats train on the run's declared training reward (`rolegraph.store.rewards`): DPO
pairs are ranked by it, GRPO rows carry it as `reward`, and SFT keeps only choices that have one. A choice
whose training reward is None (the infrastructure could not compute it) is left out and counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rolegraph.errors import RolegraphError
from rolegraph.store.db import Store
from rolegraph.store.records import EpisodeRecord, Step
from rolegraph.store.rewards import choice_rewards, step_training_reward

ExportFormat = Literal["raw", "sft", "dpo", "grpo"]
FORMATS: tuple[str, ...] = ("raw", "sft", "dpo", "grpo")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote, and how many choices it left out because their training reward was None."""

    rows: int
    no_reward: int = 0


def export_run(
    run_dir: Path | str,
    out: Path | str,
    *,
    fmt: str = "raw",
    role: str | None = None,
    kept_only: bool = False,
) -> ExportReport:
    """Write one export of the run in `run_dir` to `out` (.jsonl or .parquet)."""
    if fmt not in FORMATS:
        raise RolegraphError(f"unknown export format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise RolegraphError(
            f"cannot tell the file type of {out}", "name the output FILE.jsonl or FILE.parquet"
        )
    with Store(run_dir, create=False) as store:
        rows, no_reward = _rows_and_misses(store, fmt=fmt, role=role, kept_only=kept_only)
    if not rows:
        what = f" of role '{role}'" if role else ""
        kept = " in kept episodes" if kept_only else ""
        usable = (
            "no two completions of one prompt with different training rewards"
            if fmt == "dpo"
            else "no usable steps"
        )
        raise RolegraphError(
            f"no {fmt} rows to export from {run_dir}: {usable}{what}{kept}",
            "check `rolegraph runs show RUN_DIR` for roles and kept episodes, or drop --role/--kept-only",
        )
    write_rows(rows, out)
    return ExportReport(rows=len(rows), no_reward=no_reward)


def build_rows(
    store: Store, *, fmt: str = "raw", role: str | None = None, kept_only: bool = False
) -> list[dict[str, Any]]:
    """The rows of one export format, without writing them."""
    return _rows_and_misses(store, fmt=fmt, role=role, kept_only=kept_only)[0]


def _rows_and_misses(
    store: Store, *, fmt: str, role: str | None, kept_only: bool
) -> tuple[list[dict[str, Any]], int]:
    episodes = {e.id: e for e in store.episodes()}
    if fmt == "raw":
        steps = store.steps(role=role, kept_only=kept_only)
        return [_raw_row(s, episodes.get(s.episode_id)) for s in steps], 0
    run = store.run()
    scorer = _Scorer(episodes, run.rewards if run else [])
    steps = [
        s for s in store.steps(role=role, kind="role", kept_only=kept_only, finished_only=True) if not s.error
    ]
    if fmt == "sft":
        rows = _sft_rows(steps, scorer)
    elif fmt == "dpo":
        rows = _dpo_rows(steps, scorer)
    else:
        rows = _grpo_rows(steps, scorer)
    return rows, scorer.misses


class _Scorer:
    """Training rewards of choices, counting those that are None."""

    def __init__(self, episodes: Mapping[str, EpisodeRecord], declared: Sequence[Mapping[str, Any]]) -> None:
        self.episodes = episodes
        self.declared = declared
        self.misses = 0

    def __call__(self, step: Step, index: int) -> float | None:
        value = step_training_reward(step, index, self.episodes.get(step.episode_id), self.declared)
        if value is None:
            self.misses += 1
        return value


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """Write rows atomically as JSONL or Parquet (chosen by the file suffix)."""
    table = pa.Table.from_pylist(rows)  # one schema for all rows, or a clear error before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if out.suffix.lower() == ".parquet":
            pq.write_table(table, tmp)
        else:
            with tmp.open("w", encoding="utf-8") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# --- formats --------------------------------------------------------------------------------------------
def _messages(step: Step) -> list[dict[str, str]]:
    return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in step.messages]


def _prompt_and_prefix(step: Step) -> tuple[list[dict[str, str]], str]:
    """Split off a prefilled assistant message: roles may start the answer (e.g. `## Rationale`) and the
    model continues it, so for training the prefix belongs to the completion, not the prompt."""
    messages = _messages(step)
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def _raw_row(step: Step, episode: EpisodeRecord | None) -> dict[str, Any]:
    return {
        "step_id": step.id,
        "episode_id": step.episode_id,
        "attempt": step.attempt,
        "kind": step.kind,
        "node": step.node,
        "role": step.role,
        "endpoint": step.endpoint,
        "model": step.model,
        "sampling": json.dumps(step.sampling),
        "messages": _messages(step),
        "completions": [c.text for c in step.choices],
        "finish_reasons": [c.finish_reason for c in step.choices],
        "token_ids": [c.token_ids or [] for c in step.choices],
        "logprobs": [c.logprobs or [] for c in step.choices],
        "parsed": json.dumps([c.parsed for c in step.choices]),
        "parse_errors": [c.parse_error for c in step.choices],
        "prompt_token_ids": step.prompt_token_ids or [],
        "prompt_tokens": step.prompt_tokens,
        "completion_tokens": step.completion_tokens,
        "latency_s": step.latency_s,
        "error": step.error,
        "rewards": json.dumps(step.rewards),
        "metrics": json.dumps(step.metrics),
        "error_kind": step.error_kind,
        "request": json.dumps(step.request),
        "response": json.dumps(step.response, default=str),
        "started_at": step.started_at,
        "episode_kept": None if episode is None else episode.kept,
    }


def _good_choices(step: Step) -> Iterable[tuple[int, str]]:
    """Choices that parsed (the others are not worth training on)."""
    for index, choice in enumerate(step.choices):
        if choice.parse_error is None and choice.text.strip():
            yield index, choice.text


def _sft_rows(steps: list[Step], scorer: _Scorer) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        prompt, prefix = _prompt_and_prefix(step)
        for index, text in _good_choices(step):
            if scorer(step, index) is None:
                continue
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": prefix + text}]})
    return rows


def _dpo_rows(steps: list[Step], scorer: _Scorer) -> list[dict[str, Any]]:
    """Pairs of completions of the same prompt: the best against the worst, then the next best and worst."""
    groups: dict[str, list[tuple[float, str]]] = {}
    prompts: dict[str, list[dict[str, str]]] = {}
    for step in steps:
        messages, prefix = _prompt_and_prefix(step)
        key = json.dumps(messages, sort_keys=True)
        prompts[key] = messages
        for index, text in _good_choices(step):
            reward = scorer(step, index)
            if reward is not None:
                groups.setdefault(key, []).append((reward, prefix + text))
    rows: list[dict[str, Any]] = []
    for key, candidates in groups.items():
        ranked = sorted(candidates, key=lambda c: -c[0])
        for i in range(len(ranked) // 2):
            (best, chosen), (worst, rejected) = ranked[i], ranked[-1 - i]
            if best <= worst or chosen == rejected:
                break
            rows.append(
                {
                    "prompt": prompts[key],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                    "score_chosen": best,
                    "score_rejected": worst,
                }
            )
    return rows


def _grpo_rows(steps: list[Step], scorer: _Scorer) -> list[dict[str, Any]]:
    """One row per distinct prompt: the mean training reward (`reward`) and one `reward_<name>` per name."""
    grouped: dict[str, dict[str, Any]] = {}
    for step in steps:
        messages = _messages(step)
        key = json.dumps(messages, sort_keys=True)
        episode = scorer.episodes.get(step.episode_id)
        entry = grouped.setdefault(
            key,
            {
                "prompt": messages,
                "role": step.role,
                "episode_id": step.episode_id,
                "input": json.dumps(episode.input if episode else {}, default=str),
                "_train": [],
                "_named": [],
            },
        )
        for index in range(max(len(step.choices), 1)):
            entry["_train"].append(scorer(step, index))
            entry["_named"].append(choice_rewards(step, index, episode))
    names = sorted({name for e in grouped.values() for r in e["_named"] for name in r})
    rows = []
    for entry in grouped.values():
        train = [v for v in entry.pop("_train") if v is not None]
        named: list[dict[str, float | None]] = entry.pop("_named")
        entry["reward"] = sum(train) / len(train) if train else None
        for name in names:
            values = [v for r in named if (v := r.get(name)) is not None]
            entry[f"reward_{name}"] = sum(values) / len(values) if values else None
        rows.append(entry)
    return rows
