"""Untrusted text on the terminal: what came from a model, a sandboxed program or a run record.

Such text can carry escape sequences that recolour or hide output, retitle the window or (OSC 52) set the
clipboard. Everything rolegraph prints of it goes through `safe` (a rich Text: never read as markup, control
characters shown as dimmed `\\x1b`-style escapes; newlines and tabs kept) or `escape_controls` (plain text).
`safe_console` adds a render hook that escapes whatever reaches the console without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderHook, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

_BIDI = "\u202a-\u202e\u2066-\u2069"
"""Bidirectional overrides: invisible, and they reorder what the reader sees."""
_CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_CONTROL_OR_NEWLINE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}]")
_DIM = Style(dim=True)


_NAMED = {"\n": "\\n", "\r": "\\r"}


def _code(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def escape_controls(text: str, *, one_line: bool = False) -> str:
    """`text` with every control character (but newline and tab) written as a visible escape, e.g. `\\x1b`.
    With `one_line`, newlines are escaped too."""
    pattern = _CONTROL_OR_NEWLINE if one_line else _CONTROL
    return pattern.sub(lambda m: _code(m.group()), text)


def safe(value: object, style: str | Style = "", *, one_line: bool = False) -> Text:
    """Untrusted text as a rich Text: never read as markup; control characters shown as dimmed escapes."""
    text = str(value)
    pattern = _CONTROL_OR_NEWLINE if one_line else _CONTROL
    out = Text(style=style)
    position = 0
    for match in pattern.finditer(text):
        out.append(text[position : match.start()])
        out.append(_code(match.group()), style=_DIM)
        position = match.end()
    out.append(text[position:])
    return out


class _Escaped:
    """Renders another renderable, then escapes control characters left in its text (not rich's own codes)."""

    def __init__(self, inner: RenderableType) -> None:
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.inner, options):
            yield from _escape_segment(segment)


def _escape_segment(segment: Segment) -> Iterator[Segment]:
    if segment.control or not _CONTROL.search(segment.text):
        yield segment
        return
    dim = (segment.style or Style()) + _DIM
    position = 0
    for match in _CONTROL.finditer(segment.text):
        if match.start() > position:
            yield Segment(segment.text[position : match.start()], segment.style)
        yield Segment(_code(match.group()), dim)
        position = match.end()
    if position < len(segment.text):
        yield Segment(segment.text[position:], segment.style)


class EscapeHook(RenderHook):
    """A console render hook that escapes control characters in everything printed through the console."""

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        return [_Escaped(r) for r in renderables]


def safe_console(**kwargs: Any) -> Console:
    """A rich Console that never writes a raw control character of printed content."""
    console = Console(**kwargs)
    console.push_render_hook(EscapeHook())
    return console
