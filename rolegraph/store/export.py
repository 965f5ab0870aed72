"""Exports of a run's steps: raw rows, and the conversational datasets TRL's SFT, DPO and GRPO trainers take.

Free-form fields (sampling, parsed output, rewards, environment requests) are JSON strings so every row has
the same schema in both JSONL and Parquet. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rolegraph.errors import RolegraphError
from rolegraph.store.db import Store
from rolegraph.store.records import EpisodeRecord, StepRecord

ExportFormat = Literal["raw", "sft", "dpo", "grpo"]
FORMATS: tuple[str, ...] = ("raw", "sft", "dpo", "grpo")


def export_run(
    run_dir: Path | str,
    out: Path | str,
    *,
    fmt: str = "raw",
    role: str | None = None,
    kept_only: bool = False,
) -> int:
    """Write one export of the run in `run_dir` to `out` (.jsonl or .parquet); returns the row count."""
    if fmt not in FORMATS:
        raise RolegraphError(f"unknown export format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise RolegraphError(
            f"cannot tell the file type of {out}", "name the output FILE.jsonl or FILE.parquet"
        )
    with Store(run_dir, create=False) as store:
        rows = build_rows(store, fmt=fmt, role=role, kept_only=kept_only)
    if not rows:
        what = f" of role '{role}'" if role else ""
        kept = " in kept episodes" if kept_only else ""
        usable = (
            "no two completions of one prompt with different rewards" if fmt == "dpo" else "no usable steps"
        )
        raise RolegraphError(
            f"no {fmt} rows to export from {run_dir}: {usable}{what}{kept}",
            "check `rolegraph runs show RUN_DIR` for roles and kept episodes, or drop --role/--kept-only",
        )
    write_rows(rows, out)
    return len(rows)


def build_rows(
    store: Store, *, fmt: str = "raw", role: str | None = None, kept_only: bool = False
) -> list[dict[str, Any]]:
    """The rows of one export format, without writing them."""
    episodes = {e.id: e for e in store.episodes()}
    if fmt == "raw":
        steps = store.steps(role=role, kept_only=kept_only)
        return [_raw_row(s, episodes.get(s.episode_id)) for s in steps]
    steps = [
        s for s in store.steps(role=role, kind="role", kept_only=kept_only, finished_only=True) if not s.error
    ]
    if fmt == "sft":
        return _sft_rows(steps)
    if fmt == "dpo":
        return _dpo_rows(steps, episodes)
    return _grpo_rows(steps, episodes)


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
def _messages(step: StepRecord) -> list[dict[str, str]]:
    return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in step.messages]


def _prompt_and_prefix(step: StepRecord) -> tuple[list[dict[str, str]], str]:
    """Split off a prefilled assistant message: roles may start the answer (e.g. `## Rationale`) and the
    model continues it, so for training the prefix belongs to the completion, not the prompt."""
    messages = _messages(step)
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def _raw_row(step: StepRecord, episode: EpisodeRecord | None) -> dict[str, Any]:
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
        "request": json.dumps(step.request),
        "response": json.dumps(step.response, default=str),
        "started_at": step.started_at,
        "episode_kept": None if episode is None else episode.kept,
    }


def _good_choices(step: StepRecord) -> Iterable[tuple[int, str]]:
    """Choices that parsed (the others are not worth training on)."""
    for index, choice in enumerate(step.choices):
        if choice.parse_error is None and choice.text.strip():
            yield index, choice.text


def _sft_rows(steps: list[StepRecord]) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        prompt, prefix = _prompt_and_prefix(step)
        for _, text in _good_choices(step):
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": prefix + text}]})
    return rows


def choice_reward(step: StepRecord, index: int, episode: EpisodeRecord | None) -> dict[str, float]:
    """A choice's rewards: those recorded on the step, else its episode's outcome rewards."""
    if step.rewards and index < len(step.rewards) and step.rewards[index]:
        return step.rewards[index]
    if episode is not None and episode.rewards:
        return episode.rewards
    if episode is not None and episode.kept is not None:
        return {"kept": 1.0 if episode.kept else 0.0}
    return {}


def scalar_reward(rewards: dict[str, float]) -> float:
    """The value DPO ranks by: the `reward` entry when there is one, else the sum of all entries."""
    if "reward" in rewards:
        return float(rewards["reward"])
    return float(sum(rewards.values()))


def _dpo_rows(steps: list[StepRecord], episodes: dict[str, EpisodeRecord]) -> list[dict[str, Any]]:
    """Pairs of completions of the same prompt: the best against the worst, then the next best and worst."""
    groups: dict[str, list[tuple[float, str]]] = {}
    prompts: dict[str, list[dict[str, str]]] = {}
    for step in steps:
        messages, prefix = _prompt_and_prefix(step)
        key = json.dumps(messages, sort_keys=True)
        prompts[key] = messages
        for index, text in _good_choices(step):
            reward = scalar_reward(choice_reward(step, index, episodes.get(step.episode_id)))
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


def _grpo_rows(steps: list[StepRecord], episodes: dict[str, EpisodeRecord]) -> list[dict[str, Any]]:
    """One row per distinct prompt with its mean rewards (`reward` plus one `reward_<name>` per name)."""
    grouped: dict[str, dict[str, Any]] = {}
    for step in steps:
        messages = _messages(step)
        key = json.dumps(messages, sort_keys=True)
        episode = episodes.get(step.episode_id)
        entry = grouped.setdefault(
            key,
            {
                "prompt": messages,
                "role": step.role,
                "episode_id": step.episode_id,
                "input": json.dumps(episode.input if episode else {}, default=str),
                "_rewards": [],
            },
        )
        for index in range(max(len(step.choices), 1)):
            entry["_rewards"].append(choice_reward(step, index, episode))
    names = sorted({name for e in grouped.values() for r in e["_rewards"] for name in r})
    rows = []
    for entry in grouped.values():
        rewards: list[dict[str, float]] = entry.pop("_rewards")
        scalars = [scalar_reward(r) for r in rewards if r]
        entry["reward"] = sum(scalars) / len(scalars) if scalars else None
        for name in names:
            values = [r[name] for r in rewards if name in r]
            entry[f"reward_{name}"] = sum(values) / len(values) if values else None
        rows.append(entry)
    return rows
