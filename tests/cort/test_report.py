"""The CoRT metrics `runs show` and `eval math` print, on hand-made samples."""

from __future__ import annotations

from rich.console import Console

from rolegraph.graphs.cort.report import cort_report, render_report
from rolegraph.graphs.cort.samples import TIRSample


def sample(mode: str, pid: str, correct: bool | None, model: int, interp: int, **metrics: float) -> TIRSample:
    mask = [1] * model + [0] * interp
    return TIRSample(f"{mode}-{pid}", pid, mode, 0, [1], [7] * len(mask), mask, correct, None, {}, metrics)


def test_accuracy_tokens_per_solved_problem_and_code_use() -> None:
    samples = [
        sample(
            "tir", "a", True, 10, 30, code_calls=2, failed_cells=1, calculation_cells=1, verification_cells=1
        ),
        sample("tir", "b", False, 50, 0, code_calls=0),
        sample("tir", "c", None, 5, 0),
        sample("plain", "a", True, 40, 0),
        sample("plain", "b", True, 60, 0),
    ]
    report = cort_report(samples)
    tir, plain = report.modes["tir"], report.modes["plain"]
    assert (tir.accuracy, plain.accuracy) == (0.5, 1.0)  # the unchecked episode is left out
    assert tir.tokens_per_solved == 10 and tir.total_tokens_per_solved == 40
    assert tir.code_calls_per_problem == 2 / 3 and tir.failing_cell_share == 0.5
    assert (tir.calculation_cells, tir.verification_cells) == (1, 1)
    assert report.paired_problems == 1
    assert report.paired_tokens == {"tir": 10, "tir+interpreter": 40, "plain": 40}
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "50% (1/2)" in text and "TIR 10.0 (with interpreter 40.0), plain 40.0" in text
