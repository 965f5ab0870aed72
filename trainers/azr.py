"""`rolegraph train azr`: Absolute Zero self-play, one azr graph run and one task-relative REINFORCE++ update
of one LoRA (for both roles) per step, handed off before the next step.

    RUN_DIR/seed          mode=seed: the seed triplets (the zero triplet or --seeds FILE), validated
    RUN_DIR/seed-model    mode=propose: --seed-from-model N proposals per type, validated, not solved
    RUN_DIR/step-NNNN     mode=train: propose, validate, learnability, solve; buffers = all runs above it

RUN_DIR's own store (graph "azr-train") keeps one training record per step, with the step's metrics (valid
proposals, learnability and solve rate per type, buffer sizes, loss, where the wall time went). Re-running
RUN_DIR resumes: graph runs skip finished episodes, a trained step is not trained again, and `--steps N` adds
N steps after the finished ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rolegraph.errors import TrainingError
from rolegraph.graphs.azr import TASK_TYPES, azr_graph
from rolegraph.graphs.azr.nodes import PROPOSE_NODE, SOLVE_NODE
from rolegraph.graphs.azr.sandbox import TripletSandbox
from rolegraph.graphs.azr.state import PROPOSER, SOLVER
from rolegraph.graphs.azr.tasks import load_seed_triplets, read_buffers
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from rolegraph.store.records import Step, TrainingRunRecord
from rolegraph.trainers.handoff import adapter_endpoints, hand_off, load_everywhere
from rolegraph.trainers.recording import record_training
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion
from rolegraph.trainers.reinforce_pp import ReinforcePPSettings, Sample, train_reinforce_pp

GRAPH = "azr-train"
"""The graph name of the training run's own store (`rolegraph runs show` renders it: render_azr_report)."""
REWARD_OF = {PROPOSE_NODE: "propose", SOLVE_NODE: "solve"}
"""The trained completions: the node that samples them and the reward they are trained on."""


@dataclass
class AZRSettings:
    """The loop's knobs. Tiny CPU defaults; `graph` overrides azr graph options (graphs/azr/state.py)."""

    run_dir: Path
    model_dir: Path
    steps: int = 1
    seeds: Path | None = None
    """A JSONL of triplets (code, input), e.g. cruxeval_dev.jsonl; None: the zero triplet."""
    seed_from_model: int = 0
    """Proposals per type (deduction, abduction) from the base model that also seed the buffers."""
    batch: int = 1
    """Proposals per task type per step."""
    graph: dict[str, Any] = field(default_factory=dict)
    adapter_role: str = SOLVER
    """The registry name the one LoRA is published under; it is handed off to both roles."""
    keep: int = 2
    sandbox: str = "auto"
    concurrency: int = 8
    prompts_dir: Path | None = None
    trainer: ReinforcePPSettings = field(default_factory=ReinforcePPSettings)


@dataclass(frozen=True)
class StepReport:
    """One finished step, read back from its training record."""

    step: int
    adapter: str | None
    metrics: dict[str, float]


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:04d}"


# --- reading a step back ----------------------------------------------------------------------------------
def read_samples(run_dir: Path, tokenizer: Callable[[], Any] | None = None) -> tuple[list[Sample], int]:
    """The trained completions of a step run (proposer and solver), and how many were left out because their
    reward is None (the sandbox could not compute it)."""
    samples: list[Sample] = []
    unknown = 0
    with Store(run_dir, create=False) as store:
        types = {e.id: e.input.get("task_type", "") for e in store.episodes(status="finished")}
        for step in store.steps(kind="role", finished_only=True):
            reward_name = REWARD_OF.get(step.node)
            if reward_name is None or step.episode_id not in types or step.error:
                continue
            for index in range(len(step.choices)):
                rewards = step.rewards[index] if index < len(step.rewards) else {}
                if reward_name not in rewards:
                    continue
                if rewards[reward_name] is None:
                    unknown += 1
                    continue
                prompt_ids, completion_ids = token_ids(step, index, tokenizer)
                samples.append(
                    Sample(
                        task_type=types[step.episode_id],
                        role=PROPOSER if step.node == PROPOSE_NODE else SOLVER,
                        prompt_ids=prompt_ids,
                        completion_ids=completion_ids,
                        reward=float(rewards[reward_name]),  # type: ignore[arg-type]
                    )
                )
    return samples, unknown


