"""What the templates show, computed from records: visible text, diffs, method-specific views and plots.

Everything here returns plain data or text; the templates escape it (autoescape). Plots are SVG built with
ElementTree, so titles and labels taken from records are escaped as well.
"""

from __future__ import annotations

import difflib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from rolegraph.store import Step, TrainingRunRecord
from rolegraph.terminal import escape_controls

MAX_TEXT = 100_000
"""Characters of one text shown on a page; the rest is cut (and says so)."""
_OUTPUT_BLOCK = re.compile(r"(```output\n.*?```)", re.DOTALL)
_WORDS = re.compile(r"\s+|[^\s]+")


def visible(value: Any) -> str:
    """Untrusted text as shown: control characters (ANSI escapes, bidi overrides) written as `\\x1b` escapes,
    and very long texts cut."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT} more characters not shown)"
    return escape_controls(text)


def pretty(value: Any) -> str:
    return visible(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def word_diff(before: str, after: str, *, context: int | None = None) -> list[tuple[str, str]]:
    """(op, text) runs turning `before` into `after` word by word; op is same, del or ins. With `context`,
    unchanged runs keep only that many characters on each side of a change."""
    a, b = _WORDS.findall(before[:MAX_TEXT]), _WORDS.findall(after[:MAX_TEXT])
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            same = "".join(a[i1:i2])
            if context is not None and len(same) > 2 * context + 20:
                head = same[:context] if out else ""
                tail = same[-context:] if i2 < len(a) or j2 < len(b) else ""
                same = f"{head} … {tail}"
            out.append(("same", same))
            continue
        if i2 > i1:
            out.append(("del", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(("ins", "".join(b[j1:j2])))
    return [(op, visible(text)) for op, text in out]


def interpreter_segments(text: str) -> list[tuple[bool, str]]:
    """A tool-integrated completion split into (is_interpreter_output, text): CoRT-style ```output blocks are
    tokens the interpreter wrote, not the model."""
    return [
        (bool(_OUTPUT_BLOCK.fullmatch(part)), visible(part)) for part in _OUTPUT_BLOCK.split(text) if part
    ]


@dataclass(frozen=True)
class EnvView:
    """How an environment step is shown: `kind` is interpreter, triplet or plain."""

    kind: str
    fields: dict[str, str]


def env_view(step: Step) -> EnvView:
    """Code and interpreter output for sandbox/interpreter calls, the task triplet and its judgment for
    Absolute Zero calls, else the request and response as JSON."""
    request = step.request if isinstance(step.request, dict) else {}
    response = step.response if isinstance(step.response, dict) else {}
    merged = {**request, **response}
    program = merged.get("program", merged.get("code"))
    if program is not None and "input" in merged and ("output" in merged or "valid" in merged):
        judged = {
            k: merged[k] for k in ("valid", "correct", "score", "deterministic", "error") if k in merged
        }
        return EnvView(
            "triplet",
            {
                "program": visible(program),
                "input": visible(merged.get("input")),
                "output": visible(merged.get("output")),
                "judgment": pretty(judged) if judged else "",
            },
        )
    if "code" in request and ({"stdout", "status"} & set(response)):
        return EnvView(
            "interpreter",
            {
                "code": visible(request["code"]),
                "stdout": visible(response.get("stdout", "")),
                "stderr": visible(response.get("stderr", "")),
                "status": visible(response.get("status", "")),
            },
        )
    return EnvView("plain", {"request": pretty(step.request), "response": pretty(step.response)})


def is_tool_integrated(steps: list[Step]) -> bool:
    return any(env_view(s).kind == "interpreter" for s in steps if s.kind == "env")


def _series(record: TrainingRunRecord) -> dict[str, list[tuple[float, float]]]:
    """Per-step metrics of a training run (TRL's log history), by name."""
    history = record.metrics.get("log_history") if isinstance(record.metrics, dict) else None
    series: dict[str, list[tuple[float, float]]] = {}
    for index, entry in enumerate(history or []):
        if not isinstance(entry, dict):
            continue
        x = float(entry.get("step", index + 1))
        for name, value in entry.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(name, []).append((x, float(value)))
    return series


PLOTTED = ("loss", "reward", "learnability")


def training_plots(record: TrainingRunRecord) -> list[tuple[str, str]]:
    """(metric name, SVG) for the run's per-step loss, reward and learnability (and any other reward-like
    series), in that order."""
    series = _series(record)
    names = [n for n in PLOTTED if n in series]
    names += sorted(n for n in series if n not in names and any(k in n for k in PLOTTED))
    return [(name, line_plot(series[name], name)) for name in names]


def line_plot(points: list[tuple[float, float]], title: str, width: int = 360, height: int = 160) -> str:
    """A small standalone line plot (axes' ranges written at the corners)."""
    svg = ET.Element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "width": str(width),
            "height": str(height),
            "viewBox": f"0 0 {width} {height}",
            "class": "plot",
            "font-size": "11",
            "font-family": "sans-serif",
        },
    )
    ET.SubElement(svg, "title").text = title
    pad = 28
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)
    coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}" for x, y in points)
    ET.SubElement(
        svg,
        "rect",
        {
            "x": str(pad),
            "y": str(pad),
            "width": str(width - 2 * pad),
            "height": str(height - 2 * pad),
            "fill": "none",
            "stroke": "#ccc",
        },
    )
    ET.SubElement(
        svg, "polyline", {"points": coords, "fill": "none", "stroke": "#4b3fc7", "stroke-width": "2"}
    )
    for x, y, text, anchor in (
        (pad, pad - 8, f"{title}: {y0:.4g} … {y1:.4g}", "start"),
        (pad, height - 8, f"step {x0:g}", "start"),
        (width - pad, height - 8, f"step {x1:g}", "end"),
    ):
        ET.SubElement(svg, "text", {"x": str(x), "y": str(y), "text-anchor": anchor}).text = text
    return ET.tostring(svg, encoding="unicode")
