"""`rolegraph eval math` and `rolegraph eval code`: pass@1, pass@k and avg@k of one or more solver bindings.

Every `--role solver=ENDPOINT:MODEL` is one binding; all of them answer the same problems in one run
(rolegraph/eval). The lead registers these functions on the `eval` app (rolegraph/cli/eval_cmd.py).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import typer

from rolegraph.terminal import safe_console

console = safe_console()

FileOpt = typer.Option(None, "--file", help="JSONL problems (default: the shared dev split of the task).")
NOpt = typer.Option(500, "--n", min=1, help="Problems to evaluate (the first N of the file).")
KOpt = typer.Option(1, "--k", min=1, help="Report pass@K.")
SamplesOpt = typer.Option(
    None, "--samples", min=1, help="Answers per problem (default K); pass@K is estimated from all of them."
)
MaxTokensOpt = typer.Option(512, "--max-tokens", min=1)
TemperatureOpt = typer.Option(
    None, "--temperature", min=0.0, help="Default: 0 (greedy) with one sample, else 0.7."
)
SeedOpt = typer.Option(None, "--seed", help="Sampling seed (reproducible answers on a quiet server).")
RunDirOpt = typer.Option(None, "--run-dir", help="Store of the answers (default: runs/eval/TASK-BINDINGS).")
ConcurrencyOpt = typer.Option(8, "--concurrency", min=1, help="Episodes (problem × binding) at once.")
ConfigOpt = typer.Option(None, "--config", help="Config YAML (default: the built-in model).")
RoleOpt = typer.Option(
    [], "--role", help="solver=ENDPOINT:MODEL; repeat it to compare several bindings side by side."
)
SolverRoleOpt = typer.Option("solver", "--solver-role", help="The role whose prompt answers.")
PromptsOpt = typer.Option(None, "--prompts-dir", help="Override prompts with ROLE.md files.")
SandboxOpt = typer.Option(
    "auto", "--sandbox", help="Sandbox backend (code answers, tool-using solvers): auto, docker or bwrap."
)


def math(
    file: Path | None = FileOpt,
    n: int = NOpt,
    k: int = KOpt,
    samples: int | None = SamplesOpt,
    max_tokens: int = MaxTokensOpt,
    temperature: float | None = TemperatureOpt,
    seed: int | None = SeedOpt,
    solver_graph: str = typer.Option(
        "direct", "--solver-graph", help="How an answer is produced: direct (one call per problem)."
    ),
    tir: bool = typer.Option(
        False,
        "--tir",
        help="CoRT: the tool-integrated solver beside the plain one, in one run (graphs/cort).",
    ),
    max_calls: int = typer.Option(15, "--max-calls", min=0, help="With --tir: code executions per attempt."),
    sandbox: str = SandboxOpt,
    run_dir: Path | None = RunDirOpt,
    concurrency: int = ConcurrencyOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    solver_role: str = SolverRoleOpt,
    prompts_dir: Path | None = PromptsOpt,
) -> None:
    """Math accuracy: the last \\boxed{} answer checked with math-verify against the problem's `answer`."""
    if tir:
        from rolegraph.cli.eval_math import math as tir_math
        from rolegraph.eval.tasks import default_file

        tir_math(
            problems=file or default_file("math"),
            n=n,
            tir=True,
            run_dir=run_dir or Path("runs/eval-math-tir"),
            samples=samples or k,
            max_tokens=max_tokens,
            max_calls=max_calls,
            sandbox=sandbox,
            concurrency=concurrency,
            seed=seed,
            config=config,
            role=role,
            prompts_dir=prompts_dir,
        )
        return
    _evaluate(
        "math", file, config, role, solver_role, prompts_dir, run_dir, k=k, samples=samples,
        temperature=temperature, n=n, max_tokens=max_tokens, seed=seed, solver=solver_graph, sandbox=sandbox,
        concurrency=concurrency,
    )  # fmt: skip


def code(
    file: Path | None = FileOpt,
    n: int = NOpt,
    k: int = KOpt,
    samples: int | None = SamplesOpt,
    max_tokens: int = MaxTokensOpt,
    temperature: float | None = TemperatureOpt,
    seed: int | None = SeedOpt,
    sandbox: str = SandboxOpt,
    run_dir: Path | None = RunDirOpt,
    concurrency: int = ConcurrencyOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    solver_role: str = SolverRoleOpt,
    prompts_dir: Path | None = PromptsOpt,
) -> None:
    """Code accuracy: HumanEval-style unit tests or stdin/stdout tests (Codeforces), run in the sandbox."""
    _evaluate(
        "code", file, config, role, solver_role, prompts_dir, run_dir, k=k, samples=samples,
        temperature=temperature, n=n, max_tokens=max_tokens, seed=seed, sandbox=sandbox,
        concurrency=concurrency,
    )  # fmt: skip


def _evaluate(
    task: str,
    file: Path | None,
    config: Path | None,
    role: list[str],
    solver_role: str,
    prompts_dir: Path | None,
    run_dir: Path | None,
    *,
    k: int,
    samples: int | None,
    temperature: float | None,
    n: int,
    **settings: Any,
) -> None:
    """Check the inputs, run or resume the eval, print its table (EvalSettings takes `settings`)."""
    from rolegraph.cli.run_cmd import check_prompts_dir
    from rolegraph.config import check_role, load_config
    from rolegraph.errors import ConfigError
    from rolegraph.eval import EvalSettings, evaluate, solver_bindings
    from rolegraph.eval.tasks import default_file, load_task

    check_prompts_dir(prompts_dir)
    check_role(load_config(config), solver_role, "--solver-role")
    path = file or default_file(task)
    samples = samples or k
    if k > samples:
        raise ConfigError(f"--k {k} needs at least {k} samples, got --samples {samples}", "raise --samples")
    load_task(task, path, n)  # bad files fail before any endpoint starts
    cfg, bindings = solver_bindings(config, role, solver_role)
    eval_settings = EvalSettings(
        task=task,
        file=path,
        n=n,
        samples=samples,
        k=k,
        temperature=(0.0 if samples == 1 else 0.7) if temperature is None else temperature,
        solver_role=solver_role,
        **settings,
    )
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", "+".join(b.label for b in bindings))
    run_dir = run_dir or Path("runs/eval") / f"{task}-{slug}"
    report = asyncio.run(evaluate(cfg, bindings, eval_settings, run_dir, prompts_dir=prompts_dir))
    report.render(console)
