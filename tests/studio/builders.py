"""Tiny run directories written directly with the Store (no model, no graph run), for the studio's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rolegraph.serving.types import Choice
from rolegraph.store import Step, Store

HOSTILE = [
    "<script>window.__pwned = (window.__pwned || 0) + 1</script>",
    '<img src=x onerror="window.__pwned = (window.__pwned || 0) + 1">',
    "</pre></div></td></tr></table><h1 id=broken>broken <b>HTML",
    '"><svg onload="window.__pwned=1"><a href="javascript:window.__pwned=1">click</a>',
    "\x1b[31mred\x1b[0m \x1b]52;c;ZXZpbA==\x07 \u202eevil",
    "x" * 50_000,
    "{{ 7 * 7 }} {% raw %}",
]
"""Completions a model might write to attack a page: scripts, handlers, broken markup, ANSI, huge lines."""


def seed_run(
    run_dir: Path,
    *,
    episodes: int = 6,
    graph: str = "promptcot",
    texts: list[str] | None = None,
    model: str = "smollm2-135m-instruct",
) -> Path:
    """A run of `episodes` promptcot-like episodes: proposer, solver (2 choices) and judge steps, rewards."""
    with Store(run_dir) as store:
        store.start_run(
            graph,
            {},
            0,
            {"n": episodes},
            [
                {"name": "verdict", "weight": 1.0, "train": True},
                {"name": "majority", "weight": 1.0, "train": True},
            ],
        )
        for i in range(episodes):
            key = f"0-{i:05d}-ep"
            store.begin_episode(key, {"episode_id": key, "concepts": [f"concept {i}"]})
            text = (texts or ["Problem: what is 2+3?"])[i % len(texts or [""])]
            _step(store, key, "propose", "proposer", [Choice(text=text, parsed={"problem": text})], model)
            solve = _step(
                store,
                key,
                "solve",
                "solver",
                [
                    Choice(text=f"answer {i % 3}", parsed={"answer": str(i % 3)}),
                    Choice(text="5", parse_error="no box"),
                ],
                "solver-v2" if i % 2 else model,
            )
            store.add_rewards(solve.id, [{"majority": 1.0}, {"majority": 0.0}])
            if i % 3 == 2:
                store.fail_episode(key, "endpoint error: connection refused", "endpoint_down")
                continue
            verdict = [1.0, 0.5, 0.0][i % 3]
            store.finish_episode(
                key,
                {"episode_id": key, "problem": text, "verdict": "perfect"},
                kept=verdict > 0.4,
                reason=None if verdict > 0.4 else "judge said bad",
                rewards={"verdict": verdict},
                metrics={"agreement": 0.5},
            )
        store.record_training(
            trainer="grpo",
            inputs=[str(run_dir)],
            hyperparams={"lr": 1e-4},
            metrics={"log_history": [{"step": s, "loss": 1.0 / s, "reward": s / 10} for s in range(1, 8)]},
            adapter_name="proposer",
            adapter_version="v1",
        )
    return run_dir


def _step(store: Store, key: str, node: str, role: str, choices: list[Choice], model: str, **kw: Any) -> Step:
    return store.record_step(
        Step(
            id=0,
            episode_id=key,
            attempt=1,
            kind="role",
            node=node,
            role=role,
            endpoint="local",
            model=model,
            sampling={"temperature": 0.7, "max_tokens": 32},
            messages=[
                {"role": "system", "content": "You write problems."},
                {"role": "user", "content": "Go"},
            ],
            choices=choices,
            prompt_tokens=12,
            completion_tokens=8 * len(choices),
            latency_s=0.25,
            started_at=1_700_000_000.0,
            **kw,
        )
    )
