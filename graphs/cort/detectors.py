"""Detectors of the two behaviours CoRT's hint-engineering corrects, and the calculation/verification split.

A detector looks at the transcript so far and says whether its behaviour just showed; when one fires, the
TIR loop inserts its hint there (or, with hints off, only flags the episode, e.g. for RFT's filter).
Detectors are pluggable: `register_detector` adds one, and the `detectors` option names those a run uses.

Built-in heuristics (documented, deliberately simple, and unit-tested on crafted transcripts):
- `delayed_computation`: the model text since the last code cell (or since the start) holds at least
  `MANUAL_STEPS` hand-written arithmetic equalities (`12 * 7 = 84`, `3^4 = 81`) and no code block: long
  manual arithmetic before the interpreter is used.
- `result_distrust`: the model text after an ```output block re-checks it by hand: a verification phrase
  (verify, double-check, by hand, manually, recompute, …) together with at least one hand-written
  arithmetic equality, before any new code block.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Protocol

from rolegraph.errors import ConfigError
from rolegraph.graphs.cort.transcript import DELAYED_COMPUTATION_HINT, RESULT_DISTRUST_HINT

MANUAL_STEPS = 3
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_OPERATOR = r"(?:[-+*/×÷^]|\\times|\\cdot|\*\*)"
ARITHMETIC = re.compile(rf"{_NUMBER}\s*{_OPERATOR}\s*{_NUMBER}[^=\n]{{0,40}}=\s*{_NUMBER}")
"""A hand-written arithmetic equality: `a op b … = c`."""
VERIFY_WORDS = re.compile(
    r"\b(verify|verif\w*|double[- ]check\w*|re-?check\w*|by hand|manually|re-?calculat\w*|re-?comput\w*|"
    r"let me check|let's check|confirm\w*|sanity check)\b",
    re.IGNORECASE,
)
_CODE_FENCE = re.compile(r"```(?:python|py)\b", re.IGNORECASE)
_OUTPUT_FENCE = "```output"


@dataclass(frozen=True)
class Transcript:
    """What a detector sees: the transcript text so far (model text, outputs and hints, in order)."""

    text: str

    def since_last_code(self) -> str:
        """Text after the last ```output block (all of it when no code ran yet)."""
        at = self.text.rfind(_OUTPUT_FENCE)
        if at < 0:
            return self.text
        close = self.text.find("```", at + len(_OUTPUT_FENCE))
        return self.text[close + 3 :] if close >= 0 else ""

    @property
    def ran_code(self) -> bool:
        return _OUTPUT_FENCE in self.text


class Detector(Protocol):
    """A pluggable detector: a name, the hint it inserts, and the test."""

    @property
    def name(self) -> str: ...

    @property
    def hint(self) -> str: ...

    def fires(self, transcript: Transcript) -> bool: ...


@dataclass(frozen=True)
class DelayedComputation:
    name: str = "delayed_computation"
    hint: str = DELAYED_COMPUTATION_HINT
    manual_steps: int = MANUAL_STEPS

    def fires(self, transcript: Transcript) -> bool:
        text = transcript.since_last_code()
        if _CODE_FENCE.search(text):
            return False
        return len(ARITHMETIC.findall(text)) >= self.manual_steps


@dataclass(frozen=True)
class ResultDistrust:
    name: str = "result_distrust"
    hint: str = RESULT_DISTRUST_HINT

    def fires(self, transcript: Transcript) -> bool:
        if not transcript.ran_code:
            return False
        text = transcript.since_last_code()
        fence = _CODE_FENCE.search(text)
        if fence is not None:
            text = text[: fence.start()]
        return bool(VERIFY_WORDS.search(text)) and bool(ARITHMETIC.search(text))


_DETECTORS: dict[str, Detector] = {d.name: d for d in (DelayedComputation(), ResultDistrust())}
BUILTIN_DETECTORS = tuple(_DETECTORS)


def register_detector(detector: Detector) -> None:
    """Make a detector available by name to the `detectors` option (replaces one of the same name)."""
    _DETECTORS[detector.name] = detector


def get_detectors(names: list[str] | tuple[str, ...]) -> list[Detector]:
    unknown = [n for n in names if n not in _DETECTORS]
    if unknown:
        raise ConfigError(
            f"unknown detector(s): {', '.join(unknown)}",
            f"use some of: {', '.join(_DETECTORS)} (or register one with register_detector)",
        )
    return [_DETECTORS[n] for n in names]


def classify_cell(code: str, preceding_text: str) -> str:
    """'verification' or 'calculation', by a documented heuristic.

    A cell verifies when its code asserts or compares for equality (`assert`, `==`, `!=`, `isclose`), or
    when the model text just before it (its last 200 characters) announces a check (verify, double-check,
    confirm, …). Every other cell calculates. Code is only parsed
    with `ast`, never run.
    """
    if VERIFY_WORDS.search(preceding_text[-200:]):
        return "verification"
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "calculation"
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return "verification"
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            return "verification"
        if isinstance(node, ast.Attribute) and node.attr == "isclose":
            return "verification"
    return "calculation"
