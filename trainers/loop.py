"""Periodic mode: a graph keeps issuing episodes while, every N finished episodes, a trainer runs on the
store's export and hands its adapter off. The graph never waits for training.

Training runs in a worker thread by default. It shares the GIL with the event loop that drives the graph,
which paces the graph; a separate process competes with the graph's load on equal terms and, on few cores,
starves (2 cores, SFT, graph running in both cases: a round took 428 s in a process against 78 s in a
thread). With spare cores or a GPU, `isolation="process"` (a spawned worker kept for every round) avoids
GIL contention.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rolegraph.errors import ConfigError, TrainingError
from rolegraph.store import Store, build_rows
from rolegraph.trainers.base import TrainResult
from rolegraph.trainers.config import DPOSettings, GRPOSettings, SFTSettings, TrainSettings
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry

if TYPE_CHECKING:
    from rolegraph.graphs.base import GraphDef

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
    isolation: Literal["thread", "process"] = "thread"
    """Where training runs: a thread of this process, or a spawned worker process kept for every round."""
    episodes_after: int = 0
    """Episodes begun after the last hand-off (so run on the new adapter) to let finish before stopping."""


def train_rows(
    method: str, settings: TrainSettings, rows: list[dict[str, Any]], out: Path, run_dir: Path | None = None
) -> TrainResult:
    """Run one trainer on in-memory export rows (of `run_dir`'s store, which GRPO reads rewards from)."""
    from rolegraph.trainers.data import to_dataset, validate_row

    for number, row in enumerate(rows, start=1):
        validate_row(row, method, where=f"{run_dir or 'export'} row {number}")
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
    return train_grpo(settings, rows, out, run_dirs=[run_dir] if run_dir is not None else None)


def default_settings(method: str) -> TrainSettings:
    if method not in METHODS:
        raise TrainingError(f"unknown trainer '{method}'", f"use one of: {', '.join(METHODS)}")
    return {"sft": SFTSettings, "dpo": DPOSettings, "grpo": GRPOSettings}[method]()


def check_train_role(graph: GraphDef, role: str) -> None:
    """The trained role must be one the graph calls: its steps are the training rows."""
    if role not in graph.roles:
        raise ConfigError(
            f"--train-role {role}: graph '{graph.name}' has no role '{role}'",
            f"use one of: {', '.join(graph.roles)}",
        )


@dataclass(frozen=True)
class TrainingRound:
    """One training of periodic mode: what it trained on, when, and what the graph did meanwhile."""

    adapter: str
    rows: int
    episodes_before: int
    """Finished episodes when training started."""
    started_at: float
    finished_at: float
    """Wall-clock (time.time) bounds of training, publishing and hand-off."""
    episodes_during: int
    """Episodes that finished inside that window: the graph kept running."""
    handoff_s: float


@dataclass
class LoopReport:
    rounds: list[TrainingRound] = field(default_factory=list)
    episodes: int = 0
    """Finished episodes when the loop stopped."""

    @property
    def adapters(self) -> list[str]:
        return [r.adapter for r in self.rounds]


def _finished_between(run_dir: Path, start: float, end: float) -> int:
    with Store(run_dir, create=False) as store:
        return sum(
            1
            for e in store.episodes(status="finished")
            if e.finished_at is not None and start <= e.finished_at <= end
        )


def _begun_and_finished_since(run_dir: Path, since: float) -> int:
    with Store(run_dir, create=False) as store:
        return sum(1 for e in store.episodes(status="finished") if e.started_at >= since)


def _finished(run_dir: Path) -> int:
    """Finished episodes, read without a writer's connection (the graph is writing meanwhile)."""
    with Store(run_dir, create=False) as store:
        return store.counts()["finished"]


async def periodic(
    pool: Any,
    settings: LoopSettings,
    *,
    registry: AdapterRegistry | None = None,
    on_event: Callable[[str], None] | None = None,
) -> LoopReport:
    """Run the graph and train every `train_every` finished episodes in a worker process (or thread); the
    graph keeps issuing episodes meanwhile, and the role switches to each new adapter at its hand-off."""
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.registry import check_options, get_graph
    from rolegraph.graphs.runtime import run_graph

    registry = registry or AdapterRegistry()
    train = settings.settings or default_settings(settings.trainer)
    train.model = settings.model_dir
    graph = get_graph(settings.graph)
    check_train_role(graph, settings.role)
    check_options(graph, settings.options)
    say = on_event or (lambda _: None)
    report = LoopReport()
    stop = asyncio.Event()

    async def keep_running() -> None:
        n = _finished(settings.run_dir)  # a resumed run dir continues after its finished episodes
        while not stop.is_set():
            n += settings.batch
            params = RunParams(n=n, options=dict(settings.options))
            await run_graph(graph, pool, params, settings.run_dir, progress=False)

    async def wait_for(count: int, counter: Callable[[], int] | None = None) -> int:
        """Wait until `counter()` (default: finished episodes) reaches `count`; graph errors surface here."""
        while True:
            if runner.done():
                runner.result()  # re-raise the graph's error
                raise TrainingError("the graph stopped unexpectedly", "check the run's episodes")
            done = await asyncio.to_thread(counter or (lambda: _finished(settings.run_dir)))
            if done >= count:
                return done
            await asyncio.sleep(0.5)

    executor: Executor = (
        ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        if settings.isolation == "process"
        else ThreadPoolExecutor(max_workers=1, thread_name_prefix="rolegraph-train")
    )
    Store(settings.run_dir).close()  # the schema exists before any reader opens the store read-only
    runner = asyncio.create_task(keep_running())
    try:
        trained_at = await asyncio.to_thread(_finished, settings.run_dir)
        while len(report.rounds) < settings.rounds:
            done = await wait_for(trained_at + settings.train_every)
            trained_at = done
            with Store(settings.run_dir, create=False) as store:
                rows = build_rows(store, fmt=settings.trainer, role=settings.role)
            if not rows:
                say(f"{done} episodes finished, no {settings.trainer} rows for {settings.role} yet")
                continue
            say(f"{done} episodes finished: training {settings.trainer} on {len(rows)} rows")
            started = time.time()
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    executor,
                    train_rows,
                    settings.trainer,
                    train,
                    rows,
                    registry.staging(settings.role),
                    settings.run_dir,
                )
            except BrokenProcessPool:
                raise TrainingError(
                    "the training process died (out of memory?)",
                    "lower the batch size or max length, or train in a thread (the default)",
                ) from None
            adapter = registry.publish(settings.role, result.adapter_dir)
            handoff = await hand_off(pool, settings.role, adapter, keep=settings.keep)
            finished_at = time.time()
            during = await asyncio.to_thread(_finished_between, settings.run_dir, started, finished_at)
            record_training(
                settings.run_dir,
                result,
                inputs=[str(settings.run_dir)],
                adapter=adapter,
                extra_metrics={
                    "episodes": float(done),
                    "episodes_during_training": float(during),
                    "handoff_s": handoff.load_s,
                },
            )
            report.rounds.append(
                TrainingRound(
                    adapter.lora_name, len(rows), done, started, finished_at, during, handoff.load_s
                )
            )
            say(
                f"handed off {adapter.lora_name} in {handoff.load_s:.2f}s; "
                f"{during} episodes finished while training"
            )
        if settings.episodes_after > 0 and report.rounds:
            since = report.rounds[-1].finished_at
            await wait_for(
                settings.episodes_after, lambda: _begun_and_finished_since(settings.run_dir, since)
            )
    finally:
        stop.set()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
        executor.shutdown(wait=True, cancel_futures=True)
    report.episodes = max(report.episodes, await asyncio.to_thread(_finished, settings.run_dir))
    return report
