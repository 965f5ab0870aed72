"""PromptCoT 2.0's EM loop: a rationale model q(z|c,x) and a problem model p(z,x|c), two LoRA adapters on
one base, trained in turn. Every model call is a graph run on the runtime (rolegraph.graphs.em):

    RUN_DIR/concepts    em_concepts: c for seeds that have none (once)
    RUN_DIR/itN/e       E-step: k rationales per seed from q, scored by log p(z,x|c) under p, argmax selected
                        → SFT q on the selected (c, x) → z rows, hand-off
    RUN_DIR/itN/m       M-step: z* decoded greedily from the new q, log p(x|z*,c) under p
                        → SFT p on c → prefill + z* + x rows, hand-off
    RUN_DIR/itN/after   log p(x|z*,c) under the new p

RUN_DIR's own store (graph "em") keeps the training records; each says which iteration and role it trained
and which adapter it started from. Re-running RUN_DIR resumes: graph runs skip finished episodes, trained
adapters are not trained again, and finished iterations are followed by the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rolegraph.errors import TrainingError
from rolegraph.graphs.base import GraphDef, RunParams
from rolegraph.graphs.em.graph import EM_CONCEPTS, EM_E, EM_M, EM_SCORE
from rolegraph.graphs.em.state import P_ROLE, Q_ROLE, proposal_continuation
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from rolegraph.store.records import Step, TrainingRunRecord
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.data import jsonl_values
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion
from rolegraph.trainers.sft import train_sft

GRAPH = "em"
"""The graph name of the training run's own store (`rolegraph runs show` renders it with render_em_report)."""
__all__ = ["P_ROLE", "Q_ROLE", "EMLoop", "EMSettings", "IterationReport", "iteration_reports"]


@dataclass(frozen=True)
class Seed:
    """One seed problem x with its concepts c (empty until extracted)."""

    id: str
    problem: str
    concepts: tuple[str, ...] = ()

    def option(self, **extra: Any) -> dict[str, Any]:
        """The seed as an episode input of the EM graphs."""
        return {"id": self.id, "problem": self.problem, "concepts": list(self.concepts), **extra}


@dataclass
class EMSettings:
    """The EM loop's knobs. Tiny CPU defaults; `sft` holds the trainer settings used for both q and p."""

    seeds: Path
    run_dir: Path
    model_dir: Path
    iterations: int = 1
    num_seeds: int = 2
    k: int = 2
    max_tokens: int = 64
    temperature: float = 0.9
    difficulty: str = "competition"
    concepts_k: int = 3
    keep: int = 2
    from_scratch: bool = False
    """Train each iteration's adapters from the base model instead of continuing the previous ones."""
    concurrency: int = 8
    prompts_dir: Path | None = None
    sft: SFTSettings = field(default_factory=SFTSettings)

    def graph_options(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "difficulty": self.difficulty,
            "concepts_k": self.concepts_k,
        }


@dataclass
class IterationReport:
    """One iteration's figures, read back from the run dir (None where that phase has not finished)."""

    iteration: int
    mean_best_reward: float | None
    """Mean over seeds of the selected rationale's log p(z,x|c)."""
    mean_log_p_x_before: float | None
    """Mean log p(x|z*,c) under p before the M-step."""
    mean_log_p_x_after: float | None
    q_adapter: str | None
    p_adapter: str | None
    q_started_from: str | None = None
    """The adapter q's training continued from (None: the base model)."""
    p_started_from: str | None = None
    selected: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class IterationDirs:
    e: Path
    m: Path
    after: Path


def iteration_dirs(run_dir: Path, iteration: int) -> IterationDirs:
    base = Path(run_dir) / f"it{iteration}"
    return IterationDirs(e=base / "e", m=base / "m", after=base / "after")


