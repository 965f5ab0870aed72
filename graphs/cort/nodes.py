"""The TIR generation loop as reusable LangGraph nodes.

`tir_turn` generates, runs the ```python cell the model just closed in the episode's sandbox session (or
answers with CoRT's cap message), and inserts a hint when a detector fires; it loops until the episode is
done, then `tir_finish` closes the session. `add_tir_loop` wires both into any StateGraph whose state has
TIRState's keys.

Token-in, token-out: each turn continues the exact ids so far through the completions API
(`ctx.complete_role`); interpreter output and hints are tokenized once, as the text appended before
sampling, and their ids get mask 0. What is trained is what was generated, with nothing re-tokenized.
"""

from __future__ import annotations

from typing import Any, TypeVar

from langgraph.graph import StateGraph

from rolegraph.environments.sandbox.base import ExecResult, Status
from rolegraph.errors import SandboxError
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.cort.detectors import Transcript, classify_cell, get_detectors
from rolegraph.graphs.cort.sessions import SessionProvider
from rolegraph.graphs.cort.state import CortOptions, TIRState
from rolegraph.graphs.cort.transcript import (
    CALL_CAP_MESSAGE,
    cap_output,
    clean_traceback,
    closed_code_block,
    hint_text,
    in_open_code_block,
    output_block,
)

T = TypeVar("T")
TURN_NODE = "tir_turn"
FINISH_NODE = "tir_finish"
INTERPRETER = "interpreter"
PROMPT_OVERHEAD_CHARS = 800
"""An upper bound on the prompt template's tokens (in characters) before the first call measures it."""
RESTART_NOTE = "(the interpreter was restarted: variables defined before this cell are gone)"
KILLED = (Status.TIMEOUT, Status.MEMORY, Status.OUTPUT_LIMIT)


def options_of(state: TIRState) -> CortOptions:
    return CortOptions.parse(state.get("options", {}))


def model_text(state: TIRState) -> str:
    """The model's own text of the episode (no interpreter output, no hints)."""
    return "".join(s["text"] for s in state.get("tir_segments") or [] if s["kind"] == "model")


def transcript_text(segments: list[dict[str, str]]) -> str:
    return "".join(s["text"] for s in segments)


def _tail(segments: list[dict[str, str]]) -> str:
    """Model text since the last interpreter output or hint (where an unexecuted cell may be)."""
    out: list[str] = []
    for segment in reversed(segments):
        if segment["kind"] != "model":
            break
        out.append(segment["text"])
    return "".join(reversed(out))


def cell_output(result: ExecResult, timeout_s: float) -> str:
    """What the model sees of a cell: stdout, then the traceback or the reason the kernel was stopped."""
    text = result.stdout
    if result.status == Status.ERROR:
        text += clean_traceback(result.stderr) or (result.error or "")
    elif result.status == Status.TIMEOUT:
        text += f"TimeoutError: the cell ran longer than {timeout_s:g} s"
    elif result.status in KILLED:
        text += f"{result.status.value}: {result.error or 'the cell was stopped'}"
    elif result.stderr:
        text += result.stderr
    return text.rstrip("\n")


async def _run_cell(
    ctx: GraphContext,
    sessions: SessionProvider,
    state: TIRState,
    opts: CortOptions,
    cells: list[dict[str, Any]],
    epoch: int,
    code: str,
) -> tuple[ExecResult, bool]:
    """Run `code` in the episode's session (recorded as an `interpreter` step); (result, kernel restarted)."""
    episode = state["episode_id"]
    replay = None
    if not sessions.has_live(episode):
        replay = [c["code"] for c in cells if c["session"] == epoch and c["status"] in ("ok", "error")]

    async def run() -> ExecResult:
        session = await sessions.get(episode, replay)
        result = await session.arun_cell(code, timeout_s=opts.cell_timeout_s)
        if result.status == Status.SANDBOX_ERROR:
            raise SandboxError(
                f"the sandbox session failed: {result.error}", "run `rolegraph sandbox doctor`"
            )
        return result

    result = await ctx.call_env(
        INTERPRETER, node=TURN_NODE, episode_id=episode, request={"cell": len(cells), "code": code}, fn=run
    )
    return result, result.status in KILLED or not sessions.has_live(episode)


async def tir_turn(state: TIRState, ctx: GraphContext, sessions: SessionProvider) -> dict[str, Any]:
    """One turn: a generation call, then the cell it closed (or the cap message), then any hint."""
    try:
        return await _turn(state, ctx, sessions, options_of(state))
    except BaseException:
        await sessions.close(state["episode_id"])
        raise


