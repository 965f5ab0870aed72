"""Parsers of AZR completions: the proposer's fenced blocks and the solver's R1 answer tags.

Model text is only cut into strings here; whether a program or input is valid is decided by
environments/triplets.py (parsed with `ast` on the host, run only in the sandbox).
"""

from __future__ import annotations

import re
from typing import Any

from rolegraph.errors import ParseError

_BLOCK = re.compile(r"```[ \t]*(python|py|input|message|output)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def _blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of each fenced block, the tag lower-cased ('' when none)."""
    return [((m.group(1) or "").lower(), m.group(2).strip("\n")) for m in _BLOCK.finditer(text)]


def _tagged(blocks: list[tuple[str, str]], *tags: str) -> list[str]:
    return [body for tag, body in blocks if tag in tags]


def parse_triplet_proposal(text: str) -> dict[str, Any]:
    """Deduction/abduction proposer: the last ```python block and the last ```input block."""
    blocks = _blocks(text)
    programs = _tagged(blocks, "python", "py")
    inputs = [body.strip() for body in _tagged(blocks, "input")]
    if not programs:
        raise ParseError("no ```python block with the program")
    if not inputs or not inputs[-1]:
        raise ParseError("no ```input block with the input")
    return {"program": programs[-1], "input": inputs[-1]}


def parse_induction_proposal(text: str) -> dict[str, Any]:
    """Induction proposer: every ```input block (distinct, in order) and the last ```message block."""
    blocks = _blocks(text)
    inputs: list[str] = []
    for body in _tagged(blocks, "input"):
        if body.strip() and body.strip() not in inputs:
            inputs.append(body.strip())
    messages = [body.strip() for body in _tagged(blocks, "message") if body.strip()]
    if not inputs:
        raise ParseError("no ```input blocks")
    if not messages:
        raise ParseError("no ```message block")
    return {"inputs": inputs, "message": messages[-1]}


def parse_r1_answer(text: str) -> dict[str, Any]:
    """The solver's answer: the text of the last `<answer>…</answer>` after a closed `<think>…</think>`.

    Fences inside the answer (```python … ```) are removed, so a program or literal may come fenced."""
    if not _THINK.search(text):
        raise ParseError("no <think>…</think> block (R1 format)")
    answers = _ANSWER.findall(text)
    if not answers:
        raise ParseError("no <answer>…</answer> block (R1 format)")
    answer = answers[-1].strip()
    fenced = _blocks(answer + ("\n" if not answer.endswith("\n") else ""))
    if fenced:
        answer = fenced[-1][1].strip()
    if not answer:
        raise ParseError("empty <answer>")
    return {"answer": answer}


PROPOSAL_PARSERS = {
    "deduction": parse_triplet_proposal,
    "abduction": parse_triplet_proposal,
    "induction": parse_induction_proposal,
}

# Constrained decoding (vLLM `structured_outputs`), as the judge role has: even a tiny model answers in the
# format, so its rewards say something about the task. Bind a role with `sampling: {extra:
# {structured_outputs: null}}` on an endpoint without them; the parsers above accept free text all the same.
SOLVE_REGEX = "[^<]{0,300}</think>\\n<answer>[^<\\n]{1,200}</answer>"
"""The solver's continuation of its `<think>` prefill: a one-line answer (an output literal, call arguments).
Bounded, so that it closes within max_tokens; without '<' (a bounded alternation that allowed it made vLLM's
grammar compile stall for minutes)."""
SOLVE_PROGRAM_REGEX = "[^<]{0,300}</think>\\n<answer>[^<]{1,600}</answer>"
"""Induction's answer is a program (several lines; no '<', see SOLVE_REGEX)."""
TRIPLET_PROPOSAL_REGEX = "```python\\n[^`]{1,1200}```\\n```input\\n[^`\\n]{1,200}\\n```"


def induction_proposal_regex(inputs: int) -> str:
    """Up to `inputs` input blocks, then a message."""
    return f"(```input\\n[^`\\n]{{1,200}}\\n```\\n){{1,{inputs}}}```message\\n[^`]{{1,400}}\\n```"
