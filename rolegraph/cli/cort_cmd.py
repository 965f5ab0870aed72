"""`rolegraph train rft` and `rolegraph train tir-grpo`: CoRT's training on TIR episodes (graphs/cort/).

Both check their inputs (problem file, roles, sandbox backend, model, device) before any server starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rolegraph.cli.train_cmd import (
    ConfigOpt,
    DeviceOpt,
    ModelOpt,
    RoleOpt,
    _check_model,
    _model_dir,
    _placed,
    _with_pool,
    console,
)
from rolegraph.trainers.config import Device

ProblemsOpt = typer.Option(..., "--problems", help="JSONL of problems with answers (e.g. math500_dev.jsonl).")
SandboxOpt = typer.Option("auto", "--sandbox", help="Sandbox backend for the sessions: auto, docker, bwrap.")
RoleNameOpt = typer.Option("cort_solver", "--train-role", help="The TIR solver role the adapter is for.")


def _check_inputs(problems: Path, max_problems: int, sandbox: str, cfg: Any, role: str) -> None:
    from rolegraph.config import check_role
    from rolegraph.environments.sandbox.selection import make_backend
    from rolegraph.graphs.selfplay.problems import load_problems

    check_role(cfg, role, "--train-role")
    load_problems(problems, max_problems)
    if sandbox != "auto":
        reason = make_backend(sandbox).check()
        if reason:
            from rolegraph.errors import SandboxError

            raise SandboxError(
                f"sandbox backend {sandbox} does not work here: {reason}", "pass --sandbox auto"
            )


def rft(
    problems: Path = ProblemsOpt,
    run_dir: Path = typer.Option(Path("runs/rft"), "--run-dir", help="Store of the sampled trajectories."),
    train_role: str = RoleNameOpt,
    max_problems: int = typer.Option(2, "--max-problems", min=1),
    samples: int = typer.Option(4, "--samples", min=1, help="Trajectories sampled per problem (N)."),
    max_calls: int = typer.Option(12, "--max-calls", min=0, help="Code executions per trajectory."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Model tokens per trajectory."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0),
    seed: int | None = typer.Option(None, "--seed"),
    sandbox: str = SandboxOpt,
    steps: int = typer.Option(2, "--steps", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    hand: bool = typer.Option(True, "--hand-off/--no-hand-off", help="Load the adapter and switch the role."),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """CoRT RFT: sample N TIR trajectories per problem, keep the correct ones no detector flagged, fine-tune
    on them with interpreter tokens masked out of the loss, and hand off."""
    from rolegraph.config import load_config
    from rolegraph.trainers.config import SFTSettings
    from rolegraph.trainers.cort_rft import RFT, RFTSettings

    cfg = load_config(config, role, known_roles=(train_role,))
    _check_inputs(problems, max_problems, sandbox, cfg, train_role)
    sft = _placed(SFTSettings(max_steps=steps), cfg, device)
    if lr is not None:
        sft.learning_rate = lr
    _check_model(model)
    settings = RFTSettings(
        problems=problems,
        run_dir=run_dir,
        model_dir=_model_dir(model),
        role=train_role,
        max_problems=max_problems,
        samples=samples,
        max_calls=max_calls,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        sandbox=sandbox,
        hand_off=hand,
        sft=sft,
    )

    async def body(pool: Any) -> None:
        report = await RFT(pool, settings).run()
        s = report.selection
        flagged = ", ".join(f"{k} {v}" for k, v in s.flagged.items()) or "none"
        console.print(
            f"{s.sampled} trajectories: {len(s.kept)} kept, {s.wrong} wrong, {s.unchecked} unchecked; "
            f"correct but flagged: {flagged}"
        )
        if report.adapter is None:
            console.print("adapter: none (no trajectory kept: nothing to train)")
        else:
            console.print(f"adapter: {report.adapter} (loss {report.train_loss or 0:.4f})")
        console.print(f"trajectories: rolegraph runs show {run_dir}")

    _with_pool(cfg, body, (train_role,))


def tir_grpo(
    problems: Path = ProblemsOpt,
    run_dir: Path = typer.Option(
        Path("runs/tir-grpo"), "--run-dir", help="Rollout runs and training record."
    ),
    train_role: str = RoleNameOpt,
    max_problems: int = typer.Option(2, "--max-problems", min=1),
    generations: int = typer.Option(2, "--generations", min=2, help="TIR episodes per problem per step."),
    max_calls: int = typer.Option(12, "--max-calls", min=0, help="Code executions per episode."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Model tokens per episode."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0),
    seed: int | None = typer.Option(None, "--seed"),
    sandbox: str = SandboxOpt,
    steps: int = typer.Option(1, "--steps", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    hand: bool = typer.Option(True, "--hand-off/--no-hand-off", help="Load the adapter and switch the role."),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """GRPO on TIR episodes: rollouts are cort graph runs; interpreter output is masked out of the loss
    (TRL's env_mask); reward 1 correct, 0 wrong, −0.1 when no code ran or every cell failed."""
    from rolegraph.config import load_config
    from rolegraph.trainers.config import GRPOSettings
    from rolegraph.trainers.cort_grpo import TIRGRPO, TIRGRPOSettings

    cfg = load_config(config, role, known_roles=(train_role,))
    _check_inputs(problems, max_problems, sandbox, cfg, train_role)
    grpo = _placed(
        GRPOSettings(max_steps=steps, num_generations=generations, max_completion_length=max_tokens),
        cfg,
        device,
    )
    if lr is not None:
        grpo.learning_rate = lr
    _check_model(model)
    settings = TIRGRPOSettings(
        problems=problems,
        run_dir=run_dir,
        model_dir=_model_dir(model),
        role=train_role,
        max_problems=max_problems,
        max_calls=max_calls,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        sandbox=sandbox,
        hand_off=hand,
        grpo=grpo,
    )

    async def body(pool: Any) -> None:
        report = await TIRGRPO(pool, settings).run()
        reward = "n/a" if report.mean_reward is None else f"{report.mean_reward:.2f}"
        console.print(f"{report.rollouts} TIR rollouts, mean reward {reward}; adapter: {report.adapter}")
        console.print(f"rollouts: rolegraph runs show {run_dir}/rollouts/step-0")

    _with_pool(cfg, body, (train_role,))