def load_seeds(path: Path, limit: int) -> list[Seed]:
    """Seeds from a JSONL of problems (math500_dev.jsonl's format; `id` and `concepts` optional)."""
    if not Path(path).is_file():
        raise TrainingError(
            f"seed file {path} does not exist", "pass a JSONL of problems, e.g. math500_dev.jsonl"
        )
    seeds: list[Seed] = []
    for number, row in jsonl_values(path, "fix or drop it"):
        if not isinstance(row, dict) or not str(row.get("problem", "")).strip():
            raise TrainingError(
                f"{path}: line {number} has no 'problem'", "give every line a 'problem' field"
            )
        concepts = row.get("concepts") or []
        seeds.append(
            Seed(
                id=str(row.get("id", f"seed{number}")),
                problem=str(row["problem"]),
                concepts=tuple(str(c) for c in concepts),
            )
        )
        if len(seeds) >= limit:
            break
    if not seeds:
        raise TrainingError(f"seed file {path} has no problems", "pass a JSONL with one problem per line")
    return seeds


# --- training rows, read back from the graph runs' stores --------------------------------------------------
def q_rows(e_dir: Path) -> list[dict[str, Any]]:
    """q's rows: the E-step's sampling prompt → each selected rationale, as q wrote it."""
    rows = []
    with Store(e_dir, create=False) as store:
        for step in store.steps(kind="role", finished_only=True):
            if step.node != "e_sample":
                continue
            for choice, rewards in zip(step.choices, step.rewards, strict=False):
                if rewards.get("selected") == 1.0:
                    rows.append(
                        {
                            "prompt": step.messages,
                            "completion": [{"role": "assistant", "content": choice.text}],
                        }
                    )
    return rows


def p_row(step: Step) -> dict[str, Any]:
    """A scoring step of log p(z,x|c) as an SFT row for p: prompt = c (the proposer's messages without the
    assistant prefill), completion = prefill + z + x, so p learns exactly what was scored."""
    messages = list(step.messages)
    prefill = ""
    if messages and messages[-1]["role"] == "assistant":
        prefill = messages.pop()["content"]
    return {"prompt": messages, "completion": [{"role": "assistant", "content": prefill + step.texts[0]}]}


def p_rows(m_dir: Path) -> list[dict[str, Any]]:
    """p's rows: for each finished M-step episode, its log p(z*,x|c) scoring step (not the z* prefix)."""
    with Store(m_dir, create=False) as store:
        targets = {
            e.id: proposal_continuation(e.final_state["rationale"], e.final_state["problem"])
            for e in store.episodes(status="finished", kept=True)
            if e.final_state
        }
        return [
            p_row(step)
            for step in store.steps(kind="role", finished_only=True)
            if step.node == "m_score" and step.texts == [targets.get(step.episode_id)]
        ]


# --- reading an EM run back ---------------------------------------------------------------------------------
def _final_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Final states of the kept episodes of a graph run ({} when it has not started)."""
    if not (run_dir / "store.sqlite").is_file():
        return {}
    with Store(run_dir, create=False) as store:
        return {e.id: e.final_state or {} for e in store.episodes(status="finished", kept=True)}


def _finished_ids(run_dir: Path) -> set[str]:
    """Episodes of a graph run that finished, kept or rejected."""
    if not (run_dir / "store.sqlite").is_file():
        return set()
    with Store(run_dir, create=False) as store:
        return store.finished_ids()


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _em_records(store: Store) -> dict[tuple[int, str], TrainingRunRecord]:
    """(iteration, role) → the training record of that EM adapter."""
    records = {}
    for record in store.training_runs():
        role, iteration = record.hyperparams.get("em_role"), record.hyperparams.get("em_iteration")
        if role is not None and iteration is not None:
            records[(int(iteration), str(role))] = record
    return records


def _iterations(run_dir: Path) -> list[int]:
    numbers = [int(p.name[2:]) for p in Path(run_dir).glob("it*") if p.name[2:].isdigit()]
    return sorted(numbers)


def iteration_reports(run_dir: Path | str) -> list[IterationReport]:
    """Per-iteration figures of an EM run dir, read from its graph runs' stores and training records."""
    run_dir = Path(run_dir)
    with Store(run_dir, create=False) as store:
        records = _em_records(store)
    reports = []
    for iteration in _iterations(run_dir):
        dirs = iteration_dirs(run_dir, iteration)
        e_states = _final_states(dirs.e)
        q, p = records.get((iteration, Q_ROLE)), records.get((iteration, P_ROLE))
        reports.append(
            IterationReport(
                iteration=iteration,
                mean_best_reward=_mean([s["best_log_p"] for s in e_states.values()]),
                mean_log_p_x_before=_mean([s["log_p_x"] for s in _final_states(dirs.m).values()]),
                mean_log_p_x_after=_mean([s["log_p_x"] for s in _final_states(dirs.after).values()]),
                q_adapter=q.adapter_name if q else None,
                p_adapter=p.adapter_name if p else None,
                q_started_from=q.hyperparams.get("init_adapter_name") if q else None,
                p_started_from=p.hyperparams.get("init_adapter_name") if p else None,
                selected=[int(s["best"]) for s in e_states.values()],
            )
        )
    return reports


