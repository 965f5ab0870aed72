"""Trusted host-side functions that the specs of these tests call as `python` env nodes."""

from __future__ import annotations

import asyncio


def score(answer: str | None, bonus: int = 0) -> dict[str, object]:
    """A number from an answer (its digits), plus a fixed bonus from the node's params."""
    digits = "".join(c for c in str(answer or "") if c.isdigit())
    return {"score": (int(digits) if digits else 0) + bonus, "even": bool(digits) and int(digits) % 2 == 0}


async def shout(text: str | None) -> str:
    """An async function returning a plain value (it lands under `value`)."""
    await asyncio.sleep(0)
    return str(text).upper()


def numbers(answers: list[str] | None) -> dict[str, list[object]]:
    """Per answer: its number, whether it is even, whether it is odd."""
    values = [score(a)["score"] for a in answers or []]
    return {
        "scores": values,
        "evens": [v % 2 == 0 for v in values],  # type: ignore[operator]
        "odds": [v % 2 == 1 for v in values],  # type: ignore[operator]
    }
