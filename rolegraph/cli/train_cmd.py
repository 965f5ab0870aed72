"""`rolegraph train em|selfplay|sft|dpo|grpo`, `rolegraph loop` and `rolegraph adapters list`.

Every command checks its inputs (files, roles, options, device) before it trains or starts a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rolegraph.cluster.cli import with_ray
from rolegraph.trainers.config import Device

if TYPE_CHECKING:
    from rolegraph.config import RolegraphConfig
    from rolegraph.trainers.config import TrainSettings

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")
S = TypeVar("S", bound="TrainSettings")

train_app = typer.Typer(
    help="Train LoRA adapters with TRL and hand them off to the serving endpoints.", no_args_is_help=True
)
adapters_app = typer.Typer(help="Versioned LoRA adapters and where they are loaded.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", help="Config YAML (default: the built-in model, launched).")
RoleOpt = typer.Option([], "--role", help="Rebind a role: ROLE=ENDPOINT:MODEL (repeatable).")
ModelOpt = typer.Option(None, "--model", help="Base model HF dir for training (default: the built-in model).")
DeviceOpt = typer.Option(
    None, "--device", help="Train on cpu or gpu (default: the config's train.device, cpu)."
)


def _check_model(model: Path | None) -> None:
    from rolegraph.errors import ModelNotFoundError

    if model is not None and not (model / "config.json").is_file():
        raise ModelNotFoundError(
            f"--model {model}: not a Hugging Face model directory (no config.json)",
            "pass a model directory, or leave out --model to train the built-in model",
        )


def _model_dir(model: Path | None) -> Path:
    from rolegraph.models import prepare_model

    return Path(model) if model is not None else prepare_model()


def _placed(settings: S, cfg: RolegraphConfig, device: Device | None) -> S:
    """`settings` on the command line's device, else the config's `train` section (which also gives bf16)."""
    from rolegraph.trainers.config import check_device

    settings.device = device or cfg.train.device
    settings.bf16 = cfg.train.bf16
    check_device(settings.device)
    return settings


def _with_pool(cfg: RolegraphConfig, body: Callable[[Any], Awaitable[T]], roles: tuple[str, ...] = ()) -> T:
    """Open the endpoint pool (binding `roles` the config does not name), run `body(pool)`, close it."""
    from rolegraph.graphs.runtime import bind_missing_roles
    from rolegraph.serving import EndpointPool

    bound = bind_missing_roles(cfg, roles)

    async def main() -> T:
        async with EndpointPool(bound, console=err_console) as pool:
            return await body(pool)

    return asyncio.run(main())


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@train_app.command("em")
@with_ray
def em(
    seeds: Path = typer.Option(..., "--seeds", help="JSONL of problems (math500_dev.jsonl format)."),
    iterations: int = typer.Option(1, "--iterations", min=1),
    run_dir: Path = typer.Option(Path("runs/em"), "--run-dir", help="Store for every generation and score."),
    num_seeds: int = typer.Option(2, "--num-seeds", min=1),
    k: int = typer.Option(2, "--k", min=1, help="Rationales sampled per seed in the E-step."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1),
    steps: int = typer.Option(1, "--steps", min=1, help="SFT steps per adapter per iteration."),
    lr: float = typer.Option(1e-4, "--lr"),
    keep: int = typer.Option(2, "--keep", min=2, help="Adapter versions kept loaded per role."),
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="Train each iteration from the base model, not the last adapter."
    ),
    prompts_dir: Path | None = typer.Option(
        None, "--prompts-dir", help="Override role prompts with ROLE.md files."
    ),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """PromptCoT 2.0 EM: train the rationale model q and the problem model p, hand off both each iteration."""
    from rolegraph.cli.run_cmd import check_prompts_dir
    from rolegraph.config import load_config
    from rolegraph.trainers.config import SFTSettings
    from rolegraph.trainers.em import EMLoop, EMSettings, IterationReport, load_seeds

    cfg = load_config(config, role)
    sft_settings = _placed(SFTSettings(max_steps=steps, learning_rate=lr), cfg, device)
    load_seeds(seeds, num_seeds)
    check_prompts_dir(prompts_dir)
    _check_model(model)
    settings = EMSettings(
        seeds=seeds,
        run_dir=run_dir,
        model_dir=_model_dir(model),
        iterations=iterations,
        num_seeds=num_seeds,
        k=k,
        max_tokens=max_tokens,
        keep=keep,
        sft=sft_settings,
        from_scratch=from_scratch,
        prompts_dir=prompts_dir,
    )

    def show(r: IterationReport) -> None:
        console.print(
            f"iteration {r.iteration}: mean best log p(z,x|c) {_figure(r.mean_best_reward)}; "
            f"mean log p(x|c,z*) {_figure(r.mean_log_p_x_before)} → {_figure(r.mean_log_p_x_after)}; "
            f"q={r.q_adapter} p={r.p_adapter}"
        )

    async def body(pool: Any) -> None:
        loop = EMLoop(pool, settings)
        try:
            await loop.run(on_iteration=show)
        finally:
            loop.close()

    _with_pool(cfg, body)


@train_app.command("selfplay")
@with_ray
def selfplay(
    problems: Path = typer.Option(..., "--problems", help="A promptcot run dir or a JSONL problem file."),
    run_dir: Path = typer.Option(Path("runs/selfplay"), "--run-dir"),
    policy_role: str = typer.Option("solver", "--policy-role"),
    teacher_role: str | None = typer.Option(None, "--teacher-role", help="Majority-vote reference role."),
    max_problems: int = typer.Option(4, "--max-problems", min=1),
    n: int = typer.Option(4, "--n", min=2, help="Rollouts per problem."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1),
    max_pass_rate: float = typer.Option(0.5, "--max-pass-rate", min=0.0, max=1.0),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed for reproducible rollouts."),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox for code problems: auto, docker, bwrap."),
    steps: int = typer.Option(2, "--steps", min=1),
    hand: bool = typer.Option(True, "--hand-off/--no-hand-off", help="Load the adapter and switch."),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """Self-play with DPO: roll out, verify (math-verify or sandboxed tests), pair passes with failures,
    train and hand off the policy."""
    from rolegraph.config import check_role, load_config
    from rolegraph.errors import ConfigError
    from rolegraph.trainers.config import DPOSettings
    from rolegraph.trainers.selfplay import SelfPlay, SelfPlaySettings, load_problems

    cfg = load_config(config, role)
    check_role(cfg, policy_role, "--policy-role")
    if teacher_role is not None:
        check_role(cfg, teacher_role, "--teacher-role")
    dpo_settings = _placed(DPOSettings(max_steps=steps), cfg, device)
    load_problems(problems, max_problems)
    if n > 1 and temperature == 0:
        raise ConfigError(
            f"--n {n} rollouts at --temperature 0 would all be the same", "pass --temperature above 0"
        )
    _check_model(model)
    settings = SelfPlaySettings(
        problems=problems,
        run_dir=run_dir,
        model_dir=_model_dir(model),
        policy_role=policy_role,
        teacher_role=teacher_role,
        max_problems=max_problems,
        n=n,
        max_tokens=max_tokens,
        max_pass_rate=max_pass_rate,
        temperature=temperature,
        seed=seed,
        sandbox=sandbox,
        hand_off=hand,
        dpo=dpo_settings,
    )

    async def body(pool: Any) -> None:
        play = SelfPlay(pool, settings)
        try:
            report = await play.run()
        finally:
            play.close()
        rates = ", ".join(f"{k}={v:.2f}" for k, v in report.pass_rates.items())
        console.print(f"{report.problems} problems; pass rates: {rates or 'none'}")
        console.print(f"dropped: {report.pairs_report.dropped or 'none'}; {report.pairs} pairs")
        if report.skipped:
            console.print(f"not checked: {report.skipped}")
        if report.unverified:
            console.print(
                f"{report.unverified} rollouts could not be verified (infrastructure failure):"
                " left out of pairs"
            )
        console.print(f"adapter: {report.adapter or 'none (no pairs: nothing to train)'}")

    roles = (policy_role,) if teacher_role is None else (policy_role, teacher_role)
    _with_pool(cfg, body, roles)


def _hand_off(cfg: RolegraphConfig, role_name: str, adapter: Any) -> None:
    from rolegraph.trainers.handoff import hand_off

    async def body(pool: Any) -> None:
        report = await hand_off(pool, role_name, adapter)
        console.print(f"{role_name} now serves {adapter.lora_name} (hand-off {report.load_s:.2f}s)")

    _with_pool(cfg, body, (role_name,))


def _train_file(
    method: str,
    data: Path,
    role_name: str,
    role_option: str,
    steps: int,
    lr: float | None,
    model: Path | None,
    record_in: Path | None,
    cfg: RolegraphConfig,
    device: Device | None,
    hand: bool,
) -> None:
    from rolegraph.config import check_role
    from rolegraph.trainers.data import read_rows
    from rolegraph.trainers.loop import default_settings, train_rows
    from rolegraph.trainers.recording import record_training
    from rolegraph.trainers.registry import AdapterRegistry

    check_role(cfg, role_name, role_option)
    settings = _placed(default_settings(method), cfg, device)
    rows = read_rows(data, method)
    _check_model(model)
    settings.model = _model_dir(model)
    settings.max_steps = steps
    if lr is not None:
        settings.learning_rate = lr
    registry = AdapterRegistry()
    result = train_rows(method, settings, rows, registry.staging(role_name), record_in)
    adapter = registry.publish(role_name, result.adapter_dir)
    console.print(
        f"trained {adapter.lora_name} at {adapter.path} ({result.metrics.get('train_loss', 0):.4f} loss)"
    )
    if record_in is not None:
        record_training(record_in, result, inputs=[str(data)], adapter=adapter)
    if hand:
        _hand_off(cfg, role_name, adapter)


@train_app.command("sft")
def sft(
    data: Path | None = typer.Option(None, "--data", help="An sft export (JSONL or Parquet)."),
    from_run: Path | None = typer.Option(None, "--from", help="Distil from this run dir's verified traces."),
    teacher_role: str = typer.Option("solver", "--teacher-role"),
    student_role: str = typer.Option("solver", "--student-role", help="The role the adapter is for."),
    steps: int = typer.Option(2, "--steps", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    hand: bool = typer.Option(
        False, "--hand-off/--no-hand-off", help="Load it into the endpoints and switch."
    ),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """Supervised fine-tuning on an export, or distillation of a teacher role's verified traces (--from)."""
    from rolegraph.config import check_role, load_config
    from rolegraph.errors import ConfigError

    if (data is None) == (from_run is None):
        raise ConfigError(
            "give exactly one of --data FILE or --from RUN_DIR", "see `rolegraph train sft --help`"
        )
    cfg = load_config(config, role)
    if data is not None:
        _train_file("sft", data, student_role, "--student-role", steps, lr, model, None, cfg, device, hand)
        return
    assert from_run is not None
    from rolegraph.store import STORE_FILE
    from rolegraph.trainers.config import SFTSettings
    from rolegraph.trainers.distill import distill

    check_role(cfg, teacher_role, "--teacher-role")
    check_role(cfg, student_role, "--student-role")
    if not (from_run / STORE_FILE).is_file():
        raise ConfigError(f"--from {from_run}: not a rolegraph run directory", "pass the --run-dir of a run")
    settings = _placed(SFTSettings(max_steps=steps), cfg, device)
    _check_model(model)
    settings.model = _model_dir(model)
    if lr is not None:
        settings.learning_rate = lr
    result, adapter = distill(from_run, settings, teacher_role=teacher_role, student_role=student_role)
    console.print(f"distilled {result.rows} verified {teacher_role} traces into {adapter.lora_name}")
    if hand:
        _hand_off(cfg, student_role, adapter)


