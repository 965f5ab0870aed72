"""bench/RESULTS.md, one section per bench: a bench rewrites only its own section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, text: str) -> None:
    """Replace the section that starts with the line `heading` by `text` (append it when there is none);
    every other section stays as it is."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Bench results\n"
    body = text.rstrip("\n") + "\n"
    start = current.find(heading + "\n")
    if start == -1:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + body)
        return
    end = current.find("\n## ", start + len(heading))
    rest = "" if end == -1 else "\n" + current[end + 1 :]
    RESULTS.write_text(current[:start] + body + rest)