def token_ids(
    step: Step, index: int, load_tokenizer: Callable[[], Any] | None
) -> tuple[list[int], list[int]]:
    """The exact prompt and completion token ids the endpoint saw and sampled; re-tokenized (chat template,
    continuing a prefill) only for an endpoint that does not return them."""
    choice = step.choices[index]
    if step.prompt_token_ids and choice.token_ids:
        return list(step.prompt_token_ids), list(choice.token_ids)
    if load_tokenizer is None:
        raise TrainingError(
            f"step {step.id} has no token ids and no tokenizer was given", "serve the roles with vLLM"
        )
    tokenizer = load_tokenizer()
    prefill = bool(step.messages) and step.messages[-1].get("role") == "assistant"
    prompt = tokenizer.apply_chat_template(
        step.messages, tokenize=True, add_generation_prompt=not prefill, continue_final_message=prefill
    )
    if isinstance(prompt, dict):
        prompt = prompt["input_ids"]
    completion = tokenizer(choice.text, add_special_tokens=False)["input_ids"]
    return list(prompt), [*completion, tokenizer.eos_token_id]


@functools.cache
def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def step_metrics(run_dir: Path, buffer_runs: list[Path]) -> dict[str, float]:
    """Per type: valid-proposal rate, mean learnability, solve rate; buffer sizes after the step; timing."""
    metrics: dict[str, float] = {}
    with Store(run_dir, create=False) as store:
        episodes = store.episodes(status="finished")
        steps = store.steps(finished_only=True)
    for task_type in TASK_TYPES:
        mine = [e.metrics for e in episodes if e.input.get("task_type") == task_type]
        figures = {
            "valid_rate": _mean([m["valid"] for m in mine if "valid" in m]),
            "learnability": _mean([m["learnability"] for m in mine if "learnability" in m]),
            "solve_rate": _mean([float(m["solved"] == 1.0) for m in mine if "solved" in m]),
        }
        metrics |= {f"{task_type}/{k}": v for k, v in figures.items() if v is not None}
    all_valid = [e.metrics["valid"] for e in episodes if "valid" in e.metrics]
    if all_valid:
        metrics["valid_rate"] = sum(all_valid) / len(all_valid)
    for kind, tasks in read_buffers([*buffer_runs, run_dir]).items():
        metrics[f"{kind}/buffer"] = float(len(tasks))
    role_s = sum(s.latency_s for s in steps if s.kind == "role")
    env_s = sum(s.latency_s for s in steps if s.kind == "env")
    metrics["model_calls_s"], metrics["sandbox_calls_s"] = role_s, env_s
    return metrics


def _records(store: Store) -> dict[int, TrainingRunRecord]:
    return {int(r.hyperparams["azr_step"]): r for r in store.training_runs() if "azr_step" in r.hyperparams}


def step_reports(run_dir: Path | str) -> list[StepReport]:
    """The finished steps of a `train azr` run dir, in order."""
    with Store(run_dir, create=False) as store:
        records = _records(store)
    return [StepReport(k, r.adapter_name, dict(r.metrics)) for k, r in sorted(records.items())]


