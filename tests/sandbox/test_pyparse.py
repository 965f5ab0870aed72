"""Host-side parsing is thread-safe (CPython 3.11.7's AST validator is not: gh-106905)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rolegraph.environments.pyparse import literal_eval, parse_expression, parse_module

NESTED = "[" * 40 + "1" + "]" * 40


def _parse_many(seed: int) -> int:
    total = 0
    for i in range(150):
        total += len(parse_module(f"def f(x):\n    return {NESTED}\nf({seed + i})").body)
        total += isinstance(parse_expression(f"f({NESTED}, key={i})"), object)
        total += literal_eval(f"({i}, {NESTED})")[0] == i
    return total


def test_parsing_from_many_threads_never_raises() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_parse_many, range(8)))
    assert results == [150 * 4] * 8
