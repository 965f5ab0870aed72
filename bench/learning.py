"""Learning check: does rolegraph's loop make the built-in model better on held-out problems, on CPU?

1. A synthetic task family generated from a seed: one-step arithmetic word problems ("Mia has 7 marbles and
   finds 5 more…"), answered by the `arith_solver` role (agents/prompts/arith_solver.md: one worked example,
   then 'Answer: N'), which the built-in 135M model passes about a third of the time. Train and test problems
   are disjoint by construction (no text appears in both).
2. Baseline: `rolegraph eval` (the eval graph) of the solver on the test problems, avg@S per problem.
3. R rounds of self-play on the training problems, each ending with the new adapter handed off to the solver:
   `--method sft` (the default) is rejection-sampling fine-tuning: the selfplay graph's verified rollouts,
   SFT of a fresh LoRA on the passing ones (distillation from the model's own verified samples); `--method
   dpo` is `rolegraph train selfplay` (DPO on passing vs failing rollouts).
4. The same eval of the adapter on the test problems. Reported: accuracy before and after, the number of test
   problems, and a 95% interval on the paired difference. Target: an interval that excludes zero within 30
   minutes on 2 cores. Figures go to bench/RESULTS.md ("## Learning check").

`--tiny` is the smoke setting (a few problems, one round, one training step): it checks the pipeline, not
learning. Set ROLEGRAPH_BENCH_BASE_URL to attach to a running server (it needs runtime LoRA); otherwise one is
launched (or reused). Adapters go to a temporary registry, not $ROLEGRAPH_HOME.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from results import write_section  # bench/ is on sys.path when run as a script
from rich.console import Console

from rolegraph.agents.registry import PROMPTS_DIR, register_role, role_from_file
from rolegraph.config import EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig
from rolegraph.errors import TrainingError
from rolegraph.eval import EvalReport, EvalSettings, evaluate
from rolegraph.eval.bindings import Binding
from rolegraph.eval.metrics import paired_difference
from rolegraph.models import prepare_model
from rolegraph.serving import EndpointPool
from rolegraph.trainers.config import DPOSettings, SFTSettings
from rolegraph.trainers.distill import distill
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.pairs import ProblemRollouts
from rolegraph.trainers.registry import AdapterRegistry
from rolegraph.trainers.selfplay import SelfPlay, SelfPlaySettings

SECTION = "## Learning check"
ROLE = "arith_solver"
"""The solver role under test: agents/prompts/arith_solver.md (one worked example, then 'Answer: N'), parsed
like the stock solver (`\\boxed{}` or an 'answer: N' phrase) and checked with math-verify. The stock
solver prompt made the 135M model write a long preamble that never reached an answer (0 of 32 passed)."""
console = Console(stderr=True)

NAMES = ("Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Ines", "Kai", "Lena", "Ravi")
THINGS = ("marbles", "apples", "stickers", "coins", "books", "shells", "pencils", "cards")
TEMPLATES = (
    ("{n} has {a} {t} and finds {b} more. How many {t} does {n} have now?", lambda a, b: a + b),
    ("{n} has {a} {t} and gives away {b}. How many {t} does {n} have left?", lambda a, b: a - b),
    ("{n} buys {a} bags with {b} {t} in each bag. How many {t} does {n} buy?", lambda a, b: a * b),
)


def register_solver() -> None:
    """Make the `arith_solver` role (its prompt file, the stock solver's parser) available to every graph."""
    register_role(
        role_from_file(ROLE, PROMPTS_DIR / f"{ROLE}.md", "boxed", {"temperature": 0.7, "max_tokens": 32})
    )


def word_problems(count: int, seed: int) -> list[dict[str, str]]:
    """`count` distinct arithmetic word problems with their answers, drawn from `seed`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < count:
        template, answer = rng.choice(TEMPLATES)
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        if answer(a, b) < 0:
            continue
        text = template.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"w{len(rows)}", "problem": text, "answer": str(answer(a, b))})
    return rows


def split(rows: list[dict[str, str]], test: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    train, held_out = rows[test:], rows[:test]
    assert not {r["problem"] for r in train} & {r["problem"] for r in held_out}, "train and test overlap"
    return train, held_out


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _server() -> tuple[str, Any]:
    """The server's URL and the handle of a server launched here (None when attached)."""
    url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
    if url:
        return (url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"), None
    from rolegraph.serving.launcher import launch_server

    handle = launch_server("bench", LaunchSpec(), console=console)
    return handle.base_url, handle


def _per_problem(report: EvalReport) -> dict[str, float]:
    return {r.problem_id: r.avg for r in report.bindings[0].results if r.checked}


async def _eval(
    pool: EndpointPool, file: Path, args: argparse.Namespace, run_dir: Path, label: str
) -> EvalReport:
    settings = EvalSettings(
        task="math", file=file, n=args.test, samples=args.samples, k=1, max_tokens=args.max_tokens,
        temperature=args.temperature, seed=args.seed, concurrency=args.concurrency, solver_role=ROLE,
    )  # fmt: skip
    return await evaluate(pool, [Binding(ROLE, label, "bench")], settings, run_dir, progress=False)


def _passed(groups: list[ProblemRollouts]) -> str:
    """How many of a round's verified rollouts passed (the training problems' pass rate under the policy)."""
    verified = [r for g in groups for r in g.verified]
    passed = sum(bool(r.passed) for r in verified)
    return f"{passed}/{len(verified)} rollouts passed ({passed / max(len(verified), 1):.0%})"


async def _round(pool: EndpointPool, train: Path, args: argparse.Namespace, work: Path, index: int) -> str:
    """One self-play round; what it sampled and the adapter it handed off (or why none was trained)."""
    registry = AdapterRegistry(work / "adapters")
    settings = SelfPlaySettings(
        problems=train, run_dir=work / f"round{index}", model_dir=prepare_model(), max_problems=args.train,
        policy_role=ROLE, n=args.rollouts, max_tokens=args.max_tokens, temperature=args.rollout_temperature,
        seed=args.seed + index, max_pass_rate=args.max_pass_rate, concurrency=args.concurrency,
        dpo=DPOSettings(max_steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size),
    )  # fmt: skip
    play = SelfPlay(pool, settings, registry)
    if args.method == "dpo":
        report = await play.run()
        rates = report.pass_rates
        sampled = f"mean pass rate {sum(rates.values()) / max(len(rates), 1):.0%}, {report.pairs} DPO pairs"
        return f"{sampled} → {report.adapter or f'no adapter ({report.pairs_report.dropped})'}"
    _, groups, _ = await play.rollouts()
    sft = SFTSettings(
        model=prepare_model(), max_steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size
    )
    try:
        _, adapter = await asyncio.to_thread(
            distill, settings.run_dir, sft, teacher_role=ROLE, student_role=ROLE, registry=registry
        )
    except TrainingError as exc:
        return f"{_passed(groups)} → no verified samples to distil ({exc.message})"
    await hand_off(pool, ROLE, adapter)
    return f"{_passed(groups)} → SFT on them → {adapter.lora_name}"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="learning check (see the module docstring)")
    parser.add_argument("--method", choices=("dpo", "sft"), default="sft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=48, help="training problems")
    parser.add_argument("--test", type=int, default=40, help="held-out test problems")
    parser.add_argument("--samples", type=int, default=4, help="eval answers per test problem")
    parser.add_argument("--rollouts", type=int, default=4, help="self-play rollouts per training problem")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.7, help="eval sampling temperature")
    parser.add_argument("--max-pass-rate", type=float, default=0.75)
    parser.add_argument("--steps", type=int, default=8, help="trainer steps per round")
    parser.add_argument("--lr", type=float, help="learning rate (default: 5e-5 for dpo, 5e-4 for sft)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rollout-temperature", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="smoke setting: checks the pipeline, not learning"
    )
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 5e-5 if args.method == "dpo" else 5e-4
    if args.tiny:
        args.rounds, args.train, args.test, args.samples, args.rollouts = 1, 4, 3, 2, 2
        args.max_tokens, args.steps = 24, 1
    return args


async def main() -> int:
    args = _args()
    register_solver()
    base_url, handle = _server()
    try:
        return await _check(args, base_url)
    finally:
        if handle is not None and handle.owned:
            handle.stop()


async def _check(args: argparse.Namespace, base_url: str) -> int:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rg-bench-learning-"))
    train_rows, test_rows = split(word_problems(args.train + args.test, args.seed), args.test)
    train, test = _write(work / "train.jsonl", train_rows), _write(work / "test.jsonl", test_rows)
    config = RolegraphConfig(
        endpoints={"bench": EndpointConfig(base_url=base_url)},
        roles={ROLE: RoleBinding(endpoint="bench")},
    )
    rounds: list[str] = []
    loads = [os.getloadavg()[0]]
    async with EndpointPool(config) as pool:
        before = await _eval(pool, test, args, work / "before", "base")
        console.print(f"before: avg@{args.samples} {before.bindings[0].scores.avg_k:.3f}")
        loads.append(os.getloadavg()[0])
        for index in range(args.rounds):
            rounds.append(await _round(pool, train, args, work, index))
            console.print(f"round {index + 1}: {rounds[-1]}")
            loads.append(os.getloadavg()[0])
        after = await _eval(pool, test, args, work / "after", pool.bindings[ROLE].model or "?")
    minutes = (time.perf_counter() - started) / 60
    loads.append(os.getloadavg()[0])
    b, a = _per_problem(before), _per_problem(after)
    common = sorted(set(b) & set(a))
    diff, low, high = paired_difference([b[p] for p in common], [a[p] for p in common])
    sb, sa = before.bindings[0].scores, after.bindings[0].scores
    verdict = "interval excludes zero" if low > 0 else "interval includes zero: no measured improvement"
    settings = " ".join(
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("method", "rounds", "train", "test", "samples", "rollouts", "max_tokens", "steps", "lr",
                     "batch_size", "rollout_temperature", "temperature", "seed")
    )  # fmt: skip
    text = (
        f"{SECTION}\n\n"
        f"`python bench/learning.py {settings}{' --tiny' if args.tiny else ''}` ({platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, {minutes:.1f} min wall, 1-minute load "
        f"average {min(loads):.1f}–{max(loads):.1f} at the phase boundaries). Synthetic arithmetic word "
        f"problems (seed {args.seed}), {len(train_rows)} train / {len(test_rows)} held-out test, disjoint; "
        f"role `{ROLE}`; "
        f"accuracy is avg@{args.samples} at temperature {args.temperature}.\n\n"
        "| | accuracy [95% CI] | test problems |\n|---|---|---|\n"
        f"| before (base) | {sb.avg_k:.3f} [{sb.avg_k_ci[0]:.3f}, {sb.avg_k_ci[1]:.3f}] | {sb.problems} |\n"
        f"| after {args.rounds} {args.method} round(s) | {sa.avg_k:.3f} [{sa.avg_k_ci[0]:.3f}, "
        f"{sa.avg_k_ci[1]:.3f}] | {sa.problems} |\n"
        f"| difference (paired) | **{diff:+.3f}** [{low:+.3f}, {high:+.3f}] | {len(common)} |\n\n"
        + "".join(f"Round {i}: {line}.\n" for i, line in enumerate(rounds, 1))
        + f"\nVerdict: {verdict}.\n"
    )
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