def _file_command(method: str) -> Callable[..., None]:
    def command(
        data: Path = typer.Option(..., "--data", help=f"A {method} export (JSONL or Parquet)."),
        train_role: str = typer.Option("solver", "--train-role", help="The role the adapter is for."),
        steps: int = typer.Option(2, "--steps", min=1),
        lr: float | None = typer.Option(None, "--lr"),
        record_in: Path | None = typer.Option(
            None, "--run-dir", help="Record the training run in this store."
        ),
        hand: bool = typer.Option(False, "--hand-off/--no-hand-off"),
        device: Device | None = DeviceOpt,
        config: Path | None = ConfigOpt,
        role: list[str] = RoleOpt,
        model: Path | None = ModelOpt,
    ) -> None:
        from rolegraph.config import load_config

        cfg = load_config(config, role)
        _train_file(method, data, train_role, "--train-role", steps, lr, model, record_in, cfg, device, hand)

    command.__doc__ = (
        f"Train a LoRA with TRL's {method.upper()} trainer on a `rolegraph export --format {method}`."
    )
    return command


train_app.command("dpo")(_file_command("dpo"))
train_app.command("grpo")(_file_command("grpo"))


def loop(
    graph: str = typer.Argument(..., help="A built-in graph name or a YAML spec path."),
    train_every: int = typer.Option(4, "--train-every", min=1, help="Train after every N finished episodes."),
    trainer: str = typer.Option("sft", "--trainer", help="sft, dpo or grpo."),
    train_role: str = typer.Option("solver", "--train-role"),
    run_dir: Path = typer.Option(Path("runs/loop"), "--run-dir"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="Trainings before stopping."),
    steps: int = typer.Option(2, "--steps", min=1, help="Training steps per round."),
    batch: int = typer.Option(2, "--batch", min=1, help="Episodes in flight at a time."),
    episodes_after: int = typer.Option(
        0, "--episodes-after", min=0, help="Episodes to run on the last adapter before stopping."
    ),
    train_in: str = typer.Option(
        "thread", "--train-in", help="thread, or process (better with spare cores or a GPU)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Graph option KEY=VALUE (repeatable)."),
    device: Device | None = DeviceOpt,
    config: Path | None = ConfigOpt,
    role: list[str] = RoleOpt,
    model: Path | None = ModelOpt,
) -> None:
    """Keep a graph running and train every N finished episodes; the graph never waits for training."""
    from rolegraph.cli.run_cmd import parse_sets
    from rolegraph.config import load_config
    from rolegraph.errors import ConfigError
    from rolegraph.graphs.registry import get_graph
    from rolegraph.trainers.loop import LoopReport, LoopSettings, check_train_role, default_settings, periodic

    if train_in not in ("process", "thread"):
        raise ConfigError(f"--train-in must be thread or process, not '{train_in}'", "use --train-in thread")
    train_settings = default_settings(trainer)
    graph_def = get_graph(graph)
    check_train_role(graph_def, train_role)
    cfg = load_config(config, role, known_roles=graph_def.roles)
    options = parse_sets(set_, graph_def)
    _placed(train_settings, cfg, device)
    train_settings.max_steps = steps
    _check_model(model)
    settings = LoopSettings(
        graph=graph,
        run_dir=run_dir,
        model_dir=_model_dir(model),
        train_every=train_every,
        trainer=trainer,
        role=train_role,
        rounds=rounds,
        options=options,
        settings=train_settings,
        batch=batch,
        episodes_after=episodes_after,
        isolation="process" if train_in == "process" else "thread",
    )

    async def body(pool: Any) -> LoopReport:
        return await periodic(pool, settings, on_event=lambda text: err_console.print(text))

    report = _with_pool(cfg, body, graph_def.roles)
    for item in report.rounds:
        console.print(
            f"{item.adapter}: trained on {item.rows} rows after {item.episodes_before} episodes; "
            f"{item.episodes_during} episodes finished while training; hand-off {item.handoff_s:.2f}s"
        )
    console.print(f"{report.episodes} episodes finished; handed off: {', '.join(report.adapters)}")


