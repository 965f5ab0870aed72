"""Load and validate the store's exports (JSONL or Parquet) as TRL conversational datasets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset

from rolegraph.errors import TrainingError

REQUIRED: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "grpo": ("prompt",),
}
"""Columns each method needs; the other columns of a row are kept (e.g. GRPO reward columns)."""

_MESSAGE_COLUMNS = ("prompt", "completion", "chosen", "rejected")


def _fix(method: str) -> str:
    return f"re-create it with `rolegraph export RUN_DIR --format {method} --out FILE`"


def read_rows(path: Path | str, method: str) -> list[dict[str, Any]]:
    """Read an export file into validated rows; any problem is a one-line TrainingError naming the file."""
    path = Path(path)
    if method not in REQUIRED:
        raise TrainingError(f"unknown training method '{method}'", "use one of: sft, dpo, grpo")
    if not path.is_file():
        raise TrainingError(f"export file {path} does not exist", _fix(method))
    rows = _read_parquet(path, method) if path.suffix == ".parquet" else _read_jsonl(path, method)
    if not rows:
        raise TrainingError(
            f"export file {path} has no rows", f"{_fix(method)} from a run with finished episodes"
        )
    for number, row in enumerate(rows, start=1):
        validate_row(row, method, where=f"{path}: row {number}")
    return rows


def validate_row(row: Any, method: str, *, where: str) -> None:
    """Check one row has the method's columns, each a message list (or plain text) that is not empty."""
    if not isinstance(row, dict):
        raise TrainingError(f"{where}: expected a JSON object, got {type(row).__name__}", _fix(method))
    missing = [name for name in REQUIRED[method] if name not in row]
    if missing:
        raise TrainingError(f"{where}: missing column(s) {', '.join(missing)} for {method}", _fix(method))
    for name in _MESSAGE_COLUMNS:
        if name in row:
            _check_messages(row[name], f"{where}: column '{name}'", method)


def _check_messages(value: Any, where: str, method: str) -> None:
    if isinstance(value, str):
        if not value.strip():
            raise TrainingError(f"{where} is empty", _fix(method))
        return
    if not isinstance(value, list) or not value:
        raise TrainingError(f"{where} must be a non-empty list of chat messages or a string", _fix(method))
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and "content" in message):
            raise TrainingError(f"{where} holds a message without 'role' and 'content'", _fix(method))


def jsonl_values(path: Path, fix: str) -> list[tuple[int, Any]]:
    """The parsed non-blank lines of a JSONL file with their line numbers; `fix` ends every error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TrainingError(f"{path} is not UTF-8 text (JSONL expected)", fix) from None
    values: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}: line {number} is not valid JSON ({exc.msg})", fix) from None
    return values


def _read_jsonl(path: Path, method: str) -> list[dict[str, Any]]:
    return [row for _, row in jsonl_values(path, _fix(method))]


def _read_parquet(path: Path, method: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(path).to_pylist())
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise TrainingError(
            f"{path}: not a readable Parquet file ({type(exc).__name__})", _fix(method)
        ) from None


def to_dataset(rows: Iterable[dict[str, Any]], method: str) -> Dataset:
    """Rows → a datasets.Dataset keeping only what the TRL trainer reads (plus GRPO's extra columns)."""
    rows = list(rows)
    keep = sorted({key for row in rows for key in row}) if method == "grpo" else list(REQUIRED[method])
    return Dataset.from_list([{key: row.get(key) for key in keep} for row in rows])


def load_export(path: Path | str, method: str) -> Dataset:
    """Read, validate and convert an export file in one call."""
    return to_dataset(read_rows(path, method), method)


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write rows as JSONL through a temp file, so a crash never leaves a half-written export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
