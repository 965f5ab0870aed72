"""What `rolegraph runs show` and `rolegraph eval math` report for a cort run.

Per mode (tir, plain): accuracy; model tokens per solved problem; for TIR also those tokens with the
interpreter's output and hints counted, code calls per problem, the share of failing cells, code use split
into calculation and verification (`detectors.classify_cell`), and how often each detector fired. When a run
has both modes, tokens per solved problem are also compared on the problems both solved.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from rich.console import Console
from rich.table import Table

from rolegraph.graphs.cort.samples import TIRSample, read_samples


@dataclass(frozen=True)
class ModeStats:
    mode: str
    episodes: int
    checked: int
    correct: int
    problems: int
    tokens_per_solved: float | None
    """Mean model tokens of a correct episode."""
    total_tokens_per_solved: float | None
    """The same with interpreter output and hints counted."""
    code_calls_per_problem: float
    failing_cell_share: float | None
    calculation_cells: int
    verification_cells: int
    flags: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.checked if self.checked else None


@dataclass(frozen=True)
class CortReport:
    modes: dict[str, ModeStats]
    paired_problems: int = 0
    """Problems that both the TIR and the plain solver solved."""
    paired_tokens: dict[str, float] = field(default_factory=dict)
    """On those problems: tokens per solved problem — `tir` (model), `tir+interpreter`, `plain`."""


def _mode_stats(mode: str, samples: list[TIRSample]) -> ModeStats:
    checked = [s for s in samples if s.correct is not None]
    solved = [s for s in checked if s.correct]
    calls = sum(s.metrics.get("code_calls", 0.0) for s in samples)
    failed = sum(s.metrics.get("failed_cells", 0.0) for s in samples)
    flags: dict[str, int] = defaultdict(int)
    for s in samples:
        for name, count in s.flags.items():
            flags[name] += int(count > 0)
    return ModeStats(
        mode=mode,
        episodes=len(samples),
        checked=len(checked),
        correct=len(solved),
        problems=len({s.problem_id for s in samples}),
        tokens_per_solved=mean(sum(s.mask) for s in solved) if solved else None,
        total_tokens_per_solved=mean(len(s.mask) for s in solved) if solved else None,
        code_calls_per_problem=calls / max(len(samples), 1),
        failing_cell_share=failed / calls if calls else None,
        calculation_cells=int(sum(s.metrics.get("calculation_cells", 0.0) for s in samples)),
        verification_cells=int(sum(s.metrics.get("verification_cells", 0.0) for s in samples)),
        flags=dict(flags),
    )


def cort_report(samples: list[TIRSample]) -> CortReport:
    by_mode: dict[str, list[TIRSample]] = defaultdict(list)
    for s in samples:
        by_mode[s.mode].append(s)
    modes = {mode: _mode_stats(mode, items) for mode, items in sorted(by_mode.items())}
    solved: dict[str, dict[str, list[TIRSample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.correct:
            solved[s.mode][s.problem_id].append(s)
    both = sorted(set(solved["tir"]) & set(solved["plain"]))
    if not both:
        return CortReport(modes)

    def per_problem(mode: str, measure: str) -> float:
        values = []
        for pid in both:
            episodes = solved[mode][pid]
            values.append(mean(sum(s.mask) if measure == "model" else len(s.mask) for s in episodes))
        return mean(values)

    paired = {
        "tir": per_problem("tir", "model"),
        "tir+interpreter": per_problem("tir", "total"),
        "plain": per_problem("plain", "model"),
    }
    return CortReport(modes, len(both), paired)


def _figure(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def render_report(report: CortReport, console: Console, title: str = "CoRT") -> None:
    table = Table(title=title, title_justify="left")
    for column in (
        "mode",
        "episodes",
        "accuracy",
        "tokens/solved",
        "with interpreter",
        "code calls/problem",
        "failing cells",
        "calc / verify cells",
        "flagged",
    ):
        table.add_column(column, justify="left" if column in ("mode", "flagged") else "right")
    for stats in report.modes.values():
        tir = stats.mode == "tir"
        table.add_row(
            stats.mode,
            str(stats.episodes),
            f"{_figure(stats.accuracy, '{:.0%}')} ({stats.correct}/{stats.checked})",
            _figure(stats.tokens_per_solved),
            _figure(stats.total_tokens_per_solved) if tir else "–",
            f"{stats.code_calls_per_problem:.2f}" if tir else "–",
            _figure(stats.failing_cell_share, "{:.0%}") if tir else "–",
            f"{stats.calculation_cells} / {stats.verification_cells}" if tir else "–",
            ", ".join(f"{k} {v}" for k, v in stats.flags.items() if v) or "–",
        )
    console.print(table)
    if report.paired_problems:
        t = report.paired_tokens
        console.print(
            f"on the {report.paired_problems} problem(s) both solvers solved, tokens per solved problem: "
            f"TIR {t['tir']:.1f} (with interpreter {t['tir+interpreter']:.1f}), plain {t['plain']:.1f}"
        )


def render_cort_report(run_dir: Path | str, console: Console) -> None:
    """The CoRT metrics of a cort run (for `rolegraph runs show`)."""
    render_report(cort_report(read_samples(run_dir)), console, title=f"CoRT metrics of {run_dir}")