@adapters_app.command("list")
def list_adapters(config: Path | None = ConfigOpt, role: list[str] = RoleOpt) -> None:
    """Published adapter versions, and which endpoints have each loaded (from each endpoint's /v1/models)."""
    from rolegraph.config import load_config
    from rolegraph.serving import Client
    from rolegraph.trainers.registry import AdapterRegistry, parse_lora_name

    registry = AdapterRegistry()
    cfg = load_config(config, role)
    attached = {name: ep.base_url for name, ep in cfg.endpoints.items() if ep.base_url}

    async def loaded() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, url in attached.items():
            async with Client(name, url, max_retries=0, timeout_s=10) as client:
                try:
                    out[name] = await client.list_models()
                except Exception as exc:  # a down endpoint is shown, not fatal
                    err_console.print(f"endpoint {name}: {exc}")
        return out

    served = asyncio.run(loaded())
    table = Table("adapter", "path", "loaded on")
    names = set()
    for role_name in registry.roles():
        for version in registry.versions(role_name):
            names.add(version.lora_name)
            where = [ep for ep, models in served.items() if version.lora_name in models]
            table.add_row(version.lora_name, str(version.path), ", ".join(where) or "-")
    for ep, models in served.items():
        for model_name in models:
            if model_name not in names and parse_lora_name(model_name) is not None:
                table.add_row(model_name, "(not in this adapters dir)", ep)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    from rolegraph.cli import azr_cmd, cort_cmd  # imported here: they build on this module

    train_app.command("azr")(with_ray(azr_cmd.train_azr))
    train_app.command("rft")(with_ray(cort_cmd.rft))
    train_app.command("tir-grpo")(with_ray(cort_cmd.tir_grpo))
    app.add_typer(train_app, name="train")
    app.add_typer(adapters_app, name="adapters")
    app.command("loop")(with_ray(loop))