async def _turn(
    state: TIRState, ctx: GraphContext, sessions: SessionProvider, opts: CortOptions
) -> dict[str, Any]:
    tir = state.get("mode", "tir") == "tir"
    ids = list(state.get("tir_ids") or [])
    mask = list(state.get("tir_mask") or [])
    segments = list(state.get("tir_segments") or [])
    cells = list(state.get("tir_cells") or [])
    pending = list(state.get("tir_pending") or [])
    flags = dict(state.get("tir_flags") or {})
    fired_at = dict(state.get("tir_fired_at") or {})
    hints = list(state.get("tir_hints") or [])
    refused = int(state.get("tir_refused") or 0)
    epoch = int(state.get("tir_session") or 0)
    model_tokens = int(state.get("tir_model_tokens") or 0)
    turns = int(state.get("tir_turns") or 0) + 1
    problem = state["problem"]
    prompt_len = len(state.get("tir_prompt_ids") or []) or len(problem["problem"]) + PROMPT_OVERHEAD_CHARS
    append = "".join(p["text"] for p in pending)
    budget = opts.max_tokens - model_tokens
    room = opts.max_context - prompt_len - len(ids) - len(append)
    if min(budget, room) < 1:
        return {"tir_done": "length" if budget < 1 else "context", "tir_turns": turns}

    sampling: dict[str, Any] = {
        "n": 1,
        "max_tokens": min(budget, room, opts.segment_tokens),
        "extra": {"include_stop_str_in_output": True},
    }
    if tir:
        sampling["stop"] = list(opts.stop)
    if opts.temperature is not None:
        sampling["temperature"] = opts.temperature
    if opts.seed is not None:
        sampling["seed"] = opts.seed + int(state.get("sample") or 0) * 1000 + turns
    variables = {"problem": problem["problem"]}
    if tir:
        variables["prompt_hint"] = opts.prompt_hint
    step = await ctx.complete_role(
        opts.role if tir else opts.plain_role,
        node=TURN_NODE,
        episode_id=state["episode_id"],
        variables=variables,
        continuation_ids=ids,
        append_text=append,
        **sampling,
    )
    if step.error or not step.choices:
        return {"failed": f"model call failed: {step.error or 'no choice'}", "tir_turns": turns}
    chat_len = int((step.request or {})["chat_prompt_tokens"])
    full = list(step.prompt_token_ids or [])
    appended = full[chat_len + len(ids) :]
    ids += appended
    mask += [0] * len(appended)
    segments += pending
    choice = step.choices[0]
    generated = list(choice.token_ids or [])
    ids += generated
    mask += [1] * len(generated)
    model_tokens += len(generated)
    segments.append({"kind": "model", "text": choice.text})
    pending = []
    done: str | None = None
    tail = _tail(segments)
    code = closed_code_block(tail) if tir else None
    if code is not None:
        if len(cells) >= opts.max_calls:
            refused += 1
            pending.append({"kind": "output", "text": output_block(CALL_CAP_MESSAGE)})
            done = "cap" if refused > 1 else None
        else:
            result, restarted = await _run_cell(ctx, sessions, state, opts, cells, epoch, code)
            shown = cap_output(cell_output(result, opts.cell_timeout_s), opts.output_cap)
            if restarted:
                shown = f"{shown}\n{RESTART_NOTE}"
            cells.append(
                {
                    "code": code,
                    "status": result.status.value,
                    "output": shown,
                    "duration_s": result.duration_s,
                    "use": classify_cell(code, tail[: tail.rfind("```")]),
                    "session": epoch,
                }
            )
            epoch += int(restarted)
            last = len(cells) == opts.max_calls
            pending.append({"kind": "output", "text": output_block(shown, last_call=last)})
    if tir and not in_open_code_block(tail):
        transcript = Transcript(transcript_text(segments))
        for detector in get_detectors(opts.detectors):
            if fired_at.get(detector.name) == len(cells) or not detector.fires(transcript):
                continue
            fired_at[detector.name] = len(cells)
            flags[detector.name] = flags.get(detector.name, 0) + 1
            if opts.insert_hints and hints.count(detector.name) < opts.hints_per_kind:
                hints.append(detector.name)
                pending.append({"kind": "hint", "text": hint_text(detector.hint)})
    if done is None and not pending:
        if choice.finish_reason == "length":
            done = "length" if model_tokens >= opts.max_tokens else None
        elif not (tir and any(choice.text.endswith(s) for s in opts.stop)):
            done = "eos"
    if done is None and turns >= opts.max_turns:
        done = "turns"
    return {
        "tir_prompt_ids": full[:chat_len],
        "tir_ids": ids,
        "tir_mask": mask,
        "tir_segments": segments,
        "tir_cells": cells,
        "tir_pending": pending,
        "tir_flags": flags,
        "tir_fired_at": fired_at,
        "tir_hints": hints,
        "tir_refused": refused,
        "tir_session": epoch,
        "tir_model_tokens": model_tokens,
        "tir_turns": turns,
        "tir_done": done,
    }


def route_turn(state: TIRState) -> str:
    """Conditional edge after a turn: another turn, or finish."""
    return "finish" if state.get("tir_done") or state.get("failed") else "turn"


async def tir_finish(state: TIRState, sessions: SessionProvider) -> dict[str, Any]:
    """Close the episode's session (the loop's last node; failures and kills close it in `tir_turn`)."""
    await sessions.close(state["episode_id"])
    return {}


def add_tir_loop(
    graph: StateGraph, ctx: GraphContext, sessions: SessionProvider, *, after: str, then: str
) -> None:
    """Add the TIR loop's nodes to `graph`, entered from node `after` and leaving to node `then`."""

    async def turn(state: TIRState) -> dict[str, Any]:
        return await tir_turn(state, ctx, sessions)

    async def finish(state: TIRState) -> dict[str, Any]:
        return await tir_finish(state, sessions)

    graph.add_node(TURN_NODE, turn)
    graph.add_node(FINISH_NODE, finish)
    graph.add_edge(after, TURN_NODE)
    graph.add_conditional_edges(TURN_NODE, route_turn, {"turn": TURN_NODE, "finish": FINISH_NODE})
    graph.add_edge(FINISH_NODE, then)