def render_em_report(run_dir: Path | str, console: Console) -> None:
    """The per-iteration curves of an EM run, and the adapters each iteration trained and started from."""

    def number(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    reports = iteration_reports(run_dir)
    curves = Table(title=f"EM iterations in {run_dir}", title_justify="left")
    for column in ("iteration", "best log p(z,x|c)", "log p(x|z*,c) before", "after M-step"):
        curves.add_column(column, justify="right")
    adapters = Table(title="adapters", title_justify="left")
    for column in ("iteration", "role", "adapter", "started from"):
        adapters.add_column(column)
    for r in reports:
        curves.add_row(
            str(r.iteration),
            number(r.mean_best_reward),
            number(r.mean_log_p_x_before),
            number(r.mean_log_p_x_after),
        )
        for role, name, start in (
            (Q_ROLE, r.q_adapter, r.q_started_from),
            (P_ROLE, r.p_adapter, r.p_started_from),
        ):
            if name is not None:
                adapters.add_row(str(r.iteration), role, name, start or "base model")
    console.print(curves)
    console.print(adapters)
    console.print(f"graph runs: {Path(run_dir) / 'itN'}/e, m, after (each: rolegraph runs show DIR)")


def _finished_iterations(run_dir: Path, store: Store) -> int:
    """The last iteration whose p was trained and whose after-M-step scoring finished (0 when none)."""
    records = _em_records(store)
    done = 0
    for iteration in _iterations(run_dir):
        dirs = iteration_dirs(run_dir, iteration)
        decoded = _final_states(dirs.m)
        if (iteration, P_ROLE) in records and decoded and decoded.keys() <= _finished_ids(dirs.after):
            done = iteration
    return done


# --- the loop -------------------------------------------------------------------------------------------
class EMLoop:
    """Runs EM iterations over a pool whose rationale_writer and proposer roles share one base model."""

    def __init__(
        self,
        pool: Any,
        settings: EMSettings,
        registry: AdapterRegistry | None = None,
        *,
        console: Console | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()
        self.console = console or Console(stderr=True)
        self.store = Store(settings.run_dir)
        self.store.start_run(
            GRAPH,
            {},
            0,
            {"seeds": str(settings.seeds), "k": settings.k, "from_scratch": settings.from_scratch},
        )

    def close(self) -> None:
        self.store.close()

    async def run(
        self, on_iteration: Callable[[IterationReport], None] | None = None
    ) -> list[IterationReport]:
        """`settings.iterations` more iterations after those already finished in the run dir."""
        from rolegraph.serving import require

        require(
            self.pool.resolve(P_ROLE)[0],
            "prompt_logprobs",
            "tokenize",
            purpose="the EM E-step (scoring log p(z,x|c))",
        )
        seeds = await self.seeds()
        done = _finished_iterations(self.settings.run_dir, self.store)
        for role in (Q_ROLE, P_ROLE):  # a re-run continues from the adapters the run dir ended with
            if record := _em_records(self.store).get((done, role)):
                await self._serve(role, record)
        reports = []
        for iteration in range(done + 1, done + 1 + self.settings.iterations):
            report = await self.iteration(iteration, seeds)
            reports.append(report)
            if on_iteration is not None:
                on_iteration(report)
        return reports

    async def seeds(self) -> list[Seed]:
        """The seeds with their concepts; those without get them from an em_concepts run."""
        seeds = load_seeds(self.settings.seeds, self.settings.num_seeds)
        missing = [s for s in seeds if not s.concepts]
        if not missing:
            return seeds
        run_dir = self.settings.run_dir / "concepts"
        await self._run(EM_CONCEPTS, [s.option() for s in missing], run_dir)
        extracted = _final_states(run_dir)
        ready = [
            s if s.concepts else Seed(s.id, s.problem, tuple(extracted[s.id]["concepts"]))
            for s in seeds
            if s.concepts or s.id in extracted
        ]
        if not ready:
            raise TrainingError(
                "no seed problem has concepts: concept extraction failed for all of them",
                f"see `rolegraph runs show {run_dir}`; or give the seeds a 'concepts' list",
            )
        return ready

    async def iteration(self, iteration: int, seeds: list[Seed]) -> IterationReport:
        dirs = iteration_dirs(self.settings.run_dir, iteration)
        await self._run(EM_E, [s.option() for s in seeds], dirs.e)
        await self._train(Q_ROLE, iteration, q_rows(dirs.e), dirs.e)
        await self._run(EM_M, [s.option() for s in seeds], dirs.m)
        await self._train(P_ROLE, iteration, p_rows(dirs.m), dirs.m)
        decoded = _final_states(dirs.m)
        await self._run(
            EM_SCORE,
            [s.option(rationale=decoded[s.id]["rationale"]) for s in seeds if s.id in decoded],
            dirs.after,
        )
        (report,) = [r for r in iteration_reports(self.settings.run_dir) if r.iteration == iteration]
        return report

    async def _run(self, graph: GraphDef, seeds: list[dict[str, Any]], run_dir: Path) -> None:
        options = {**self.settings.graph_options(), "seeds": seeds}
        summary = await run_graph(
            graph,
            self.pool,
            RunParams(n=len(seeds), options=options),
            run_dir,
            concurrency=self.settings.concurrency,
            console=self.console,
            prompts_dir=self.settings.prompts_dir,
        )
        if summary.failed or summary.running:
            raise TrainingError(
                f"{graph.name} run in {run_dir}: {summary.failed + summary.running} episodes did not finish",
                f"see `rolegraph runs show {run_dir}`; re-run the same --run-dir to retry them",
            )

    def _previous(self, role: str, iteration: int) -> AdapterVersion | None:
        """The adapter this iteration's `role` continues from: the previous iteration's (warm start)."""
        record = _em_records(self.store).get((iteration - 1, role))
        if self.settings.from_scratch or record is None:
            return None
        return self._version(role, record)

    def _version(self, role: str, record: TrainingRunRecord) -> AdapterVersion:
        path = Path(str(record.adapter_path))
        for version in self.registry.versions(role):
            if version.path == path:
                return version
        raise TrainingError(
            f"adapter {record.adapter_name} of this EM run is no longer in {self.registry.root}",
            f"restore {path}, or start a new --run-dir",
        )

    async def _serve(self, role: str, record: TrainingRunRecord) -> None:
        """Hand off a recorded adapter unless the role already serves it."""
        adapter = self._version(role, record)
        if self.pool.resolve(role)[1] != adapter.lora_name:
            await hand_off(self.pool, role, adapter, keep=self.settings.keep)

    async def _train(self, role: str, iteration: int, rows: list[dict[str, Any]], source: Path) -> None:
        """SFT `role` on `rows`, publish and hand off the adapter, record it (once per iteration and role)."""
        from datasets import Dataset

        if record := _em_records(self.store).get((iteration, role)):
            await self._serve(role, record)
            return
        if not rows:
            raise TrainingError(
                f"EM iteration {iteration}: no training rows for {role}",
                f"see `rolegraph runs show {source}`; try more seeds, a larger k or more --max-tokens",
            )
        start = self._previous(role, iteration)
        settings = dataclasses.replace(self.settings.sft, model=self.settings.model_dir)
        result = await asyncio.to_thread(
            train_sft,
            settings,
            Dataset.from_list(rows),
            self.registry.staging(role),
            init_adapter=start.path if start else None,
        )
        adapter = self.registry.publish(role, result.adapter_dir)
        report = await hand_off(self.pool, role, adapter, keep=self.settings.keep)
        hyperparams = {
            **result.hyperparameters,
            "em_role": role,
            "em_iteration": iteration,
            "init_adapter_name": start.lora_name if start else None,
        }
        record_training(
            self.settings.run_dir,
            dataclasses.replace(result, hyperparameters=hyperparams),
            inputs=[str(source)],
            adapter=adapter,
            extra_metrics={"handoff_s": report.load_s, "iteration": float(iteration)},
        )
