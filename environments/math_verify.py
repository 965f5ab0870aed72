"""Math answer equivalence on top of the `math-verify` package; safe on any input (never raises).

math-verify guards parsing and comparison with `signal.alarm`, which only works in the main thread. We use its
timeouts there and turn them off elsewhere (worker threads), where a length cap keeps bad input cheap.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify

from rolegraph.errors import VerifierTimeoutError

T = TypeVar("T")

MAX_ANSWER_CHARS = 2000
"""Longer answers are not compared: sympy can take minutes on huge expressions."""
TIMEOUT_S = 3


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _as_latex(answer: str) -> str:
    """Bare answers (`\\frac{1}{2}`, `(3, \\pi)`) need math delimiters for math-verify's LaTeX extraction."""
    text = answer.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


@lru_cache(maxsize=4096)
def _parse(answer: str, timeout: int | None) -> tuple[Any, ...]:
    try:
        return tuple(_mv_parse(_as_latex(answer), parsing_timeout=timeout))
    except Exception:  # math-verify or sympy on garbage: treat as unparseable
        return ()


def parse_answer(answer: str | None) -> tuple[Any, ...]:
    """math-verify's parse of an answer (empty when unparseable, too long or None)."""
    if not answer or not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return ()
    return _parse(answer, _timeout())


def _equivalent(gold: tuple[Any, ...], pred: tuple[Any, ...]) -> bool:
    if not gold or not pred:
        return False
    try:
        return bool(_mv_verify(list(gold), list(pred), timeout_seconds=_timeout()))
    except Exception:
        return False


def verify(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted answer (or a text with `\\boxed{}`) matches the gold answer."""
    return _equivalent(parse_answer(gold), parse_answer(pred))


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """Symmetric equivalence of two answers; identical strings are equivalent even when unparseable."""
    if a is not None and b is not None and a.strip() == b.strip() and a.strip():
        return True
    return verify(a, b) or verify(b, a)


def majority_answer(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """The most common answer up to equivalence and its share of all answers (missing ones are lost votes).

    Returns (None, 0.0) when no answer was given.
    """
    given = [a for a in answers if a is not None and a.strip()]
    if not given:
        return None, 0.0
    classes: list[list[str]] = []
    for answer in given:
        for members in classes:
            if answers_equivalent(members[0], answer):
                members.append(answer)
                break
        else:
            classes.append([answer])
    best = max(classes, key=len)
    return best[0], len(best) / len(answers)


VERIFY_TIMEOUT_S = 20.0
"""Deadline for one math-verify check. math-verify's own timeouts only work in the main thread, and a
timeout there reads as a wrong answer; this one reads as an unknown verdict."""


async def verify_within(fn: Callable[[], T], timeout_s: float = VERIFY_TIMEOUT_S) -> T:
    """`fn()` (a math-verify check) in a worker thread, or VerifierTimeoutError after `timeout_s`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn), timeout_s)
    except TimeoutError:
        raise VerifierTimeoutError(
            f"math-verify gave no verdict within {timeout_s:.0f} s",
            "nothing to fix: the verdict is unknown, so it is left out of training and counted",
        ) from None
