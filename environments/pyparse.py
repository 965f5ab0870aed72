"""Parsing Python text on the host from any thread: `ast.parse` and `ast.literal_eval` behind one lock.

CPython 3.11 before 3.11.8 raises `SystemError: AST constructor recursion depth mismatch` when several
threads parse at once (gh-106905). Sandbox pools and graph nodes parse model text from worker threads.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_lock = threading.Lock()


def parse_module(source: str) -> ast.Module:
    with _lock:
        return ast.parse(source, mode="exec")


def parse_expression(source: str) -> ast.Expression:
    with _lock:
        return ast.parse(source, mode="eval")


def literal_eval(text: str) -> Any:
    """`ast.literal_eval` (which parses internally) under the same lock."""
    with _lock:
        return ast.literal_eval(text)
