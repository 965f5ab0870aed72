"""Unit tests of the transcript helpers, the two built-in detectors and the cell-use heuristic."""

from __future__ import annotations

import pytest

from rolegraph.errors import ConfigError
from rolegraph.graphs.cort.detectors import (
    DelayedComputation,
    ResultDistrust,
    Transcript,
    classify_cell,
    get_detectors,
    register_detector,
)
from rolegraph.graphs.cort.transcript import (
    CALL_CAP_MESSAGE,
    cap_output,
    closed_code_block,
    in_open_code_block,
    output_block,
)

MANUAL = (
    "First, 17 * 23 = 391. Then 391 + 48 = 439. Next 439 * 2 = 878, and 878 - 100 = 778, so the total is 778."
)
CLEAN_TIR = (
    "We need the product.\n```python\nprint(17 * 23 * 2)\n```\n```output\n782\n```\n"
    "So the product is 782, and the answer is \\boxed{782}."
)
DISTRUST = (
    "```python\nprint(17 * 23)\n```\n```output\n391\n```\n"
    "Let me double-check this by hand: 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391."
)


def test_delayed_computation_fires_on_manual_arithmetic_before_any_code() -> None:
    assert DelayedComputation().fires(Transcript(MANUAL))


def test_delayed_computation_is_silent_on_a_clean_tir_transcript() -> None:
    assert not DelayedComputation().fires(Transcript(CLEAN_TIR))
    assert not DelayedComputation().fires(Transcript("17 * 23 = 391, then we write code."))


def test_result_distrust_fires_when_output_is_rechecked_by_hand() -> None:
    assert ResultDistrust().fires(Transcript(DISTRUST))


def test_result_distrust_is_silent_on_a_clean_transcript_and_before_code() -> None:
    assert not ResultDistrust().fires(Transcript(CLEAN_TIR))
    assert not ResultDistrust().fires(Transcript("Let me verify: 2 * 3 = 6."))  # no interpreter output yet


def test_detectors_are_pluggable_and_unknown_names_are_refused() -> None:
    class Shouting:
        name = "shouting"
        hint = "Calm down."

        def fires(self, transcript: Transcript) -> bool:
            return transcript.text.isupper()

    register_detector(Shouting())
    assert [d.name for d in get_detectors(["shouting"])] == ["shouting"]
    with pytest.raises(ConfigError, match="unknown detector"):
        get_detectors(["nope"])


def test_cells_are_classified_as_calculation_or_verification() -> None:
    assert classify_cell("x = 17 * 23\nprint(x)", "We compute the product.") == "calculation"
    assert classify_cell("assert 17 * 23 == 391", "") == "verification"
    assert classify_cell("print(17 * 23)", "Let me verify the product.") == "verification"
    assert classify_cell("print(1 +", "") == "calculation"  # unparseable code: no assertion found


def test_code_blocks_are_found_only_when_closed() -> None:
    assert closed_code_block("text\n```python\nx = 1\nprint(x)\n```\n") == "x = 1\nprint(x)"
    assert closed_code_block("```python\nx = 1\n") is None
    assert in_open_code_block("```python\nx = 1\n")
    assert not in_open_code_block(CLEAN_TIR)


def test_output_is_capped_keeping_head_and_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(500))
    capped = cap_output(text, 800)
    assert capped.startswith("line 0\n") and capped.endswith("line 499\n")
    assert "characters omitted" in capped and len(capped) < 860
    assert cap_output("short", 800) == "short"


def test_the_last_allowed_call_carries_corts_message() -> None:
    assert output_block("42", last_call=True) == f"```output\n42\n\n{CALL_CAP_MESSAGE}\n```\n"
    assert CALL_CAP_MESSAGE.startswith("[SYSTEM]\nYou have exceeded the allowed number of code executions.")
