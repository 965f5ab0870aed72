"""PromptCoT 1.0's verdict rule."""

from __future__ import annotations

import pytest

from rolegraph.agents.parsers import CRITERIA, verdict_from_criteria
from rolegraph.errors import ParseError


def _ratings(**changes: str) -> dict[str, str]:
    ratings = dict.fromkeys(CRITERIA, "perfect")
    ratings.update(changes)
    return ratings


def test_all_perfect_is_perfect() -> None:
    assert verdict_from_criteria(_ratings()) == "perfect"  # type: ignore[arg-type]


def test_any_bad_is_bad() -> None:
    for name in CRITERIA:
        assert verdict_from_criteria(_ratings(**{name: "bad"})) == "bad"  # type: ignore[arg-type]
    assert verdict_from_criteria({"format": "bad"}) == "bad"  # bad even when others are missing


def test_core_criteria_must_be_perfect() -> None:
    assert verdict_from_criteria(_ratings(solvability="acceptable")) == "acceptable"  # type: ignore[arg-type]
    assert verdict_from_criteria(_ratings(factual_accuracy="acceptable")) == "acceptable"  # type: ignore[arg-type]


def test_two_of_three_others_perfect() -> None:
    one_off = _ratings(format="acceptable")
    two_off = _ratings(format="acceptable", concept_coverage="acceptable")
    assert verdict_from_criteria(one_off) == "perfect"  # type: ignore[arg-type]
    assert verdict_from_criteria(two_off) == "acceptable"  # type: ignore[arg-type]
    assert verdict_from_criteria(one_off, "strict") == "acceptable"  # type: ignore[arg-type]


def test_missing_criteria_without_bad_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="solvability"):
        verdict_from_criteria({name: "perfect" for name in CRITERIA if name != "solvability"})  # type: ignore[misc]
