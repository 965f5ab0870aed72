"""`rolegraph analyze`: difficulty, diversity and the funnel of a run's problems, beside other problem sets.

Writes PNG plots and a self-contained HTML report to the output directory; the same tables print in the
terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rolegraph.errors import ConfigError
from rolegraph.eval import html_report, plots
from rolegraph.eval.bindings import Binding
from rolegraph.eval.datasets import ProblemSet, load_set
from rolegraph.eval.difficulty import SetDifficulty, measure
from rolegraph.eval.diversity import NEAR_DUPLICATE, Diversity, diversity, embed_sets
from rolegraph.eval.funnel import STAGES, Funnel, read_funnel
from rolegraph.graphs.role_calls import RolePool
from rolegraph.terminal import safe

REPORT_FILE = "report.html"
Rows = tuple[list[str], list[list[str]]]


@dataclass(frozen=True)
class AnalyzeSettings:
    run_dir: Path
    out: Path
    against: list[Path] = field(default_factory=list)
    n: int = 200
    """The most problems taken from each set."""
    samples: int = 2
    max_tokens: int = 512
    temperature: float = 0.7
    sandbox: str = "auto"
    concurrency: int = 8


@dataclass(frozen=True)
class Analysis:
    run_dir: Path
    sets: list[ProblemSet]
    funnel: Funnel
    diversity: Diversity | None
    """None when no set has problems (e.g. a run that kept none, and no --against)."""
    difficulty: list[SetDifficulty] | None
    plots: dict[str, Path]
    html: Path

    def difficulty_rows(self) -> Rows:
        header = ["set", "task", "problems", "pass rate [95% CI]", "tokens", "tokens (solved)", "skipped",
                  "unchecked"]  # fmt: skip
        rows = [
            [
                d.name,
                d.task,
                str(d.problems),
                f"{d.pass_rate:.1%} [{d.ci[0]:.0%}, {d.ci[1]:.0%}]",
                f"{d.mean_tokens:.0f}",
                "-" if d.mean_tokens_solved is None else f"{d.mean_tokens_solved:.0f}",
                str(d.skipped),
                str(d.unchecked),
            ]
            for d in self.difficulty or []
        ]
        return header, rows

    def diversity_rows(self) -> Rows:
        first = self.sets[0].name if self.sets else "-"
        header = ["set", "problems", "mean pairwise distance", f"near-duplicate pairs (≥{NEAR_DUPLICATE})",
                  f"near a {first} problem", f"mean's distance to {first}"]  # fmt: skip
        div = self.diversity
        if div is None:
            return header, []
        rows = [
            [s.name, str(s.problems), f"{s.mean_distance:.3f}", str(s.near_duplicates),
             "-" if index == 0 else str(s.near_first), f"{div.mean_distances[0, index]:.4f}"]
            for index, s in enumerate(div.sets)
        ]  # fmt: skip
        return header, rows

    def funnel_rows(self) -> tuple[Rows, Rows]:
        proposed = max(self.funnel.stages["proposed"], 1)
        stages = [[s, str(self.funnel.stages[s]), f"{self.funnel.stages[s] / proposed:.0%}"] for s in STAGES]
        reasons = [[r, str(c)] for r, c in self.funnel.reasons.items()]
        reasons += [[f"failed: {kind}", str(c)] for kind, c in self.funnel.failures.items()]
        return (["stage", "episodes", "of proposed"], stages), (["rejection reason", "episodes"], reasons)

    def render(self, console: Console) -> None:
        stages, reasons = self.funnel_rows()
        titled = [("funnel", stages), ("rejections", reasons), ("diversity", self.diversity_rows())]
        if self.difficulty is not None:
            titled.insert(0, ("difficulty", self.difficulty_rows()))
        for title, (header, rows) in titled:
            if not rows:
                continue
            table = Table(title=title, title_justify="left")
            for index, column in enumerate(header):
                table.add_column(column, justify="left" if index == 0 else "right")
            for row in rows:
                table.add_row(*(safe(cell) for cell in row))
            console.print(table)
        if not self.sets:
            console.print("no problems to analyze: the run kept none (pass --against FILE to compare sets)")
        elif self.difficulty is None:
            console.print("difficulty: not measured (pass --solver ENDPOINT:MODEL to measure it)")
        console.print(safe(f"report: {self.html}"))


def _load_sets(settings: AnalyzeSettings, kept: int) -> list[ProblemSet]:
    """The run's kept problems (when it kept any) first, then the --against sets."""
    taken: set[str] = set()
    sets = [load_set(settings.run_dir, settings.n, taken)] if kept else []
    for source in settings.against:
        if not source.exists():
            raise ConfigError(f"--against {source} does not exist", "pass a JSONL problem file or a run dir")
        sets.append(load_set(source, settings.n, taken))
    return sets


async def analyze(
    settings: AnalyzeSettings, pool: RolePool | None = None, solver: Binding | None = None
) -> Analysis:
    """Funnel, diversity and (with a pool and a solver binding) difficulty; plots and the HTML report."""
    funnel = read_funnel(settings.run_dir)
    sets = _load_sets(settings, funnel.stages["kept"])
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    div = None
    if sets:
        div = diversity([s.name for s in sets], embed_sets([s.texts for s in sets], out / "embeddings"))
    hard = None
    if pool is not None and solver is not None and sets:
        hard = await measure(
            sets, pool, solver, out, samples=settings.samples, max_tokens=settings.max_tokens,
            temperature=settings.temperature, sandbox=settings.sandbox, concurrency=settings.concurrency,
        )  # fmt: skip
    figures = {"funnel": plots.funnel_plot(funnel, out / "funnel.png")}
    if div is not None:
        figures["diversity_mds"] = plots.mds_plot([s.name for s in sets], div, out / "diversity_mds.png")
        figures["pairwise_distances"] = plots.pairwise_plot(div, out / "pairwise_distances.png")
    if hard is not None:
        figures["difficulty"] = plots.difficulty_plot(hard, out / "difficulty.png")
    analysis = Analysis(settings.run_dir, sets, funnel, div, hard, figures, out / REPORT_FILE)
    _write_html(analysis)
    return analysis


def _write_html(analysis: Analysis) -> None:
    stages, reasons = analysis.funnel_rows()
    sections: list[tuple[str, list[str]]] = []
    if analysis.difficulty is not None:
        sections.append(("Difficulty", [html_report.table(*analysis.difficulty_rows()),
                                        html_report.image(analysis.plots["difficulty"])]))  # fmt: skip
    else:
        sections.append(("Difficulty", [html_report.note("not measured: pass --solver ENDPOINT:MODEL")]))
    if analysis.diversity is not None:
        sections.append(
            ("Diversity", [
                html_report.table(*analysis.diversity_rows()),
                html_report.image(analysis.plots["diversity_mds"]),
                html_report.image(analysis.plots["pairwise_distances"]),
                html_report.note("MiniLM (all-MiniLM-L6-v2) embeddings; distances are cosine distances."),
            ])
        )  # fmt: skip
    else:
        sections.append(("Diversity", [html_report.note("no problems: the run kept none and no --against")]))
    funnel_parts = [html_report.table(*stages), html_report.table(*reasons) if reasons[1] else "",
                    html_report.image(analysis.plots["funnel"])]  # fmt: skip
    sections.append(("Funnel", funnel_parts))
    html_report.write_html(analysis.html, f"analysis of {analysis.run_dir}", sections)
