"""An episode's role graph: the offline SVG renderer's drawing with the path taken highlighted and each visit
numbered."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rolegraph.graphs.base import GraphDef
from rolegraph.graphs.render import BOX_H, BOX_W, END_ID, START_ID, to_networkx, to_svg
from rolegraph.store import Step

SVG_NS = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)
PATH_COLOUR = "#c26a00"
VISITED_FILL = "#ffe3b3"


@dataclass(frozen=True)
class Visit:
    """One execution of a node (a LangGraph task), numbered in the order the episode ran them."""

    number: int
    node: str
    task: str | None


def visits_from_history(snapshots: list[Any]) -> list[Visit]:
    """Visits from the episode's checkpoints (oldest first): exact, nodes without calls included."""
    out: list[Visit] = []
    for index, snapshot in enumerate(snapshots):
        last = index == len(snapshots) - 1
        for task in snapshot.tasks:
            # the newest snapshot's tasks have not run, unless they failed there
            if task.name == START_ID or (last and task.error is None):
                continue
            out.append(Visit(len(out) + 1, task.name, task.id))
    return out


def visits_from_steps(steps: list[Step]) -> list[Visit]:
    """Visits from the recorded steps when no checkpoints remain (nodes that call nothing are missing)."""
    out: list[Visit] = []
    for step in steps:
        if out and out[-1].node == step.node and (step.checkpoint is None or out[-1].task == step.checkpoint):
            continue
        out.append(Visit(len(out) + 1, step.node, step.checkpoint))
    return out


@lru_cache(maxsize=32)
def _drawing(graph: GraphDef) -> tuple[str, tuple[tuple[str, str], ...]]:
    edges = tuple((str(a), str(b)) for a, b in to_networkx(graph).edges())
    return to_svg(graph), edges


def highlighted_svg(graph: GraphDef, visits: list[Visit], *, finished: bool) -> str:
    """The graph's SVG with visited nodes filled, the edges taken drawn thick, and visit numbers by nodes."""
    text, edges = _drawing(graph)
    root = ET.fromstring(text)
    root.set("class", "rolegraph")
    root.set("role", "img")
    order = [START_ID, *(v.node for v in visits), *([END_ID] if finished else [])]
    taken = set(itertools.pairwise(order))
    paths = [el for el in root if el.tag == f"{{{SVG_NS}}}path"]
    for (source, target), path in zip(edges, paths, strict=False):
        if (source, target) in taken:
            path.set("stroke", PATH_COLOUR)
            path.set("stroke-width", "3")
    numbers: dict[str, list[int]] = {}
    for visit in visits:
        numbers.setdefault(visit.node, []).append(visit.number)
    on_path = set(order)
    for group in root.iter(f"{{{SVG_NS}}}g"):
        node = group.get("data-node")
        if node is None or node not in on_path:
            continue
        label = None
        for shape in group:
            if shape.tag == f"{{{SVG_NS}}}text":
                label = label if label is not None else shape
            elif shape.get("fill") not in (None, "none"):
                shape.set("fill", VISITED_FILL)
                shape.set("stroke", PATH_COLOUR)
                shape.set("stroke-width", "2.5")
        if node in numbers and label is not None:
            # the node's box is centred on its label; the badge goes above its top right corner
            x, y = float(label.get("x", 0)), float(label.get("y", 0))
            badge = ET.SubElement(group, f"{{{SVG_NS}}}text")
            badge.attrib.update(
                {"x": f"{x + BOX_W / 2:.1f}", "y": f"{y - BOX_H / 2 - 8:.1f}", "text-anchor": "end"}
            )
            badge.attrib.update({"font-weight": "bold", "fill": PATH_COLOUR, "class": "visit"})
            badge.text = "#" + ",".join(str(n) for n in numbers[node])
    return ET.tostring(root, encoding="unicode")
