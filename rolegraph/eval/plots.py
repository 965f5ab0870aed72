"""The analysis figures as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from rolegraph.eval.difficulty import SetDifficulty
from rolegraph.eval.diversity import Diversity
from rolegraph.eval.funnel import STAGES, Funnel

COLORS = [f"C{i}" for i in range(10)]
"""matplotlib's default colour cycle."""


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def difficulty_plot(sets: list[SetDifficulty], path: Path) -> Path:
    """Pass rate (with its 95% interval) and mean completion tokens per set, side by side."""
    fig, (rate, tokens) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [s.name for s in sets]
    x = np.arange(len(sets))
    values = np.array([s.pass_rate for s in sets])
    errors = np.clip([[s.pass_rate - s.ci[0] for s in sets], [s.ci[1] - s.pass_rate for s in sets]], 0, 1)
    rate.bar(x, values, yerr=errors, capsize=4, color=COLORS[: len(sets)])
    for xx, value in zip(x, values, strict=True):
        rate.annotate(f"{value:.0%}", (xx, value), textcoords="offset points", xytext=(6, 3), fontsize=9)
    rate.set_ylim(0, 1)
    rate.set_ylabel("solver pass rate (95% CI)")
    rate.set_title("difficulty: pass rate (lower = harder)")
    width = 0.38
    tokens.bar(x - width / 2, [s.mean_tokens for s in sets], width, label="all answers", color="#4c72b0")
    solved = [s.mean_tokens_solved or 0.0 for s in sets]
    tokens.bar(x + width / 2, solved, width, label="solved answers", color="#55a868")
    tokens.set_ylabel("mean completion tokens")
    tokens.set_title("reasoning tokens")
    tokens.legend(fontsize=8)
    for axis in (rate, tokens):
        axis.set_xticks(x, names, rotation=15, ha="right")
    return _save(fig, path)


def mds_plot(names: list[str], div: Diversity, path: Path) -> Path:
    """The sets' mean embeddings in 2-D (MDS of their cosine distances)."""
    fig, axis = plt.subplots(figsize=(5.5, 4.5))
    for index, (name, (x, y)) in enumerate(zip(names, div.coords, strict=True)):
        axis.scatter([x], [y], s=160, color=COLORS[index % len(COLORS)], label=name, edgecolor="black")
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(8, 8), fontsize=9)
    span = float(np.ptp(div.coords)) if len(div.coords) > 1 else 1.0
    pad = max(span * 0.25, 1e-3)
    axis.set_xlim(div.coords[:, 0].min() - pad, div.coords[:, 0].max() + pad)
    axis.set_ylim(div.coords[:, 1].min() - pad, div.coords[:, 1].max() + pad)
    axis.set_aspect("equal", adjustable="datalim")  # MDS distances are only meaningful at equal scales
    axis.set_title("diversity: MDS of mean MiniLM embeddings")
    axis.set_xlabel("MDS 1 (cosine distance)")
    axis.set_ylabel("MDS 2")
    axis.legend(fontsize=8, loc="best")
    return _save(fig, path)


def pairwise_plot(div: Diversity, path: Path) -> Path:
    """The distribution of pairwise cosine distances inside each set."""
    fig, axis = plt.subplots(figsize=(6.5, 3.8))
    bins = [float(edge) for edge in np.linspace(0, 1.2, 49)]
    for index, s in enumerate(div.sets):
        if s.pairwise.size:
            label = f"{s.name} (mean {s.mean_distance:.2f})"
            color = COLORS[index % len(COLORS)]
            axis.hist(
                s.pairwise, bins=bins, density=True, histtype="step", linewidth=2, color=color, label=label
            )
    axis.set_xlabel("pairwise cosine distance within the set")
    axis.set_ylabel("density")
    axis.set_title("diversity inside each set (higher = more diverse)")
    axis.legend(fontsize=8)
    return _save(fig, path)


def funnel_plot(funnel: Funnel, path: Path) -> Path:
    """Episodes at each stage, and the rejection reasons."""
    fig, (stages, reasons) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    counts = [funnel.stages[s] for s in STAGES]
    y = np.arange(len(STAGES))[::-1]
    stages.barh(y, counts, color=["#4c72b0", "#8172b2", "#ccb974", "#55a868"])
    stages.set_yticks(y, STAGES)
    for yy, count in zip(y, counts, strict=True):
        stages.text(count, yy, f" {count}", va="center")
    stages.set_xlim(0, max(max(counts), 1) * 1.2)
    stages.set_title(f"funnel of the {funnel.graph} run")
    top = list(funnel.reasons.items())[:8]
    if top:
        labels = [r if len(r) <= 48 else r[:45] + "..." for r, _ in top][::-1]
        reasons.barh(np.arange(len(top)), [c for _, c in top][::-1], color="#c44e52")
        reasons.set_yticks(np.arange(len(top)), labels, fontsize=8)
        reasons.set_title("rejection reasons (numbers shown as #)")
        reasons.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        reasons.text(0.5, 0.5, "no rejections", ha="center", va="center")
        reasons.set_axis_off()
    return _save(fig, path)
