"""The TIR loop with a scripted model (one token per character) and real bwrap sandbox sessions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.cort import SessionProvider, cort_graph
from rolegraph.graphs.cort.transcript import (
    CALL_CAP_MESSAGE,
    DELAYED_COMPUTATION_HINT,
    PROMPT_HINT,
)
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from tests.cort.fakes import Script, ScriptedPool, decode

ANSWER_43 = "So the answer is \\boxed{43}."


def problems(tmp_path: Path, answer: str = "43") -> str:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"problem": "What is 6 * 7 + 1?", "answer": answer}) + "\n")
    return str(path)


def run(
    tmp_path: Path, pool: SandboxPool, script: Script, **options: Any
) -> tuple[dict[str, Any], Any, ScriptedPool, SessionProvider]:
    model = ScriptedPool(script)
    sessions = SessionProvider(pool=pool)
    params = RunParams(n=1, options={"problems": problems(tmp_path), **options})
    asyncio.run(run_graph(cort_graph(sessions), model, params, tmp_path / "run", progress=False))
    with Store(tmp_path / "run", create=False) as store:
        episode = store.episodes()[0]
    return episode.final_state or {}, episode, model, sessions


def two_cells(prompt: str) -> str:
    outputs = prompt.count("```output\n")
    if outputs == 0:
        return "Let x be 6*7.\n```python\nx = 6 * 7\nprint(x)\n```\nthis text is never generated"
    if outputs == 1:
        return "Now add one.\n```python\nprint(x + 1)\n```\n"
    return ANSWER_43


def test_cells_run_in_one_session_token_in_token_out_with_a_mask(
    tmp_path: Path, bwrap_pool: SandboxPool
) -> None:
    state, episode, model, sessions = run(tmp_path, bwrap_pool, two_cells)
    assert episode.status == "finished" and episode.kept, episode.reason
    cells = state["tir_cells"]
    assert [c["output"] for c in cells] == ["42", "43"]  # x persisted across cells
    assert [c["status"] for c in cells] == ["ok", "ok"]
    prompts = model.client.prompts
    assert len(prompts) == 3
    assert decode(prompts[0]).endswith(PROMPT_HINT)  # the solver's turn starts with the prompt-hint
    # Every call continues exactly the ids of the one before plus what came back (nothing re-tokenized).
    ids, mask = state["tir_ids"], state["tir_mask"]
    assert prompts[-1] == state["tir_prompt_ids"] + ids[: len(prompts[-1]) - len(state["tir_prompt_ids"])]
    model_part = decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
    interpreter_part = decode([t for t, m in zip(ids, mask, strict=True) if m == 0])
    assert "this text is never generated" not in model_part
    assert model_part.endswith(ANSWER_43) and "print(x + 1)" in model_part
    assert interpreter_part == "```output\n42\n```\n```output\n43\n```\n"
    assert episode.metrics["code_calls"] == 2 and episode.metrics["interpreter_tokens"] == len(
        interpreter_part
    )
    assert episode.rewards == {"correct": 1.0, "code_penalty": 0.0}
    assert sessions.live == 0
    with Store(tmp_path / "run", create=False) as store:
        assert len(store.steps(kind="env", role="interpreter")) == 2


def test_call_cap_sends_corts_message_and_stops_running_code(tmp_path: Path, bwrap_pool: SandboxPool) -> None:
    state, episode, _model, sessions = run(
        tmp_path, bwrap_pool, lambda prompt: "```python\nprint(1)\n```\n", max_calls=2
    )
    assert len(state["tir_cells"]) == 2
    outputs = [s["text"] for s in state["tir_segments"] if s["kind"] == "output"]
    assert CALL_CAP_MESSAGE in outputs[1] and CALL_CAP_MESSAGE not in outputs[0]
    assert outputs[2] == f"```output\n{CALL_CAP_MESSAGE}\n```\n"  # a cell past the cap is not run
    assert state["tir_done"] == "cap" and not episode.kept
    assert sessions.live == 0


def test_long_output_is_capped_and_errors_show_the_cells_traceback(
    tmp_path: Path, bwrap_pool: SandboxPool
) -> None:
    def script(prompt: str) -> str:
        if "```output\n" not in prompt:
            return "```python\nfor i in range(2000):\n    print(i)\n```\n"
        if prompt.count("```output\n") == 1:
            return "```python\n1 / 0\n```\n"
        return "\\boxed{1}"

    state, episode, *_ = run(tmp_path, bwrap_pool, script, output_cap=100)
    first, second = state["tir_cells"]
    assert first["output"].startswith("0\n1\n") and first["output"].endswith("1998\n1999")
    assert "characters omitted" in first["output"] and len(first["output"]) < 140
    assert second["status"] == "error" and second["output"].endswith("ZeroDivisionError: division by zero")
    assert "rolegraph-sandbox-worker" not in second["output"]
    assert episode.metrics["failed_cells"] == 1


@pytest.mark.parametrize("insert", [True, False])
def test_a_firing_detector_inserts_its_hint_with_mask_zero(
    tmp_path: Path, bwrap_pool: SandboxPool, insert: bool
) -> None:
    manual = "We add: 12 * 7 = 84, 84 + 5 = 89, 89 * 3 = 267, 267 - 7 = 260. "

    def script(prompt: str) -> str:
        return ANSWER_43 if manual in prompt else manual

    state, episode, model, _ = run(
        tmp_path, bwrap_pool, script, segment_tokens=len(manual), insert_hints=insert
    )
    assert state["tir_flags"] == {"delayed_computation": 1}
    hinted = DELAYED_COMPUTATION_HINT in decode(model.client.prompts[-1])
    assert hinted is insert
    hint_ids = [t for t, m in zip(state["tir_ids"], state["tir_mask"], strict=True) if m == 0]
    assert (DELAYED_COMPUTATION_HINT in decode(hint_ids)) is insert
    assert episode.metrics["flag_delayed_computation"] == 1


def test_the_session_is_closed_when_the_episode_fails(tmp_path: Path, bwrap_pool: SandboxPool) -> None:
    def script(prompt: str) -> str:
        if "```output\n" in prompt:
            raise RuntimeError("the model crashed")
        return "```python\nx = 1\n```\n"

    _state, episode, _, sessions = run(tmp_path, bwrap_pool, script)
    assert episode.status == "failed" and "the model crashed" in (episode.error or "")
    assert sessions.opened == 1 and sessions.live == 0


def test_a_resumed_episode_gets_its_cells_replayed_into_a_new_session(bwrap_pool: SandboxPool) -> None:
    async def main() -> tuple[str, str]:
        async with SessionProvider(pool=bwrap_pool) as sessions:
            session = await sessions.get("e", replay=["x = 5", "y = x * 2"])
            replayed = (await session.arun_cell("print(x + y)")).stdout
            again = await sessions.get("e", replay=["x = 0"])  # live: nothing is replayed
            return replayed, (await again.arun_cell("print(x)")).stdout

    assert asyncio.run(main()) == ("15\n", "5\n")


def test_a_cell_that_times_out_restarts_the_session_and_says_so(
    tmp_path: Path, bwrap_pool: SandboxPool
) -> None:
    def script(prompt: str) -> str:
        outputs = prompt.count("```output\n")
        if outputs == 0:
            return "```python\nx = 1\nwhile True:\n    pass\n```\n"
        if outputs == 1:
            return "```python\nprint('x' in dir())\n```\n"
        return "\\boxed{43}"

    state, *_ = run(tmp_path, bwrap_pool, script, cell_timeout_s=1.0)
    first, second = state["tir_cells"]
    assert first["status"] == "timeout" and "TimeoutError" in first["output"]
    assert "the interpreter was restarted" in first["output"]
    assert second["output"] == "False" and second["session"] == 1
