"""The text conventions of a TIR transcript: ```python cells, capped ```output blocks, CoRT's messages.

Everything here is plain string work on model text: code is located, never run (it runs only in the sandbox).
"""

from __future__ import annotations

import re

CODE_STOP = ("```\n",)
"""Stop sequences that end generation at the close of a code block (an opening ```python never matches)."""
CALL_CAP_MESSAGE = (
    "[SYSTEM]\nYou have exceeded the allowed number of code executions. You can no longer write or run code. "
    "Please continue solving the problem using your reasoning and analytical skills."
)
"""CoRT's message (paper appendix B; its inference code appends it to the output of the last allowed call)."""
PROMPT_HINT = "Okay, let's try to solve this problem step by step using multiple python code calls."
DELAYED_COMPUTATION_HINT = "It looks tedious, and we can use python code to simplify the reasoning."
RESULT_DISTRUST_HINT = "We don't need to doubt the accuracy of python calculations."
OUTPUT_CAP = 800
"""Characters of a cell's output the model sees; longer output keeps its head and tail."""

_OPEN = re.compile(r"```(?:python|py)[ \t]*\n", re.IGNORECASE)
_WORKER_FRAME = re.compile(r'^\s*File "rolegraph-sandbox-worker".*$', re.MULTILINE)


def closed_code_block(text: str) -> str | None:
    """The code of the last ```python block of `text` when that block is closed by ```, else None."""
    opens = list(_OPEN.finditer(text))
    if not opens:
        return None
    body = text[opens[-1].end() :]
    end = body.find("```")
    if end < 0:
        return None
    return body[:end].rstrip("\n")


def in_open_code_block(text: str) -> bool:
    """True when `text` ends inside a ```python block that is not closed yet."""
    opens = list(_OPEN.finditer(text))
    return bool(opens) and "```" not in text[opens[-1].end() :]


def cap_output(text: str, cap: int = OUTPUT_CAP) -> str:
    """`text` when it fits in `cap` characters, else its head and tail around a note of what was left out."""
    if len(text) <= cap:
        return text
    half = cap // 2
    omitted = len(text) - 2 * half
    return f"{text[:half]}\n... ({omitted} characters omitted) ...\n{text[-half:]}"


def clean_traceback(stderr: str) -> str:
    """A cell's traceback without the sandbox worker's own frames (the model only needs its code's)."""
    return _WORKER_FRAME.sub("", stderr).replace("\n\n", "\n").strip("\n")


def output_block(text: str, *, last_call: bool = False) -> str:
    """The ```output block appended after a cell; the last allowed call carries CoRT's cap message."""
    if last_call:
        text = f"{text}\n\n{CALL_CAP_MESSAGE}"
    return f"```output\n{text}\n```\n"


def hint_text(hint: str) -> str:
    """How an inserted hint reads in the transcript: its own paragraph."""
    return f"\n\n{hint}\n\n"
