"""The math verifier on real MATH-500 answers; never raises on garbage, works off the main thread."""

from __future__ import annotations

import json
import re
import threading

import pytest

from rolegraph.environments.math_verify import answers_equivalent, majority_answer, verify
from rolegraph.graphs.promptcot.concepts import DEFAULT_SEEDS

ROWS = [json.loads(line) for line in DEFAULT_SEEDS.read_text().splitlines() if line.strip()][:60]


def _mutate(answer: str) -> str | None:
    match = re.search(r"\d", answer)
    if match is None:
        return None
    digit = str((int(match.group()) + 3) % 10)
    return answer[: match.start()] + digit + answer[match.end() :]


def test_answers_verify_against_themselves_and_their_solutions() -> None:
    for row in ROWS:
        assert verify(row["answer"], row["answer"]), row["answer"]
        assert verify(row["solution"], row["answer"]), row["answer"]  # the \boxed{} in the solution


def test_mutated_answers_do_not_verify() -> None:
    mutated = [(row["answer"], _mutate(row["answer"])) for row in ROWS]
    checked = [(a, m) for a, m in mutated if m is not None]
    assert len(checked) >= 30
    for answer, wrong in checked:
        assert not verify(wrong, answer), (answer, wrong)


def test_equivalence_and_majority() -> None:
    assert answers_equivalent(r"\frac{1}{2}", "0.5")
    assert not answers_equivalent("2", "3")
    assert majority_answer([r"\frac12", "0.5", "3", None]) == (r"\frac12", 0.5)
    assert majority_answer([None, None]) == (None, 0.0)
    assert majority_answer([]) == (None, 0.0)


@pytest.mark.parametrize("garbage", ["", "}{", "\\frac{", "$$$", "a" * 5000, "2^{2^{2^{99}}}", "\x00\x01"])
def test_garbage_never_raises(garbage: str) -> None:
    assert verify(garbage, "1") in (True, False)
    assert answers_equivalent(garbage, garbage + "x") in (True, False)
    assert verify(None, "1") is False


def test_works_in_worker_threads() -> None:
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(verify(r"\frac{1}{2}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]
