"""Output parsers: completion text → typed fields (a pydantic model's `model_dump()`).

Small models often ignore formats, so parsers accept the common variants and raise `ParseError` with a
one-line reason otherwise. A parser never raises anything else, whatever the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from rolegraph.environments.pyparse import literal_eval
from rolegraph.errors import ParseError

Parser = Callable[[str], dict[str, Any]]
Rating = Literal["perfect", "acceptable", "bad"]

CRITERIA = ("format", "factual_accuracy", "difficulty_alignment", "concept_coverage", "solvability")
"""PromptCoT 1.0's judge rubric."""


class TextOut(BaseModel):
    text: str


class ListOut(BaseModel):
    items: list[str]


class ProposalOut(BaseModel):
    rationale: str
    problem: str


class ProblemOut(BaseModel):
    problem: str


class RationaleOut(BaseModel):
    rationale: str


class BoxedOut(BaseModel):
    answer: str
    source: Literal["boxed", "phrase"]
    """Where the answer came from: the last `\\boxed{}` or, failing that, an 'answer is X' phrase."""


class VerdictOut(BaseModel):
    verdict: Rating
    criteria: dict[str, Rating]
    stated: Rating | None = None
    """The 'Final Judgement' the judge wrote, if any (the verdict is recomputed from complete criteria)."""


def _clean(text: Any) -> str:
    if not isinstance(text, str):
        raise ParseError(f"expected completion text, got {type(text).__name__}")
    return text.replace("\r\n", "\n").strip()


# ---------------------------------------------------------------- text / json


def parse_text(text: str) -> dict[str, Any]:
    """The whole completion, stripped; empty output is a failure."""
    body = _clean(text)
    if not body:
        raise ParseError("empty completion")
    return TextOut(text=body).model_dump()


_FENCE = re.compile(r"```(?:[A-Za-z0-9_+-]*)\n(.*?)```", re.DOTALL)


def parse_json(text: str) -> dict[str, Any]:
    """The first JSON value in the text (fenced or bare); a non-object value is returned as {'value': ...}."""
    body = _clean(text)
    candidates = [m.group(1) for m in _FENCE.finditer(body)] + [body]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (ValueError, RecursionError):
                continue
            return value if isinstance(value, dict) else {"value": value}
    raise ParseError("no JSON object or array found in completion")


# ---------------------------------------------------------------- lists

_ITEM_PREFIX = re.compile(
    r"^\s*(?:[-*•+]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)]\s|(?:knowledge point|concept)\s*\d*\s*:)\s*",
    re.IGNORECASE,
)
_PY_LIST = re.compile(r"\[[^\[\]]*\]", re.DOTALL)
_INTRO = re.compile(r"(?:here (?:are|is)|the following|foundational concepts?|concepts?:$)", re.IGNORECASE)
MAX_ITEM_CHARS = 200


def _tidy_item(item: str) -> str:
    item = re.sub(r"\*\*|__|`", "", item).strip().strip("\"'").strip()
    return item.rstrip(".;,").strip()


def _python_list(body: str) -> list[str] | None:
    for match in _PY_LIST.finditer(body):
        try:
            value = literal_eval(match.group(0))
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
    return None


def parse_list(text: str) -> dict[str, Any]:
    """A list of short items: a Python/JSON list literal, numbered or bulleted lines, or a comma list."""
    body = _clean(text)
    items = _python_list(body)
    if items is None:
        lines = [line for line in body.split("\n") if line.strip()]
        marked = [_ITEM_PREFIX.sub("", line, count=1) for line in lines if _ITEM_PREFIX.match(line)]
        if len(marked) >= 2 or (marked and len(lines) == 1):
            items = marked
        elif len(lines) == 1 or (len(lines) == 2 and _INTRO.search(lines[0])):
            last = lines[-1].split(":", 1)[-1] if _INTRO.search(lines[-1]) else lines[-1]
            items = re.split(r",|;|\band\b", last) if ("," in last or ";" in last) else [last]
        elif marked:
            items = marked
        else:
            items = [line for line in lines if not _INTRO.search(line)]
    seen: set[str] = set()
    unique: list[str] = []
    for raw in items:
        item = _tidy_item(raw)
        key = normalize_concept(item)
        placeholder = item.startswith("<") and item.endswith(">")
        if item and not placeholder and key not in seen and len(item) <= MAX_ITEM_CHARS:
            seen.add(key)
            unique.append(item)
    if not unique:
        raise ParseError("no list items found (expected numbered, bulleted or comma-separated items)")
    return ListOut(items=unique).model_dump()


