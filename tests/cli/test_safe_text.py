"""Model text never reaches the terminal raw: hostile completions, program output and run records go through
every command that shows run content, and no raw control byte comes out."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from rolegraph.config import SamplingParams
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import run_graph
from rolegraph.serving.types import Choice
from rolegraph.store import Step, Store
from rolegraph.terminal import escape_controls, safe, safe_console
from tests.cli.conftest import Cli
from tests.runtime.fakes import FakePool

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "critique" / "graph.yaml"
HOSTILE = (
    "red \x1b[31mALERT\x1b[0m, title \x1b]0;pwned\x07, clipboard \x1b]52;c;cm0gLXJmIH4=\x07,"
    " csi \x9b2J, bell \x07, cr \rover, del \x7f, bidi \u202egnp.exe, markup [bold]x[/] [/oops]"
)
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _assert_clean(text: str) -> None:
    found = RAW.search(text)
    context = text[max(0, found.start() - 40) :][:80] if found else ""
    assert found is None, f"raw {found.group()!r} at {found.start()}: {context!r}"


def _hostile_run(run_dir: Path) -> str:
    """A store whose every free-text field is hostile; returns the hostile episode's id."""
    episode = f"ep-{HOSTILE[:12]}"
    with Store(run_dir) as store:
        store.start_run(f"graph {HOSTILE}", {}, 0, {}, [{"name": "accepted", "weight": 1.0, "train": True}])
        store.begin_episode(episode, {"problem": HOSTILE})
        step = store.record_step(
            Step(
                id=0,
                episode_id=episode,
                attempt=1,
                kind="role",
                node=f"node {HOSTILE}",
                role=f"solver{HOSTILE[:8]}",
                endpoint="local",
                model=f"model{HOSTILE[:10]}",
                messages=[{"role": f"user{HOSTILE[:6]}", "content": HOSTILE}],
                choices=[
                    Choice(text=HOSTILE, finish_reason="stop", parsed={"answer": HOSTILE}),
                    Choice(text=HOSTILE, finish_reason="length", parse_error=f"no answer in {HOSTILE}"),
                ],
                metrics={HOSTILE[:9]: 1.0},
                error=None,
                checkpoint="task-1",
            )
        )
        store.add_rewards(step.id, [{"accepted": 1.0}, {f"r{HOSTILE[:9]}": None}])
        store.record_step(
            Step(
                id=0,
                episode_id=episode,
                attempt=1,
                kind="env",
                node="run",
                role="sandbox",
                request={"code": f"print({HOSTILE!r})"},
                response={"stdout": HOSTILE, "stderr": HOSTILE},
                error=f"program said {HOSTILE}",
                error_kind="sandbox",
                checkpoint="task-2",
            )
        )
        store.finish_episode(
            episode, {"answer": HOSTILE}, kept=False, reason=f"judge: {HOSTILE}", rewards={"accepted": 0.0}
        )
        store.begin_episode(f"failed {HOSTILE[:15]}", {"problem": HOSTILE})
        store.fail_episode(f"failed {HOSTILE[:15]}", f"endpoint error: {HOSTILE}", "endpoint_down")
        store.begin_episode(f"empty {HOSTILE[:15]}", {})
        store.finish_episode(f"empty {HOSTILE[:15]}", {}, kept=True)  # no steps: a `runs check` problem
    return episode


def test_the_sanitiser_escapes_controls_and_keeps_newlines_and_tabs() -> None:
    assert escape_controls("a\x1b[31mb\tc\nd\x9be\u202e") == "a\\x1b[31mb\tc\nd\\x9be\\u202e"
    assert escape_controls("a\nb\rc", one_line=True) == "a\\nb\\rc"
    text = safe("x\x1by [bold]z[/]")
    assert text.plain == "x\\x1by [bold]z[/]"  # never read as markup
    assert [(text.plain[s.start : s.end], str(s.style)) for s in text.spans] == [("\\x1b", "dim")]
    out = io.StringIO()
    safe_console(file=out, width=200).print(f"raw {HOSTILE}", markup=False)  # the hook catches what slips by
    _assert_clean(out.getvalue())
    assert "\\x1b]52;c;" in out.getvalue()


def test_every_command_that_shows_run_content_prints_no_raw_control(cli: Cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "hostile"
    episode = _hostile_run(run_dir)
    outputs: list[tuple[str, Any]] = []
    for args in (
        ("runs", "show", run_dir),
        ("runs", "show", run_dir, "--episode", episode),
        ("runs", "show", run_dir, "--episode", f"failed {HOSTILE[:15]}"),
        ("runs", "show", run_dir, "--episode", "no-such-episode"),  # the error lists hostile episode ids
        ("runs", "list", tmp_path / "runs"),
        ("runs", "check", run_dir),
        ("export", run_dir, "--format", "raw", "--out", tmp_path / "raw.jsonl"),
    ):
        result = cli(*args)
        outputs.append((args, result))
        _assert_clean(result.out)
        _assert_clean(result.err)
    show = outputs[1][1]
    assert show.code == 0 and "\\x1b[31mALERT" in show.out and "[bold]x[/]" in show.out
    assert "\\x1b]52;c;" in show.out and "\\u202egnp.exe" in show.out  # visible, not acted on
    error = outputs[3][1].one_line_error("has no episode")
    assert "\\x1b" in error
    assert outputs[5][1].code == 1 and "has no current steps" in outputs[5][1].out


async def test_progress_and_summary_of_a_run_print_no_raw_control(tmp_path: Path) -> None:
    def hostile(messages: list[dict[str, Any]], sampling: SamplingParams) -> list[str]:
        return [HOSTILE] * sampling.n

    graph = dataclasses.replace(get_graph(EXAMPLE), name=f"critique {HOSTILE[:20]}")
    out = io.StringIO()
    console = Console(file=out, width=120)
    summary = await run_graph(
        graph, FakePool({"solver": hostile, "critic": hostile}), RunParams(n=2), tmp_path, console=console
    )
    summary.render(console)
    assert summary.finished == 2 and "\\x1b[31m" in out.getvalue()
    _assert_clean(out.getvalue())
