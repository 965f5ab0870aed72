"""Drawing graphs offline: Mermaid text and a standalone SVG laid out with networkx.

A YAML spec is drawn from the spec itself, so each kind of node has its own shape: role nodes are boxes,
environment nodes hexagons, joins circles, a fan-out node says `×K`, and a subgraph node is a Mermaid
`subgraph` holding the subgraph's own nodes. Python graphs are drawn from LangGraph's graph. No web service
is involved (LangGraph's PNG drawing calls mermaid.ink, so it is not used).
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
    spec = getattr(graph, "spec", None)
    if spec is None:
        return str(drawable(graph).draw_mermaid())
    lines = ["flowchart TD", f"    {START_ID}([START]):::terminal", f"    {END_ID}([END]):::terminal"]
    lines += _mermaid_body(graph, "", "    ")
    lines += [
        "    classDef terminal fill:#bfb6fc",
        "    classDef role fill:#f2f0ff",
        "    classDef env fill:#dff5e1,stroke:#2e7d32",
        "    classDef join fill:#fff4d6,stroke:#b7791f",
        "    classDef fanout stroke-width:3px",
    ]
    return "\n".join(lines) + "\n"


def node_label(node: Any) -> tuple[str, str]:
    """(kind, label) of a spec node: e.g. ("env", "check · math.verify") or ("role", "solve · solver ×4")."""
    what = {
        "role": node.role,
        "env": node.target if node.env == "python" else node.env,
        "graph": node.graph,
        "join": f"{node.join} of {node.over}",
    }[node.kind]
    return node.kind, f"{what} ×{node.n}" if node.n > 1 else str(what)


def _mermaid_body(graph: GraphDef, prefix: str, indent: str) -> list[str]:
    spec = graph.spec  # type: ignore[attr-defined]
    subgraphs = getattr(graph, "subgraphs", {})
    lines = []
    for name, node in spec.nodes.items():
        kind, what = node_label(node)
        ident = _mermaid_id(prefix + name)
        label = escape(f"{name} · {what}", {'"': "&quot;"})
        fanout = ":::fanout" if node.n > 1 else ""
        if kind == "graph":
            lines.append(f'{indent}subgraph {ident} ["{label}"]')
            sub = subgraphs.get(name)
            if sub is not None and getattr(sub, "spec", None) is not None:
                lines += _mermaid_body(sub, f"{prefix}{name}__", indent + "    ")
            lines.append(f"{indent}end")
            continue
        shape = {"role": '["{}"]', "env": '{{{{"{}"}}}}', "join": '(("{}"))'}[kind].format(label)
        lines.append(f"{indent}{ident}{shape}:::{kind}{fanout}")
    start, end = (START_ID, END_ID) if not prefix else (None, None)
    for source, target, data in spec_edges(spec):
        if (source == START_ID and start is None) or (target == END_ID and end is None):
            continue
        arrow = "-.->" if data else "-->"
        a = source if source in (START_ID, END_ID) else _mermaid_id(prefix + source)
        b = target if target in (START_ID, END_ID) else _mermaid_id(prefix + target)
        lines.append(f"{indent}{a} {arrow} {b}")
    return lines


def _mermaid_id(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def spec_edges(spec: Any) -> list[tuple[str, str, bool]]:
    """(source, target, conditional) of a spec, with START and END as LangGraph names them."""
    from rolegraph.graphs.spec import END_NAME, START_NAME, spec_graph

    rename = {START_NAME: START_ID, END_NAME: END_ID}
    return [
        (rename.get(u, u), rename.get(v, v), bool(data["conditional"]))
        for u, v, data in spec_graph(spec).edges(data=True)
    ]


def to_networkx(graph: GraphDef) -> nx.DiGraph:
    """Nodes (with `kind` and `label` for specs) and edges (`conditional`) of a graph."""
    spec = getattr(graph, "spec", None)
    out = nx.DiGraph()
    if spec is not None:
        out.add_node(START_ID, kind="terminal", label="START")
        out.add_node(END_ID, kind="terminal", label="END")
        for name, node in spec.nodes.items():
            kind, what = node_label(node)
            out.add_node(name, kind=kind, label=name, detail=what, n=node.n)
        for source, target, conditional in spec_edges(spec):
            out.add_edge(source, target, conditional=conditional)
        return out
    drawn = drawable(graph)
    for node_id in drawn.nodes:
        out.add_node(node_id, kind="terminal" if node_id in (START_ID, END_ID) else "node", label=node_id)
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
        skips = layers[target] - layers[source] > 1
        parts.append(
            _edge(pos[source], pos[target], layers[target] <= layers[source], data["conditional"], skips)
        )
    for node, (x, y) in pos.items():
        parts.append(_box(node, g.nodes[node], x, y))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


FILLS = {"terminal": "#bfb6fc", "role": "#f2f0ff", "env": "#dff5e1", "join": "#fff4d6", "graph": "#e3f0ff"}


def _box(node: str, data: dict[str, Any], x: float, y: float) -> str:
    """One node: a box (role), hexagon (env), ellipse (join), double box (subgraph); a fan-out is stacked."""
    kind = data.get("kind", "node")
    label = {START_ID: "START", END_ID: "END"}.get(node, data.get("label", node))
    fill = FILLS.get(kind, "#f2f0ff")
    left, top, w, h = x - BOX_W / 2, y - BOX_H / 2, BOX_W, BOX_H
    shapes = []
    if data.get("n", 1) > 1:  # the copies behind a fan-out node
        shapes.append(
            f'<rect x="{left + 8:.1f}" y="{top - 8:.1f}" width="{w}" height="{h}" rx="6" fill="{fill}" '
            'stroke="#999"/>'
        )
        shapes.append(
            f'<rect x="{left + 4:.1f}" y="{top - 4:.1f}" width="{w}" height="{h}" rx="6" fill="{fill}" '
            'stroke="#777"/>'
        )
    if kind == "env":
        points = [(left, y), (left + 14, top), (left + w - 14, top), (left + w, y)]
        points += [(left + w - 14, top + h), (left + 14, top + h)]
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        shapes.append(f'<polygon points="{coords}" fill="{fill}" stroke="#2e7d32"/>')
    elif kind == "join":
        shapes.append(
            f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{w / 2}" ry="{h / 2}" fill="{fill}" stroke="#b7791f"/>'
        )
    else:
        rx = h / 2 if kind == "terminal" else 6
        shapes.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
            'stroke="#555"/>'
        )
        if kind == "graph":
            shapes.append(
                f'<rect x="{left + 4:.1f}" y="{top + 4:.1f}" width="{w - 8}" height="{h - 8}" rx="4" '
                'fill="none" stroke="#555"/>'
            )
    detail = data.get("detail")
    if detail:
        text = (
            f'<text x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle">{escape(label)}</text>'
            f'<text x="{x:.1f}" y="{y + 12:.1f}" text-anchor="middle" font-size="10" fill="#555">'
            f"{escape(str(detail))}</text>"
        )
    else:
        text = f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{escape(label)}</text>'
    return f'<g class="node {kind}" data-node="{escape(node)}">{"".join(shapes)}{text}</g>'


def _edge(
    a: tuple[float, float], b: tuple[float, float], backward: bool, conditional: bool, skips: bool = False
) -> str:
    dash = ' stroke-dasharray="5,4"' if conditional else ""
    style = f'fill="none" stroke="#444"{dash} marker-end="url(#arrow)"'
    if a == b:  # a self-loop, drawn on the box's right side
        x, y = a[0] + BOX_W / 2, a[1]
        curve = f"C {x + 45:.1f} {y - 30:.1f}, {x + 45:.1f} {y + 30:.1f}, {x:.1f} {y + 8:.1f}"
        return f'<path d="M {x:.1f} {y - 8:.1f} {curve}" {style}/>'
    if skips and a[0] == b[0]:  # past a row in the same column: bend out to the left, around its boxes
        sx, sy, ex, ey = a[0] - BOX_W / 2, a[1], b[0] - BOX_W / 2, b[1]
        bend = sx - 55
        curve = f"C {bend:.1f} {sy:.1f}, {bend:.1f} {ey:.1f}, {ex:.1f} {ey:.1f}"
        return f'<path d="M {sx:.1f} {sy:.1f} {curve}" {style}/>'
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
