"""Bench: `train azr` for a few steps, and where a step's wall time goes; then one TRR++ update against one
plain TRL GRPO update on the same stored batch.

Part 1 runs AZRLoop (the code behind `rolegraph train azr`) for STEPS steps on one vLLM server and prints per
step: generation and sandbox (the graph run's wall time, split in proportion to the time its model calls and
its sandbox calls took: they interleave), training, hand-off. Target: the sandbox's share under 10%.

Part 2 takes the last step's stored batch (its exact prompt and completion token ids and rewards) and times,
in this process, one update of each on it: the task-relative REINFORCE++ trainer, and a plain GRPOTrainer
whose `rollout_func` replays the same completions (two per prompt, as GRPO needs groups) scored with the
stored rewards. Both load the same base model and LoRA; only `trainer.train()` is timed (TRL's
train_runtime). Target: TRR++ ≤ 1.1× GRPO.

Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server; otherwise one is launched. Figures go to
bench/RESULTS.md under "## Absolute Zero" (append).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig
from rolegraph.graphs.azr.state import PROPOSER, SOLVER
from rolegraph.models import prepare_model
from rolegraph.serving import EndpointPool
from rolegraph.trainers.azr import AZRLoop, AZRSettings, read_samples, step_dir
from rolegraph.trainers.base import TrainResult, quiet, train_lora
from rolegraph.trainers.config import GRPOSettings
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.reinforce_pp import ReinforcePPSettings, Sample, train_reinforce_pp

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CRUXEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cruxeval_dev.jsonl"
console = Console(stderr=True)


def _config() -> tuple[RolegraphConfig, Any]:
    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    if url:
        url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        cards = httpx.get(f"{url}/models", timeout=10).json()["data"]
        model, handle = next(c["id"] for c in cards if not c.get("parent")), None
    else:
        from rolegraph.serving.launcher import launch_server

        handle = launch_server("bench-azr", LaunchSpec())
        url, model = handle.base_url, handle.model
    binding = RoleBinding(endpoint="local", model=model)
    config = RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=url)}, roles={PROPOSER: binding, SOLVER: binding}
    )
    return config, handle


def run_steps(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, float]], Path]:
    """AZR steps; per step the wall-time split; the run dir."""
    config, handle = _config()
    seeds = work / "seeds.jsonl"
    seeds.write_text("".join(CRUXEVAL.read_text().splitlines(keepends=True)[-args.seeds :]))
    settings = AZRSettings(
        run_dir=work / "azr",
        model_dir=prepare_model(),
        steps=args.steps,
        seeds=seeds,
        batch=args.batch,
        sandbox=args.sandbox,
        graph={
            "rollouts": args.rollouts,
            "propose_max_tokens": args.max_tokens,
            "solve_max_tokens": args.max_tokens,
        },
        trainer=ReinforcePPSettings(),
    )

    async def main() -> list[dict[str, float]]:
        async with EndpointPool(config) as pool:
            loop = AZRLoop(pool, settings, AdapterRegistry(work / "adapters"), console=console)
            try:
                return [r.metrics for r in await loop.run()]
            finally:
                loop.close()

    try:
        return asyncio.run(main()), settings.run_dir
    finally:
        if handle is not None and handle.owned:
            handle.stop()


def grpo_update(samples: list[Sample], model_dir: Path, out: Path) -> TrainResult:
    """One plain GRPOTrainer update replaying `samples` (two per prompt) with their stored rewards."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    pairs = [samples[i : i + 2] for i in range(0, len(samples) - 1, 2)]
    rewards = {tuple(s.completion_ids): s.reward for s in samples}
    seen: dict[int, int] = {}

    def rollout(prompts: list[Any], _trainer: Any) -> dict[str, Any]:
        chosen = []
        for prompt in prompts:
            index = int(prompt[0]["content"])
            chosen.append(pairs[index][seen.get(index, 0) % 2])
            seen[index] = seen.get(index, 0) + 1
        return {
            "prompt_ids": [s.prompt_ids for s in chosen],
            "completion_ids": [s.completion_ids for s in chosen],
            "logprobs": [[0.0] * len(s.completion_ids) for s in chosen],
        }

    def stored(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [rewards[tuple(ids)] for ids in completion_ids]

    settings = GRPOSettings(model=model_dir, max_steps=1, learning_rate=1e-5)
    kwargs = settings.common_trl_kwargs(out.with_name(out.name + ".trl"))
    kwargs["per_device_train_batch_size"] = 2 * len(pairs)
    args = GRPOConfig(**kwargs, num_generations=2, beta=0.0, max_completion_length=4096)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": str(i)}]} for i in range(len(pairs))]
    )
    return train_lora(
        GRPOTrainer, settings, args, dataset, out, time.perf_counter(), padding_side="left",
        reward_funcs=stored, rollout_func=rollout,
    )  # fmt: skip


def compare_updates(run_dir: Path, steps: int, work: Path) -> dict[str, float]:
    samples, _ = read_samples(step_dir(run_dir, steps))
    samples = samples[: len(samples) - len(samples) % 2]
    model_dir = prepare_model()
    quiet()
    trr = train_reinforce_pp(ReinforcePPSettings(model=model_dir), samples, work / "trr")
    grpo = grpo_update(samples, model_dir, work / "grpo")
    return {
        "samples": float(len(samples)),
        "trr_s": trr.metrics["train_runtime"],
        "grpo_s": grpo.metrics["train_runtime"],
    }


def report(args: argparse.Namespace, steps: list[dict[str, float]], updates: dict[str, float]) -> str:
    lines = [
        "",
        "## Absolute Zero",
        "",
        f"`python bench/azr.py --steps {args.steps} --batch {args.batch} --rollouts {args.rollouts} "
        f"--max-tokens {args.max_tokens}` on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}; built-in model, float32, sandbox {args.sandbox}.",
        "",
        "| step | generation s | sandbox s | training s | hand-off s | sandbox share |",
        "|---|---|---|---|---|---|",
    ]
    for number, m in enumerate(steps, 1):
        total = m["generation_s"] + m["sandbox_s"] + m["train_s"] + m["handoff_s"]
        lines.append(
            f"| {number} | {m['generation_s']:.1f} | {m['sandbox_s']:.2f} | {m['train_s']:.1f} | "
            f"{m['handoff_s']:.1f} | {m['sandbox_s'] / total:.1%} |"
        )
    ratio = updates["trr_s"] / updates["grpo_s"]
    lines += [
        "",
        f"Same stored batch ({updates['samples']:.0f} completions), one update each: TRR++ "
        f"{updates['trr_s']:.1f} s, plain TRL GRPO {updates['grpo_s']:.1f} s: ratio {ratio:.2f} "
        "(target ≤ 1.1).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--seeds", type=int, default=50, help="CRUXEval triplets (the last N) seeding the buffers"
    )
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-azr-") as tmp:
        work = Path(tmp)
        steps, run_dir = run_steps(args, work)
        updates = compare_updates(run_dir, args.steps, work)
    text = report(args, steps, updates)
    print(text)
    if args.write:
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