def normalize_concept(concept: str) -> str:
    """Case- and whitespace-insensitive key for deduplicating concepts."""
    return " ".join(concept.lower().split()).rstrip(".")


# ---------------------------------------------------------------- sections (rationale / problem)

_SECTION = re.compile(
    r"<(?P<tag>[a-z_]+)>(?P<body>.*?)(?:</(?P=tag)>|$)"  # <problem>...</problem>
    r"|<!--\s*BEGIN\s+(?P<btag>[A-Z_ ]+?)\s*-->(?P<bbody>.*?)(?:<!--\s*END\s+(?P=btag)\s*-->|$)",
    re.DOTALL | re.IGNORECASE,
)
_HEADING = re.compile(
    r"^\s*(?:#{1,6}\s*|\*\*)?(?P<name>[A-Za-z][A-Za-z _]{0,40}?)(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$"
)
_INLINE_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?P<name>[A-Za-z][A-Za-z _]{0,40}?)(?:\*\*)?\s*:(?:\*\*)?\s*(?P<rest>.+)$"
)


def _key(name: str) -> str:
    return "_".join(name.lower().split())


def parse_fields(text: str) -> dict[str, Any]:
    """Named sections: `<name>…</name>`, `<!-- BEGIN NAME -->…`, `## Name` headings or `Name:` lines."""
    body = _clean(text)
    fields: dict[str, str] = {}
    for match in _SECTION.finditer(body):
        name = match.group("tag") or match.group("btag")
        value = match.group("body") if match.group("tag") else match.group("bbody")
        if name and value is not None and value.strip():
            fields.setdefault(_key(name), value.strip())
    if fields:
        return fields
    current: str | None = None
    chunks: dict[str, list[str]] = {}
    for line in body.split("\n"):
        heading = (
            _HEADING.match(line)
            if line.lstrip().startswith(("#", "**")) or line.rstrip().endswith(":")
            else None
        )
        inline = _INLINE_LABEL.match(line)
        if heading:
            current = _key(heading.group("name"))
            chunks.setdefault(current, [])
        elif inline and _key(inline.group("name")) in ("rationale", "problem", "thinking_process", "answer"):
            current = _key(inline.group("name"))
            chunks.setdefault(current, []).append(inline.group("rest"))
        elif current is not None:
            chunks[current].append(line)
    fields = {k: "\n".join(v).strip() for k, v in chunks.items() if "\n".join(v).strip()}
    if not fields:
        raise ParseError("no named sections found (expected '## Name' headings or <name> tags)")
    return fields


_PROBLEM_MARK = re.compile(r"(?im)^\s*(?:#{1,6}\s*|\*\*)?problem\b|<problem>|<!--\s*begin\s+problem")
_RATIONALE_HEAD = re.compile(
    r"(?is)^\s*(?:#{1,6}\s*|\*\*)?(?:rationale|thinking process)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?"
)


def split_proposal(text: str) -> tuple[str, str | None]:
    """(rationale, problem or None): the rationale is the marked section or the text before the problem."""
    body = _clean(text)
    try:
        fields = parse_fields(body)
    except ParseError:
        fields = {}
    problem = fields.get("problem") or None
    rationale = fields.get("rationale") or fields.get("thinking_process")
    if not rationale:
        head = _PROBLEM_MARK.split(body, maxsplit=1)[0]
        rationale = _RATIONALE_HEAD.sub("", head, count=1)
        rationale = re.sub(r"(?i)</?rationale>|<!--\s*(?:begin|end)\s+rationale\s*-->", "", rationale).strip()
    return rationale, problem


