"""Run (or resume) an eval into a run directory and read its report back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rolegraph.config import RolegraphConfig
from rolegraph.errors import ConfigError
from rolegraph.eval.bindings import Binding
from rolegraph.eval.graph import EvalOptions, eval_graph
from rolegraph.eval.report import EvalReport, read_report
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.role_calls import RolePool
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import STORE_FILE, Store


class PoolProvider:
    """A sandbox provider owning its pool: `await provider()` starts it on first use; `close()` stops it."""

    def __init__(self, backend: str = "auto", size: int = 2) -> None:
        self.backend = backend
        self.size = size
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> Any:
        async with self._lock:
            if self._pool is None:
                from rolegraph.environments.sandbox.pool import SandboxPool

                self._pool = await asyncio.to_thread(SandboxPool, self.backend, size=self.size)
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


@dataclass(frozen=True)
class EvalSettings:
    task: str
    file: Path
    n: int
    """The most problems (the first n of the file)."""
    samples: int = 1
    k: int = 1
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None
    solver: str = "direct"
    solver_role: str = "solver"
    sandbox: str = "auto"
    concurrency: int = 8

    def options(self, bindings: list[Binding]) -> dict[str, Any]:
        """The eval graph's options, JSON-ready (the run stores them)."""
        options = EvalOptions(
            task=self.task,
            file=str(self.file),
            bindings=[{"role": b.role, "label": b.label} for b in bindings],
            solver=self.solver,
            samples=self.samples,
            k=self.k,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
        )
        return EvalOptions.parse(options.model_dump(mode="json")).model_dump(mode="json")


def check_resume(run_dir: Path, params: dict[str, Any]) -> None:
    """A run directory resumes only the eval it was started for (same problems, bindings and sampling)."""
    if not (run_dir / STORE_FILE).is_file():
        return
    with Store(run_dir, create=False) as store:
        run = store.run()
    if run is None:
        return
    if run.graph != "eval":
        raise ConfigError(f"{run_dir} holds a run of graph '{run.graph}'", "use a new --run-dir for the eval")
    stored = {key: run.params.get(key) for key in params}
    if stored != params:
        changed = sorted(
            k for k in params["options"] if run.params.get("options", {}).get(k) != params["options"][k]
        ) or ["n"]
        raise ConfigError(
            f"{run_dir} holds an eval with other settings ({', '.join(changed)} differ)",
            "re-run with the same options to resume it, or use a new --run-dir",
        )


async def evaluate(
    config_or_pool: RolegraphConfig | RolePool,
    bindings: list[Binding],
    settings: EvalSettings,
    run_dir: Path,
    *,
    prompts_dir: Path | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run or resume the eval, write RUN_DIR/eval_summary.json and return the report."""
    options = settings.options(bindings)
    check_resume(run_dir, {"n": settings.n, "options": options})
    sandbox = PoolProvider(settings.sandbox)  # started on first use: code answers, tool-using solver graphs
    graph = eval_graph(
        bindings, sandbox, solver=settings.solver, solver_role=settings.solver_role, prompts_dir=prompts_dir
    )
    try:
        await run_graph(
            graph,
            config_or_pool,
            RunParams(n=settings.n, options=options),
            run_dir,
            concurrency=settings.concurrency,
            console=console,
            progress=progress,
            prompts_dir=prompts_dir,
        )
    finally:
        sandbox.close()
    report = read_report(run_dir)
    report.write()
    return report
