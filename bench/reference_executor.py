"""The unisolated baseline of bench/sandbox.py: code run the way the Absolute Zero reference executor runs it.

The reference (absolute_zero_reasoner/utils/code_utils/python_executor.py, `PythonExecutor.apply`) keeps one
pebble `ProcessPool`; each `apply(code)` maps the program's lines over that pool with a timeout, and the pool
worker `exec`s them in a fresh copy of a runtime namespace under `timeout_decorator` (SIGALRM), with stdout
captured when the last line prints. Nothing is isolated: this only ever runs the bench's own fixed programs.

We give the baseline every benefit: the pool is created with `width` workers up front (the reference sizes it
from the first batch, so single `apply` calls would get one worker), and no result post-processing is timed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from functools import partial
from typing import Any, ClassVar

from pebble import ProcessPool
from timeout_decorator import timeout

TIMEOUT_S = 10


class Runtime:
    """A namespace for one execution: a shallow copy of the template globals."""

    TEMPLATE: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.globals = copy.copy(self.TEMPLATE)

    def exec_code(self, source: str) -> None:
        exec(source, self.globals)  # the bench's fixed programs only, never model text

    def eval_code(self, expression: str) -> Any:
        return eval(expression, self.globals)


def execute(lines: list[str], timeout_s: int) -> tuple[str, str]:
    """In a pool worker: run the program, returning (captured stdout or last expression's value, report)."""
    runtime = Runtime()
    try:
        if "print(" in lines[-1]:
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                timeout(timeout_s)(runtime.exec_code)("\n".join(lines))
            result: Any = captured.getvalue()
        else:
            timeout(timeout_s)(runtime.exec_code)("\n".join(lines[:-1]))
            result = timeout(timeout_s)(runtime.eval_code)(lines[-1])
        return str(result), "Done"
    except Exception as exc:  # the reference reports the exception line and moves on
        return "", f"{type(exc).__name__}: {exc}"


class ReferenceExecutor:
    """One persistent pebble pool; `apply` runs one program through `pool.map` with a timeout."""

    def __init__(self, width: int) -> None:
        self.pool = ProcessPool(max_workers=width)

    def apply(self, code: str) -> tuple[str, str]:
        lines = code.strip().split("\n")
        future = self.pool.map(partial(execute, timeout_s=TIMEOUT_S), [lines], timeout=TIMEOUT_S)
        results = list(future.result())
        return results[0]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def __enter__(self) -> ReferenceExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
