"""Parsers: examples for each format, and arbitrary text never raises anything but ParseError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolegraph.agents.parsers import (
    PARSERS,
    last_boxed,
    parse_boxed,
    parse_fields,
    parse_json,
    parse_list,
    parse_problem,
    parse_proposal,
    parse_rationale,
    parse_text,
    parse_verdict,
)
from rolegraph.errors import ParseError

FRAGMENTS = st.sampled_from(
    [
        "\\boxed{",
        "}",
        "{",
        "\\boxed{\\frac{1}{2}}",
        "## Problem",
        "## Rationale",
        "<problem>",
        "</problem>",
        "<rationale>",
        "Final Judgement:",
        "Format: Perfect",
        "Solvability: bad",
        "1. ",
        "- ",
        "\n",
        ",",
        "[",
        "]",
        '"',
        "```json\n",
        "```",
        "answer is ",
        "<!-- BEGIN PROBLEM -->",
        "Knowledge Point:",
        "$",
        "\\",
    ]
)
TEXTS = st.one_of(
    st.text(max_size=400), st.lists(st.one_of(FRAGMENTS, st.text(max_size=12)), max_size=40).map("".join)
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_parsers_raise_only_parse_error(name: str, text: str) -> None:
    try:
        result = PARSERS[name](text)
    except ParseError as exc:
        assert "\n" not in exc.message
    else:
        assert isinstance(result, dict)


def test_boxed_keeps_nested_braces_and_takes_the_last() -> None:
    text = (
        r"First \boxed{1}. Finally $\boxed{\left( 3, \frac{\pi}{2} \right)}$ and \boxed{\frac{\sqrt{2}}{2}}"
    )
    assert parse_boxed(text) == {"answer": r"\frac{\sqrt{2}}{2}", "source": "boxed"}
    assert last_boxed(r"\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed(r"\boxed{unclosed {") is None


def test_boxed_falls_back_to_answer_phrase() -> None:
    assert parse_boxed("So the answer is 5.")["answer"] == "5"
    assert parse_boxed("The answer to this problem is 12.") == {"answer": "12", "source": "phrase"}
    with pytest.raises(ParseError, match="boxed"):
        parse_boxed("I do not know.")


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("1. Pythagorean theorem\n2. Area of a circle\n3) Modular arithmetic", None),
        ("- Pythagorean theorem\n* Area of a circle\n• Modular arithmetic", None),
        ("Pythagorean theorem, area of a circle, and modular arithmetic", None),
        ('```python\n["Pythagorean theorem", "Area of a circle", "Modular arithmetic"]\n```', None),
        (
            "Knowledge Point: Pythagorean theorem\nKnowledge Point: Area of a circle\n"
            "Knowledge Point: Modular arithmetic",
            None,
        ),
        (
            "Here are the concepts:\n1. **Pythagorean theorem**\n2. Area of a circle.\n3. Modular arithmetic",
            None,
        ),
    ],
)
def test_list_formats(text: str, items: list[str] | None) -> None:
    got = [i.lower() for i in parse_list(text)["items"]]
    assert got == ["pythagorean theorem", "area of a circle", "modular arithmetic"]


def test_list_dedups_and_drops_placeholders() -> None:
    assert parse_list("1. Algebra\n2. algebra \n3. <concept>\n4. Geometry")["items"] == [
        "Algebra",
        "Geometry",
    ]
    with pytest.raises(ParseError):
        parse_list("1. <concept>\n2. <concept>")
    with pytest.raises(ParseError):
        parse_list("   ")


@pytest.mark.parametrize(
    "text",
    [
        "## Rationale\nCombine the ideas.\n## Problem\nFind $x$ if $2x = 4$.",
        "<rationale>Combine the ideas.</rationale>\n<problem>Find $x$ if $2x = 4$.</problem>",
        "<!-- BEGIN RATIONALE -->Combine the ideas.<!-- END RATIONALE -->\n"
        "<!-- BEGIN PROBLEM -->Find $x$ if $2x = 4$.<!-- END PROBLEM -->",
        "**Rationale:** Combine the ideas.\n**Problem:** Find $x$ if $2x = 4$.",
        "Combine the ideas.\n\nProblem: Find $x$ if $2x = 4$.",
    ],
)
def test_proposal_formats(text: str) -> None:
    assert parse_proposal(text) == {"rationale": "Combine the ideas.", "problem": "Find $x$ if $2x = 4$."}


def test_proposal_without_problem_fails_cleanly() -> None:
    with pytest.raises(ParseError, match="no problem section"):
        parse_proposal("## Rationale\nI will think about it for a long time")


def test_verdict_rule_from_free_text() -> None:
    text = (
        "1. FORMAT\nRating: Perfect\nJustification: tags ok\n"
        "2. FACTUAL ACCURACY\nRating: Perfect\n"
        "3. DIFFICULTY ALIGNMENT\nRating: Acceptable\n"
        "4. CONCEPT COVERAGE\nRating: Perfect\n"
        "5. SOLVABILITY\nRating: Perfect\n"
        "Final Judgement: acceptable"
    )
    out = parse_verdict(text)
    assert out["criteria"]["difficulty_alignment"] == "acceptable"
    assert out["verdict"] == "perfect"  # recomputed by the rule, not the stated verdict
    assert out["stated"] == "acceptable"


def test_verdict_any_bad_is_bad_and_stated_fallback() -> None:
    assert parse_verdict("Format: Perfect\nSolvability: Bad - no answer")["verdict"] == "bad"
    assert parse_verdict("Looks fine overall.\nFinal Judgement: Acceptable")["verdict"] == "acceptable"
    with pytest.raises(ParseError, match="criteria"):
        parse_verdict("This problem is nice.")


def test_other_parsers() -> None:
    assert parse_text("  hi ") == {"text": "hi"}
    assert parse_json('noise ```json\n{"a": [1, 2]}\n``` tail') == {"a": [1, 2]}
    assert parse_json("value: [1, 2]") == {"value": [1, 2]}
    assert parse_fields("## Rationale\nr\n## Problem\np") == {"rationale": "r", "problem": "p"}
    assert parse_rationale("Thinking Process: step 1, step 2") == {"rationale": "step 1, step 2"}
    assert parse_problem("Problem: Find x.\n## Solution\nx = 1") == {"problem": "Find x."}
    with pytest.raises(ParseError):
        parse_json("no json here")