def render_azr_report(run_dir: Path | str, console: Console) -> None:
    """The steps' metrics (what `rolegraph runs show RUN_DIR` prints for a train azr run): per type,
    valid-proposal rate / mean learnability / solve rate / buffer size."""
    table = Table(
        title="azr steps (per type: valid / learnability / solve rate / buffer)", title_justify="left"
    )
    for column in ("step", "loss", "valid", *TASK_TYPES, "s/step", "adapter"):
        table.add_column(column, justify="left" if column == "adapter" else "right")

    def fig(metrics: dict[str, float], key: str) -> str:
        return f"{metrics[key]:.2f}" if key in metrics else "-"

    for report in step_reports(run_dir):
        m = report.metrics
        cells = [
            " / ".join(
                [
                    *(fig(m, f"{t}/{k}") for k in ("valid_rate", "learnability", "solve_rate")),
                    str(int(m.get(f"{t}/buffer", 0))),
                ]
            )
            for t in TASK_TYPES
        ]
        wall = m.get("graph_s", 0.0) + m.get("train_s", 0.0) + m.get("handoff_s", 0.0)
        table.add_row(
            str(report.step),
            fig(m, "train_loss"),
            fig(m, "valid_rate"),
            *cells,
            f"{wall:.0f}",
            report.adapter or "-",
        )
    console.print(table)


