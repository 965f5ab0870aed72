"""Drawing graphs offline: Mermaid text from LangGraph, and a standalone SVG laid out with networkx.

No web service is involved (LangGraph's PNG drawing calls mermaid.ink, so it is not used).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import escape

import networkx as nx

from rolegraph.graphs.base import GraphDef
from rolegraph.graphs.context import GraphContext

START_ID, END_ID = "__start__", "__end__"
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 150, 40, 40, 70, 30


class _DrawingContext:
    """A context for building a graph only to look at it: its nodes are never run."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("graphs built for drawing do not run")


def drawable(graph: GraphDef) -> Any:
    """LangGraph's drawable graph (nodes and edges, conditional ones marked) of a GraphDef."""
    return graph.build(cast(GraphContext, _DrawingContext())).compile().get_graph()


def to_mermaid(graph: GraphDef) -> str:
    return str(drawable(graph).draw_mermaid())


def to_networkx(graph: GraphDef) -> nx.DiGraph:
    drawn = drawable(graph)
    out = nx.DiGraph()
    for node_id in drawn.nodes:
        out.add_node(node_id)
    for edge in drawn.edges:
        out.add_edge(edge.source, edge.target, conditional=bool(edge.conditional))
    return out


def _layers(graph: nx.DiGraph) -> dict[str, int]:
    """Each node's row: its distance from START; END goes below everything."""
    depth = nx.single_source_shortest_path_length(graph, START_ID) if START_ID in graph else {}
    bottom = max([d for n, d in depth.items() if n != END_ID], default=0) + 1
    layers = {}
    for node in graph.nodes:
        layers[node] = bottom if node == END_ID else depth.get(node, bottom - 1 if bottom > 1 else 0)
    return layers


def to_svg(graph: GraphDef) -> str:
    """A standalone SVG: one row per distance from START; dashed arrows are conditional edges."""
    g = to_networkx(graph)
    layers = _layers(g)
    rows: dict[int, list[str]] = {}
    for node in g.nodes:
        rows.setdefault(layers[node], []).append(node)
    widest = max(len(r) for r in rows.values())
    width = MARGIN * 2 + widest * BOX_W + (widest - 1) * GAP_X + 80  # room for back edges
    height = MARGIN * 2 + len(rows) * BOX_H + (len(rows) - 1) * GAP_Y + 20
    pos: dict[str, tuple[float, float]] = {}
    for row, nodes in rows.items():
        span = len(nodes) * BOX_W + (len(nodes) - 1) * GAP_X
        left = (width - span) / 2
        for i, node in enumerate(nodes):
            pos[node] = (left + i * (BOX_W + GAP_X) + BOX_W / 2, MARGIN + row * (BOX_H + GAP_Y) + BOX_H / 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="13">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#444'/></marker></defs>",
        f"<title>{escape(graph.name)}</title>",
    ]
    for source, target, data in g.edges(data=True):
        parts.append(_edge(pos[source], pos[target], layers[target] <= layers[source], data["conditional"]))
    for node, (x, y) in pos.items():
        label = {START_ID: "START", END_ID: "END"}.get(node, node)
        terminal = node in (START_ID, END_ID)
        parts.append(
            f'<rect x="{x - BOX_W / 2:.1f}" y="{y - BOX_H / 2:.1f}" width="{BOX_W}" height="{BOX_H}" '
            f'rx="{BOX_H / 2 if terminal else 6}" fill="{"#bfb6fc" if terminal else "#f2f0ff"}" '
            'stroke="#555"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _edge(a: tuple[float, float], b: tuple[float, float], backward: bool, conditional: bool) -> str:
    dash = ' stroke-dasharray="5,4"' if conditional else ""
    style = f'fill="none" stroke="#444"{dash} marker-end="url(#arrow)"'
    if a == b:  # a self-loop, drawn on the box's right side
        x, y = a[0] + BOX_W / 2, a[1]
        curve = f"C {x + 45:.1f} {y - 30:.1f}, {x + 45:.1f} {y + 30:.1f}, {x:.1f} {y + 8:.1f}"
        return f'<path d="M {x:.1f} {y - 8:.1f} {curve}" {style}/>'
    if not backward:
        angle = math.atan2(b[1] - a[1], b[0] - a[0])
        start = (a[0] + math.cos(angle) * 4, a[1] + BOX_H / 2)
        end = (b[0], b[1] - BOX_H / 2)
        return f'<path d="M {start[0]:.1f} {start[1]:.1f} L {end[0]:.1f} {end[1]:.1f}" {style}/>'
    # back edges bend out to the right so they do not cross the forward ones
    sx, sy = a[0] + BOX_W / 2, a[1]
    ex, ey = b[0] + BOX_W / 2, b[1]
    bend = max(sx, ex) + 60
    curve = f"C {bend:.1f} {sy:.1f}, {bend:.1f} {ey:.1f}, {ex:.1f} {ey:.1f}"
    return f'<path d="M {sx:.1f} {sy:.1f} {curve}" {style}/>'


def write_drawing(graph: GraphDef, out: Path) -> Path:
    """Write `out` as SVG (.svg) or Mermaid text (.mmd / .md), atomically."""
    suffix = out.suffix.lower()
    if suffix == ".svg":
        text = to_svg(graph)
    elif suffix in (".mmd", ".mermaid", ".md"):
        text = to_mermaid(graph)
    else:
        from rolegraph.errors import RolegraphError

        raise RolegraphError(f"cannot draw to {out.name}", "name the output FILE.svg or FILE.mmd")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
