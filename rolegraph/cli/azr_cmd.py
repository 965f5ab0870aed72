"""`rolegraph train azr`: Absolute Zero self-play (train_cmd.py registers it on `train_app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from rolegraph.trainers.config import Device

console = Console()


def _graph_options(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` azr graph options, checked against the graph's options model."""
    from rolegraph.cli.run_cmd import parse_sets
    from rolegraph.errors import ConfigError
    from rolegraph.graphs.azr import AZR

    options = parse_sets(items, AZR)
    reserved = {"mode", "batch", "seed", "buffer_runs", "seeds", "episodes"} & set(options)
    if reserved:
        raise ConfigError(
            f"--set {sorted(reserved)[0]} is set by `train azr` itself",
            "use --batch, --seeds or leave it out",
        )
    return options


def train_azr(
    steps: int = typer.Option(1, "--steps", min=1, help="Steps to add after those the run dir finished."),
    run_dir: Path = typer.Option(Path("runs/azr"), "--run-dir", help="Store of every proposal and answer."),
    seeds: Path | None = typer.Option(
        None,
        "--seeds",
        help="JSONL of triplets (code, input) seeding the buffers (default: the zero triplet).",
    ),
    seed_from_model: int = typer.Option(
        0, "--seed-from-model", min=0, help="Also seed with N base-model proposals per type."
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="Proposals per task type per step."),
    rollouts: int = typer.Option(
        8, "--rollouts", min=1, help="Solver rollouts per task for its learnability."
    ),
    max_tokens: int = typer.Option(
        512, "--max-tokens", min=1, help="Completion tokens per proposal and answer."
    ),
    lr: float = typer.Option(1e-5, "--lr"),
    keep: int = typer.Option(2, "--keep", min=2, help="Adapter versions kept loaded."),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox backend: auto, docker or bwrap."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Episodes run at once."),
    sets: list[str] = typer.Option(
        [], "--set", help="azr graph option KEY=VALUE (e.g. extreme_reward=-0.5)."
    ),
    prompts_dir: Path | None = typer.Option(
        None, "--prompts-dir", help="Override prompts with ROLE.md files."
    ),
    device: Device | None = typer.Option(
        None, "--device", help="Train on cpu or gpu (default: the config's)."
    ),
    config: Path | None = typer.Option(None, "--config", help="Config YAML (default: the built-in model)."),
    role: list[str] = typer.Option([], "--role", help="Rebind a role: ROLE=ENDPOINT:MODEL (repeatable)."),
    model: Path | None = typer.Option(
        None, "--model", help="Base model HF dir to train (default: built-in)."
    ),
) -> None:
    """Absolute Zero: propose, validate and solve code tasks, then one task-relative REINFORCE++ update of one
    LoRA for the proposer and solver, handed off before the next step. Resumable."""
    from rolegraph.cli.run_cmd import check_prompts_dir
    from rolegraph.cli.train_cmd import _check_model, _model_dir, _placed, _with_pool
    from rolegraph.config import load_config
    from rolegraph.graphs.azr.state import PROPOSER, SOLVER
    from rolegraph.graphs.azr.tasks import load_seed_triplets
    from rolegraph.trainers.azr import AZRLoop, AZRSettings, StepReport, render_azr_report
    from rolegraph.trainers.reinforce_pp import ReinforcePPSettings

    cfg = load_config(config, role)
    trainer = _placed(ReinforcePPSettings(learning_rate=lr), cfg, device)
    options = {
        "rollouts": rollouts,
        "propose_max_tokens": max_tokens,
        "solve_max_tokens": max_tokens,
        **_graph_options(sets),
    }
    load_seed_triplets(seeds)
    check_prompts_dir(prompts_dir)
    _check_model(model)
    settings = AZRSettings(
        run_dir=run_dir,
        model_dir=_model_dir(model),
        steps=steps,
        seeds=seeds,
        seed_from_model=seed_from_model,
        batch=batch,
        graph=options,
        keep=keep,
        sandbox=sandbox,
        concurrency=concurrency,
        prompts_dir=prompts_dir,
        trainer=trainer,
    )

    def show(report: StepReport) -> None:
        m = report.metrics
        figures = ", ".join(
            f"{t} valid {m.get(f'{t}/valid_rate', 0):.2f} solve {m.get(f'{t}/solve_rate', 0):.2f} "
            f"learn {m.get(f'{t}/learnability', 0):.2f} buffer {int(m.get(f'{t}/buffer', 0))}"
            for t in ("deduction", "abduction", "induction")
        )
        console.print(
            f"step {report.step}: loss {m.get('train_loss', 0):.4f}; {figures}; adapter {report.adapter}"
        )

    async def body(pool: Any) -> None:
        loop = AZRLoop(pool, settings)
        try:
            await loop.run(on_step=show)
        finally:
            loop.close()

    _with_pool(cfg, body, roles=(PROPOSER, SOLVER))
    render_azr_report(run_dir, console)