# --- the loop ---------------------------------------------------------------------------------------------
class AZRLoop:
    """Runs AZR steps over a pool whose proposer and solver roles share one base model."""

    def __init__(
        self,
        pool: Any,
        settings: AZRSettings,
        registry: AdapterRegistry | None = None,
        *,
        sandbox: Any = None,
        console: Console | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = registry or AdapterRegistry()
        self.console = console or Console(stderr=True)
        self._own_sandbox = sandbox is None
        self.sandbox = sandbox or TripletSandbox(settings.sandbox)
        self.graph = azr_graph(self.sandbox)
        self.store = Store(settings.run_dir)
        self.store.start_run(
            GRAPH,
            {},
            0,
            {"seeds": str(settings.seeds or "zero"), "seed_from_model": settings.seed_from_model},
        )

    def close(self) -> None:
        self.store.close()
        if self._own_sandbox:
            self.sandbox.close()

    async def run(self, on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
        """`settings.steps` more steps after those already finished in the run dir."""
        seeds = await self.seed()
        done = max(_records(self.store), default=0)
        if done:
            await self._serve(_records(self.store)[done])
        reports = []
        for step in range(done + 1, done + 1 + self.settings.steps):
            report = await self.step(step, seeds)
            reports.append(report)
            if on_step is not None:
                on_step(report)
        return reports

    async def seed(self) -> list[Path]:
        """Run (or resume) the seed runs; the run dirs whose tasks seed the buffers."""
        run_dir = self.settings.run_dir
        triplets = load_seed_triplets(self.settings.seeds)
        await self._run({"mode": "seed", "seeds": triplets}, len(triplets), run_dir / "seed")
        runs = [run_dir / "seed"]
        if self.settings.seed_from_model:
            options = {
                "mode": "propose",
                "types": ["deduction", "abduction"],
                "batch": self.settings.seed_from_model,
                "buffer_runs": [str(r) for r in runs],
            }
            await self._run(options, 2 * self.settings.seed_from_model, run_dir / "seed-model")
            runs.append(run_dir / "seed-model")
        if not any(read_buffers(runs).values()):
            raise TrainingError(
                "no seed triplet is valid: the buffers are empty",
                f"see `rolegraph runs show {run_dir / 'seed'}`; fix the seed file or leave out --seeds",
            )
        return runs

    async def step(self, step: int, seeds: list[Path]) -> StepReport:
        """Propose and solve a batch of each type, then one update of the LoRA, then hand it off."""
        run_dir = self.settings.run_dir
        earlier = [*seeds, *(step_dir(run_dir, k) for k in range(1, step))]
        options = {
            **self.settings.graph,
            "mode": "train",
            "batch": self.settings.batch,
            "seed": step,
            "buffer_runs": [str(r) for r in earlier],
        }
        types = options.get("types", list(TASK_TYPES))
        started = time.perf_counter()
        await self._run(options, len(types) * self.settings.batch, step_dir(run_dir, step))
        graph_s = time.perf_counter() - started
        metrics = step_metrics(step_dir(run_dir, step), earlier)
        calls = metrics["model_calls_s"] + metrics["sandbox_calls_s"]
        # The graph interleaves model and sandbox calls: its wall time is split in proportion to their time.
        sandbox_share = metrics["sandbox_calls_s"] / calls if calls else 0.0
        metrics |= {"graph_s": graph_s, "sandbox_s": graph_s * sandbox_share}
        metrics["generation_s"] = graph_s - metrics["sandbox_s"]
        return await self._train(step, step_dir(run_dir, step), metrics)

    async def _run(self, options: dict[str, Any], n: int, run_dir: Path) -> None:
        summary = await run_graph(
            self.graph,
            self.pool,
            RunParams(n=n, options=options),
            run_dir,
            concurrency=self.settings.concurrency,
            console=self.console,
            prompts_dir=self.settings.prompts_dir,
        )
        if summary.failed or summary.running:
            raise TrainingError(
                f"azr run in {run_dir}: {summary.failed + summary.running} episodes did not finish",
                f"see `rolegraph runs show {run_dir}`; re-run the same --run-dir to retry them",
            )

    def _version(self, record: TrainingRunRecord) -> AdapterVersion:
        path = Path(str(record.adapter_path))
        for version in self.registry.versions(self.settings.adapter_role):
            if version.path == path:
                return version
        raise TrainingError(
            f"adapter {record.adapter_name} of this azr run is no longer in {self.registry.root}",
            f"restore {path}, or start a new --run-dir",
        )

    async def _serve(self, record: TrainingRunRecord) -> None:
        """Hand a recorded adapter off to both roles unless they serve it already."""
        adapter = self._version(record)
        if any(self.pool.resolve(role)[1] != adapter.lora_name for role in (SOLVER, PROPOSER)):
            await self._hand_off(adapter)

    async def _hand_off(self, adapter: AdapterVersion) -> None:
        """The one LoRA to both roles. The solver's hand-off also unloads and prunes old versions (of
        `adapter_role` only); the proposer is then moved to the same, already loaded, adapter."""
        await hand_off(self.pool, SOLVER, adapter, keep=self.settings.keep)
        endpoints = adapter_endpoints(self.pool, PROPOSER)
        await load_everywhere(self.pool, endpoints, adapter)
        await self.pool.swap(PROPOSER, endpoints[0], adapter.lora_name)

    async def _train(self, step: int, source: Path, metrics: dict[str, float]) -> StepReport:
        """One REINFORCE++ update continuing the previous step's LoRA; publish, hand off, record (once)."""
        if record := _records(self.store).get(step):
            await self._serve(record)
            return StepReport(step, record.adapter_name, dict(record.metrics))
        samples, unknown = read_samples(source, lambda: _tokenizer(self.settings.model_dir))
        if not samples:
            raise TrainingError(
                f"azr step {step}: no rewarded completions to train on",
                f"see `rolegraph runs show {source}`; try a larger --batch or more --max-tokens",
            )
        previous = _records(self.store).get(step - 1)
        start = self._version(previous) if previous else None
        settings = dataclasses.replace(self.settings.trainer, model=self.settings.model_dir)
        result = await asyncio.to_thread(
            train_reinforce_pp,
            settings,
            samples,
            self.registry.staging(self.settings.adapter_role),
            init_adapter=start.path if start else None,
        )
        adapter = self.registry.publish(self.settings.adapter_role, result.adapter_dir)
        hyperparams = {
            **result.hyperparameters,
            "azr_step": step,
            "init_adapter_name": start.lora_name if start else None,
        }
        started = time.perf_counter()
        await self._hand_off(adapter)
        extra = {
            **metrics,
            "train_s": result.wall_s,
            "handoff_s": time.perf_counter() - started,
            "samples": float(len(samples)),
            "unknown_rewards": float(unknown),
            "step": float(step),
        }
        record_training(
            self.settings.run_dir,
            dataclasses.replace(result, hyperparameters=hyperparams),
            inputs=[str(source)],
            adapter=adapter,
            extra_metrics=extra,
        )
        (report,) = [r for r in step_reports(self.settings.run_dir) if r.step == step]
        return report