def parse_proposal(text: str) -> dict[str, Any]:
    """A proposer's rationale and problem. The rationale may be unmarked text before the problem marker."""
    rationale, problem = split_proposal(text)
    if not problem:
        raise ParseError("no problem section found (expected '## Problem' or <problem>…</problem>)")
    if not rationale:
        raise ParseError("no rationale before the problem (expected '## Rationale' then '## Problem')")
    return ProposalOut(rationale=rationale, problem=problem).model_dump()


_PROBLEM_HEAD = re.compile(
    r"(?is)^\s*(?:#{1,6}\s*|\*\*)?problem\s*(?:statement)?\s*(?:\*\*)?\s*:?\s*(?:\*\*)?"
)
_AFTER_PROBLEM = re.compile(r"(?im)^\s*(?:#{1,6}\s|\*\*)?(?:solution|answer|rationale)\b")


def parse_problem(text: str) -> dict[str, Any]:
    """A problem statement alone: an optional 'Problem:' header is dropped, and text after a later heading
    ('## Solution', 'Answer:') is cut off."""
    body = _clean(text)
    body = re.sub(
        r"(?is)^\s*(?:#{1,6}\s*|\*\*)?problem\s*(?:statement)?\s*(?:\*\*)?\s*:?\s*(?:\*\*)?", "", body
    )
    body = re.sub(r"(?is)</?problem>", "", body)
    body = re.split(r"(?im)^\s*(?:#{1,6}\s|\*\*)?(?:solution|answer|rationale)\b", body, maxsplit=1)[
        0
    ].strip()
    if not body:
        raise ParseError("empty problem statement")
    return ProblemOut(problem=body).model_dump()


def parse_rationale(text: str) -> dict[str, Any]:
    """A thinking process: the text after 'Thinking Process:' / '## Rationale' if present, else all of it."""
    body = _clean(text)
    match = re.search(r"(?i)(?:thinking process|rationale)\s*(?:\*\*)?\s*:?(?:\*\*)?\s*\n?", body)
    rationale = body[match.end() :].strip() if match and match.start() < 40 else body
    rationale = re.sub(r"(?i)^</?rationale>|</rationale>\s*$", "", rationale).strip()
    if not rationale:
        raise ParseError("empty rationale")
    return RationaleOut(rationale=rationale).model_dump()


