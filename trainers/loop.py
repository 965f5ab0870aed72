"""Periodic mode: a graph keeps issuing episodes while, every N finished episodes, a trainer runs in a worker
thread on the store's export and hands its adapter off. The graph never waits for training."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.trainers.base import TrainResult
from rolegraph.trainers.config import DPOSettings, GRPOSettings, SFTSettings, TrainSettings
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

from rolegraph.errors import TrainingError
from rolegraph.store import Store, build_rows

METHODS = ("sft", "dpo", "grpo")


@dataclass
class LoopSettings:
    graph: str
    run_dir: Path
    model_dir: Path
    train_every: int = 4
    trainer: str = "sft"
    role: str = "solver"
    """The role trained (rows from its steps) and switched to the new adapter."""
    rounds: int = 1
    """How many trainings to run before stopping (the graph runs until the last hand-off)."""
    batch: int = 2
    """Episodes per graph call; the graph is called again and again with a growing n."""
    options: dict[str, Any] = field(default_factory=dict)
    settings: TrainSettings | None = None
    keep: int = 2


def train_rows(
    method: str, settings: TrainSettings, rows: list[dict[str, Any]], out: Path, run_dir: Path
) -> TrainResult:
    """Run one trainer on in-memory export rows."""
    from datasets import Dataset
    from rolegraph.trainers.data import to_dataset, validate_row

    for number, row in enumerate(rows, start=1):
        validate_row(row, method, where=f"{run_dir} export row {number}")
    if method == "sft":
        from rolegraph.trainers.sft import train_sft

        assert isinstance(settings, SFTSettings)
        return train_sft(settings, to_dataset(rows, "sft"), out)
    if method == "dpo":
        from rolegraph.trainers.dpo import train_dpo

        assert isinstance(settings, DPOSettings)
        return train_dpo(settings, to_dataset(rows, "dpo"), out)
    from rolegraph.trainers.grpo import train_grpo

    assert isinstance(settings, GRPOSettings)
    del Dataset
    return train_grpo(settings, rows, out, run_dirs=[run_dir])


def default_settings(method: str) -> TrainSettings:
    if method not in METHODS:
        raise TrainingError(f"unknown trainer '{method}'", f"use one of: {', '.join(METHODS)}")
    return {"sft": SFTSettings, "dpo": DPOSettings, "grpo": GRPOSettings}[method]()


async def periodic(
    pool: Any,
    settings: LoopSettings,
    *,
    registry: AdapterRegistry | None = None,
    on_event: Callable[[str], None] | None = None,
) -> list[str]:
    """Run the graph and train every `train_every` finished episodes; returns the adapters handed off."""
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.registry import get_graph
    from rolegraph.graphs.runtime import run_graph

    registry = registry or AdapterRegistry()
    train = settings.settings or default_settings(settings.trainer)
    train.model = settings.model_dir
    graph = get_graph(settings.graph)
    say = on_event or (lambda _: None)
    handed: list[str] = []
    stop = asyncio.Event()

    async def keep_running() -> None:
        n = 0
        while not stop.is_set():
            n += settings.batch
            params = RunParams(n=n, options=dict(settings.options))
            await run_graph(graph, pool, params, settings.run_dir, progress=False)

    def finished() -> int:
        with Store(settings.run_dir) as store:
            return store.counts()["finished"]

    runner = asyncio.create_task(keep_running())
    try:
        trained_at = 0
        while len(handed) < settings.rounds:
            if runner.done():
                runner.result()  # re-raise the graph's error
                raise TrainingError(
                    "the graph stopped before training could start", "check the run's episodes"
                )
            done = await asyncio.to_thread(finished)
            if done - trained_at < settings.train_every:
                await asyncio.sleep(0.5)
                continue
            trained_at = done
            with Store(settings.run_dir) as store:
                rows = build_rows(store, fmt=settings.trainer, role=settings.role)
            if not rows:
                say(f"{done} episodes finished, no {settings.trainer} rows for {settings.role} yet")
                continue
            say(f"{done} episodes finished: training {settings.trainer} on {len(rows)} rows")
            result = await asyncio.to_thread(
                train_rows, settings.trainer, train, rows, registry.staging(settings.role), settings.run_dir
            )
            adapter = registry.publish(settings.role, result.adapter_dir)
            report = await hand_off(pool, settings.role, adapter, keep=settings.keep)
            record_training(
                settings.run_dir,
                result,
                inputs=[str(settings.run_dir)],
                adapter=adapter,
                extra_metrics={"episodes": float(done), "handoff_s": report.load_s},
            )
            handed.append(adapter.lora_name)
            say(f"handed off {adapter.lora_name} in {report.load_s:.2f}s")
    finally:
        stop.set()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
    return handed
