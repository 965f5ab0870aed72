"""`rolegraph new graph NAME`: a commented starter spec, prompt file and inputs file that run as they are."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from rolegraph.errors import ConfigError
from rolegraph.terminal import safe, safe_console

console = safe_console()
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

SPEC = """\
# {name}: a starter role graph. Check, draw and run it as it is:
#   rolegraph graph check {folder}/graph.yaml
#   rolegraph graph show {folder}/graph.yaml --out {name}.svg
#   rolegraph run {folder}/graph.yaml --n 2 --run-dir runs/{name}
# Then make it yours: add roles (a prompt file each), environment nodes, loops, fan-out and subgraphs.
name: {name}
description: answer a question with a new role, check the answer against the reference

roles:                             # new roles: a prompt file (relative to this spec) and a built-in parser
  answerer:
    prompt: prompts/answerer.md
    parser: boxed                  # text, json, list, fields, boxed, ... (agents/parsers.py)
    sampling: {{temperature: 0.3, max_tokens: 128}}

state:                             # the typed state (str, int, float, bool, list, dict, any)
  question: str
  reference: str
  answer: str
  correct: bool

inputs:
  file: inputs.jsonl               # JSON lines, relative to this spec
  fields: {{question: question, reference: answer}}   # state field: record field
  key: id                          # names each episode, so re-running a run dir resumes it

nodes:
  answer:                          # a role node: template variable → state field in, parsed field → state out
    role: answerer
    inputs: {{question: question}}
    output: {{answer: answer}}
    # n: 4                         # fan out: 4 calls in parallel, outputs become lists (join them below)
  check:                           # an environment node: sandbox.run, code.tests, math.verify,
    env: math.verify               #   triplet.validate, triplet.judge or python (target: module:function)
    inputs: {{answer: answer, reference: reference}}
    output: {{correct: correct}}

edges:
  - [START, answer]
  - [answer, check]
  - [check, END]
  # a conditional edge: {{from: check, when: [{{field: correct, equals: false, to: answer}}], default: END}}

rewards:                           # named rewards: a condition (1.0 / 0.0) or a numeric field, weighted
  correct: {{field: correct, equals: true, weight: 1.0, train: true}}
keep: {{field: answer, empty: false}}   # which episodes are kept
"""

PROMPT = """\
<!-- system -->
You answer questions briefly and exactly.
<!-- user -->
{{{{question}}}}

Put your final answer in \\boxed{{}}.
"""

INPUTS = """\
{"id": "q1", "question": "What is 2 + 3?", "answer": "5"}
{"id": "q2", "question": "What is 7 times 6?", "answer": "42"}
{"id": "q3", "question": "What is half of 9?", "answer": "\\\\frac{9}{2}"}
"""

new_app = typer.Typer(help="Start new things from a template.", no_args_is_help=True)


def write_starter(name: str, folder: Path, *, force: bool = False) -> list[Path]:
    """Write FOLDER/graph.yaml, FOLDER/prompts/answerer.md and FOLDER/inputs.jsonl; returns their paths."""
    if not NAME.match(name):
        raise ConfigError(f"bad graph name '{name}'", "use letters, digits, _ and -, starting with a letter")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ConfigError(f"{folder} already exists and is not empty", "pick another --dir, or pass --force")
    files = {
        folder / "graph.yaml": SPEC.format(name=name, folder=folder),
        folder / "prompts" / "answerer.md": PROMPT.format(),
        folder / "inputs.jsonl": INPUTS,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


@new_app.command("graph")
def new_graph(
    name: str = typer.Argument(..., help="The graph's name."),
    folder: Path | None = typer.Option(None, "--dir", help="Where to write it (default: ./NAME)."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty."),
) -> None:
    """Write a commented starter spec, prompt file and inputs file that run as they are."""
    target = folder or Path(name)
    for path in write_starter(name, target, force=force):
        console.print(safe(f"wrote {path}"))
    console.print(safe(f"next: rolegraph run {target / 'graph.yaml'} --n 2 --run-dir runs/{name}"))


def register(app: typer.Typer) -> None:
    """Add `rolegraph new` to the root app."""
    app.add_typer(new_app, name="new")