# ---------------------------------------------------------------- boxed answers


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` / `\\fbox{…}` with nested braces; None if absent or unclosed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            char = text[i]
            if char == "{" and text[i - 1] != "\\":
                depth += 1
            elif char == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


_ANSWER_PHRASE = re.compile(
    r"(?:final answer|answer)(?:\s+to\s+(?:this|the)(?:\s+\w+)?)?\s*(?:is|:|=)\s*:?\s*\$*"
    r"(?P<ans>[^\n$]{1,80}?)\$*\s*(?:\.\s|\.$|\n|$)",
    re.IGNORECASE,
)


def parse_boxed(text: str) -> dict[str, Any]:
    """A final math answer: the last `\\boxed{}` (nested braces kept), else the last 'answer is X' phrase."""
    body = _clean(text)
    boxed = last_boxed(body)
    if boxed:
        return BoxedOut(answer=boxed, source="boxed").model_dump()
    phrases = [m.group("ans").strip() for m in _ANSWER_PHRASE.finditer(body)]
    phrases = [p for p in phrases if p]
    if phrases:
        return BoxedOut(answer=phrases[-1], source="phrase").model_dump()
    raise ParseError("no \\boxed{} answer or 'the answer is …' phrase found")


# ---------------------------------------------------------------- judge verdicts

_RATING = r"(perfect|acceptable|bad)"
_CRITERION_NAMES = {
    "format": r"format(?:ting)?",
    "factual_accuracy": r"factual(?:\s+|_)accuracy|accuracy",
    "difficulty_alignment": r"difficulty(?:\s+|_)alignment|difficulty",
    "concept_coverage": r"concept(?:\s+|_)coverage|coverage",
    "solvability": r"solvability",
}
_FINAL = re.compile(r"final\s+(?:judge?ment|verdict)\s*\W{0,6}\s*" + _RATING, re.IGNORECASE)


def _judge_format_regex() -> str:
    """The judge's answer after its `Format:` prefill: five rated criteria with reasons, then a verdict."""
    rating, reason = "(Perfect|Acceptable|Bad)", " - [^\\n]{0,100}"
    labels = ["Factual accuracy", "Difficulty alignment", "Concept coverage", "Solvability"]
    lines = [f" {rating}{reason}"] + [f"{label}: {rating}{reason}" for label in labels]
    return "\\n".join([*lines, "Final Judgement: (perfect|acceptable|bad)"])


JUDGE_FORMAT_REGEX = _judge_format_regex()
"""Constrained decoding for the judge (vLLM `structured_outputs`): even a tiny model answers in the rubric."""


def verdict_from_criteria(
    criteria: dict[str, Rating], rule: Literal["promptcot", "strict"] = "promptcot"
) -> Rating:
    """PromptCoT 1.0's verdict rule.

    `promptcot` (the rule in PromptCoT 1.0's judge prompt): bad if any criterion is bad; perfect if factual
    accuracy and solvability are perfect and at least two of the other three are perfect; else acceptable.
    `strict`: perfect only if every criterion is perfect.
    """
    ratings = [criteria.get(name) for name in CRITERIA]
    if "bad" in ratings:
        return "bad"
    if any(r is None for r in ratings):
        missing = [name for name in CRITERIA if criteria.get(name) is None]
        raise ParseError(f"judge did not rate {', '.join(missing)}")
    if rule == "strict":
        return "perfect" if all(r == "perfect" for r in ratings) else "acceptable"
    core = criteria["factual_accuracy"] == "perfect" and criteria["solvability"] == "perfect"
    others = sum(
        criteria[name] == "perfect" for name in ("format", "difficulty_alignment", "concept_coverage")
    )
    return "perfect" if core and others >= 2 else "acceptable"


def parse_verdict(text: str) -> dict[str, Any]:
    """Judge output: per-criterion ratings (criterion name, then the first rating word within a few lines)
    and the verdict by PromptCoT 1.0's rule; falls back to the stated 'Final Judgement' when criteria are
    incomplete."""
    body = _clean(text)
    lower = body.lower()
    final = _FINAL.findall(body)
    stated: Rating | None = final[-1].lower() if final else None
    scan = _FINAL.split(lower)[0] if final else lower
    criteria: dict[str, Rating] = {}
    for name, pattern in _CRITERION_NAMES.items():
        match = re.search(rf"(?:{pattern})[^\n]*?(?:\n[^\n]*?){{0,2}}?\b{_RATING}\b", scan, re.IGNORECASE)
        if match:
            criteria[name] = match.group(match.lastindex or 1).lower()  # type: ignore[assignment]
    if all(name in criteria for name in CRITERIA) or "bad" in criteria.values():
        verdict = verdict_from_criteria(criteria)
    elif stated is not None:
        verdict = stated
    else:
        raise ParseError(f"judge rated {len(criteria)}/5 criteria and stated no 'Final Judgement'")
    return VerdictOut(verdict=verdict, criteria=criteria, stated=stated).model_dump()


PARSERS: dict[str, Parser] = {
    "text": parse_text,
    "json": parse_json,
    "list": parse_list,
    "fields": parse_fields,
    "proposal": parse_proposal,
    "problem": parse_problem,
    "rationale": parse_rationale,
    "boxed": parse_boxed,
    "verdict": parse_verdict,
}
