"""Bench `handoff`: adapter saved → serving time and failed requests under concurrent load, and trainer
overhead of rolegraph's SFT wrapper against TRL's SFTTrainer called directly on the same data (same run).

Attach to a running server with ROLEGRAPH_BENCH_BASE_URL=http://127.0.0.1:PORT/v1, or a server is launched.
Targets: swap < 2 s; zero failed requests; trainer overhead < 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = 4
ROWS = [
    {
        "prompt": [{"role": "user", "content": f"Say hello {i}."}],
        "completion": [{"role": "assistant", "content": "Hi!"}],
    }
    for i in range(8)
]


def trl_direct(model_dir: Path, out: Path) -> tuple[float, float]:
    """TRL's SFTTrainer alone (no rolegraph code): wall seconds for load, STEPS steps and saving the adapter,
    and TRL's own train steps/s."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(out / "trl"),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        max_length=512,
        warmup_steps=0,
        seed=0,
        dataloader_num_workers=0,
        packing=False,
        completion_only_loss=True,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        peft_config=lora,
    )
    output = trainer.train()
    trainer.model.save_pretrained(str(out / "trl-adapter"))
    return time.perf_counter() - started, float(output.metrics["train_steps_per_second"])


def rolegraph_sft(model_dir: Path, out: Path) -> tuple[float, float, Path]:
    """The same training through rolegraph's wrapper (validation, quieting, atomic adapter save)."""
    from datasets import Dataset

    from rolegraph.trainers.config import SFTSettings
    from rolegraph.trainers.sft import train_sft

    started = time.perf_counter()
    result = train_sft(
        SFTSettings(model=model_dir, max_steps=STEPS, batch_size=2),
        Dataset.from_list(ROWS),
        out / "rg-adapter",
    )
    return time.perf_counter() - started, result.steps_per_s, result.adapter_dir


async def swap_under_load(
    base_url: str, adapter_dir: Path, adapters_root: Path, swaps: int = 3, clients: int = 8
) -> dict[str, Any]:
    """`swaps` hand-offs of a saved adapter while `clients` tasks keep sending requests to the role.

    Saved → serving is timed from the moment a trained adapter dir exists (before it is published as the next
    version) until the hand-off returns: loaded by vLLM, listed in /v1/models, and the role's binding moved.
    The first request answered by the new version is timed too (it includes generating 8 tokens under load).
    """
    from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
    from rolegraph.serving import EndpointPool
    from rolegraph.trainers.handoff import hand_off
    from rolegraph.trainers.registry import AdapterRegistry

    config = RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=base_url)},
        roles={"solver": RoleBinding(endpoint="local")},
    )
    registry = AdapterRegistry(adapters_root)
    sampling = SamplingParams(temperature=0.0, max_tokens=8)
    ok, failed, errors = 0, 0, []
    swap_s: list[float] = []
    first_answer_s: list[float] = []
    served_by: dict[str, float] = {}
    async with EndpointPool(config) as pool:
        stop = asyncio.Event()

        async def worker() -> None:
            nonlocal ok, failed
            while not stop.is_set():
                client, model, _ = pool.resolve("solver")
                try:
                    result = await client.chat(
                        [{"role": "user", "content": "Say hello."}], model=model, sampling=sampling
                    )
                    ok += 1
                    served_by.setdefault(result.model, time.perf_counter())
                except Exception as exc:
                    failed += 1
                    errors.append(str(exc)[:200])

        tasks = [asyncio.create_task(worker()) for _ in range(clients)]
        await asyncio.sleep(2.0)
        for _ in range(swaps):
            saved = _copy(adapter_dir, adapters_root)  # a freshly trained adapter, as a trainer leaves it
            started = time.perf_counter()
            adapter = registry.publish("solver", saved)
            published_s = time.perf_counter() - started
            report = await hand_off(pool, "solver", adapter, keep=2)
            # Serving from the moment the binding moved; unloading the oldest version happens after that.
            swap_s.append(published_s + report.load_s)
            while adapter.lora_name not in served_by and not stop.is_set():
                await asyncio.sleep(0.01)
            first_answer_s.append(served_by[adapter.lora_name] - started)
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "ok": ok,
        "failed": failed,
        "errors": errors[:3],
        "swap_s": swap_s,
        "first_answer_s": first_answer_s,
    }


def _copy(src: Path, root: Path) -> Path:
    import shutil

    dst = root / f"copy-{time.time_ns()}"
    shutil.copytree(src, dst)
    return dst


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    from rolegraph.models import prepare_model
    from rolegraph.trainers.base import quiet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="ABBA rounds of the trainer comparison.")
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    quiet()
    model_dir = prepare_model()
    load_before = os.getloadavg()[0]
    trl_wall: list[float] = []
    rg_wall: list[float] = []
    trl_sps: list[float] = []
    rg_sps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        adapter = None
        for round_ in range(args.repeat):
            # Alternate the order (ABBA) so neither side always runs on the warmer cache.
            order = ("trl", "rg") if round_ % 2 == 0 else ("rg", "trl")
            for side in order:
                if side == "trl":
                    wall, sps = trl_direct(model_dir, out)
                    trl_wall.append(wall)
                    trl_sps.append(sps)
                else:
                    wall, sps, adapter = rolegraph_sft(model_dir, out)
                    rg_wall.append(wall)
                    rg_sps.append(sps)
        assert adapter is not None

        url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
        handle = None
        if not url:
            from rolegraph.config import LaunchSpec
            from rolegraph.serving import launch_server

            handle = launch_server("bench", LaunchSpec())
            url = handle.base_url
        try:
            swap = asyncio.run(
                swap_under_load(url, adapter, out / "adapters", swaps=args.swaps, clients=args.clients)
            )
        finally:
            if handle is not None and handle.owned:
                handle.stop()
    load_after = os.getloadavg()[0]
    trl_s, rg_s = median(trl_wall), median(rg_wall)
    worst = max(swap["swap_s"])
    print("## handoff")
    print(f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}, {os.cpu_count()} cores")
    print(
        f"trainer, load → {STEPS} SFT steps → adapter saved (median of {args.repeat}): rolegraph {rg_s:.2f}s "
        f"vs TRL direct {trl_s:.2f}s → ratio {rg_s / trl_s:.3f} (overhead {(rg_s / trl_s - 1) * 100:+.1f}%, "
        "target < 5%)"
    )
    print(
        f"steps/s end to end: rolegraph {STEPS / rg_s:.3f} vs TRL {STEPS / trl_s:.3f}; "
        f"TRL's train loop only: rolegraph {median(rg_sps):.3f} vs TRL {median(trl_sps):.3f} "
        f"→ ratio {median(rg_sps) / median(trl_sps):.3f}"
    )
    print(f"  runs (s): rolegraph {[round(x, 2) for x in rg_wall]}, TRL {[round(x, 2) for x in trl_wall]}")
    print(
        f"swap, saved → serving ({args.clients} concurrent clients): worst {worst:.2f}s, median "
        f"{median(swap['swap_s']):.2f}s (target < 2 s) → ratio to target {worst / 2.0:.2f}; "
        f"first answer from the new version after {median(swap['first_answer_s']):.2f}s (median)"
    )
    print(f"requests during swaps: {swap['ok']} ok, {swap['failed']} failed (target 0) {swap['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
