"""The cort graph on the real vLLM server and real bwrap sandbox sessions (tiny generations).

The built-in 135M model rarely writes runnable code on its own, so the solver is bound with a vLLM
structured-outputs regex that makes every turn one small ```python cell: the loop, the stop sequence, the
token-in/token-out continuation, the mask and the call cap then run against the real server deterministically.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path

from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.cort import SessionProvider, cort_graph
from rolegraph.graphs.cort.transcript import CALL_CAP_MESSAGE
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from tests.fixtures.serving import VLLMServer

CELL_REGEX = r"```python\nprint\([1-9] \* [1-9]\)\n```\n"


def config(server: VLLMServer) -> RolegraphConfig:
    forced = SamplingParams(
        max_tokens=32, temperature=1.0, extra={"structured_outputs": {"regex": CELL_REGEX}}
    )
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=server.base_url)},
        roles={
            "cort_solver": RoleBinding(endpoint="local", model=server.model, sampling=forced),
            "solver": RoleBinding(endpoint="local", model=server.model),
        },
    )


def test_tir_episode_on_vllm_continues_token_ids_and_masks_interpreter_tokens(
    tmp_path: Path, vllm_server: VLLMServer, bwrap_pool: SandboxPool
) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"problem": "What is 3 * 4?", "answer": "12"}) + "\n")
    sessions = SessionProvider(pool=bwrap_pool)
    params = RunParams(n=1, options={"problems": str(problems), "max_calls": 1, "max_tokens": 64, "seed": 0})
    asyncio.run(
        run_graph(cort_graph(sessions), config(vllm_server), params, tmp_path / "run", progress=False)
    )
    with Store(tmp_path / "run", create=False) as store:
        (episode,) = store.episodes()
        steps = store.steps(kind="role", role="cort_solver")
    state = episode.final_state or {}
    assert episode.status == "finished", episode.error
    (cell,) = state["tir_cells"]
    a, b = map(int, re.fullmatch(r"print\((\d) \* (\d)\)", cell["code"]).groups())  # type: ignore[union-attr]
    assert cell["status"] == "ok" and cell["output"] == str(a * b)
    assert state["tir_done"] == "cap"
    outputs = [s["text"] for s in state["tir_segments"] if s["kind"] == "output"]
    assert CALL_CAP_MESSAGE in outputs[0] and outputs[-1] == f"```output\n{CALL_CAP_MESSAGE}\n```\n"
    assert len(steps) == 3 and all(s.model == vllm_server.model for s in steps)
    for before, after in itertools.pairwise(steps):
        generated = before.choices[0].token_ids or []
        assert generated and after.prompt_token_ids is not None and before.prompt_token_ids is not None
        assert after.prompt_token_ids[: len(before.prompt_token_ids) + len(generated)] == (
            before.prompt_token_ids + generated
        )
    ids, mask = state["tir_ids"], state["tir_mask"]
    assert len(ids) == len(mask)
    assert sum(mask) == sum(len(s.choices[0].token_ids or []) for s in steps)
    assert 0 < episode.metrics["interpreter_tokens"] == len(mask) - sum(mask)
    assert (
        steps[-1].prompt_token_ids
        == state["tir_prompt_ids"]
        + ids[: len(steps[-1].prompt_token_ids or []) - len(state["tir_prompt_ids"])]
    )
    assert sessions.live == 0
