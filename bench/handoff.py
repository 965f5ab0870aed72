"""Bench `handoff`: adapter saved → serving time and failed requests under concurrent load, and trainer
overhead of rolegraph's SFT wrapper against TRL's SFTTrainer called directly on the same data (same run).

Attach to a running server with ROLEGRAPH_BENCH_BASE_URL=http://127.0.0.1:PORT/v1, or a server is launched.
Targets: swap < 2 s; zero failed requests; trainer overhead < 5 %.
"""

from __future__ import annotations

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


def trl_direct(model_dir: Path, out: Path) -> float:
    """Wall seconds for TRL's SFTTrainer alone: load, train STEPS, save the adapter (no rolegraph code)."""
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
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    trainer.model.save_pretrained(str(out / "trl-adapter"))
    return time.perf_counter() - started


def rolegraph_sft(model_dir: Path, out: Path) -> tuple[float, Path]:
    from datasets import Dataset
    from rolegraph.trainers.config import SFTSettings
    from rolegraph.trainers.sft import train_sft

    started = time.perf_counter()
    result = train_sft(
        SFTSettings(model=model_dir, max_steps=STEPS, batch_size=2),
        Dataset.from_list(ROWS),
        out / "rg-adapter",
    )
    return time.perf_counter() - started, result.adapter_dir


async def swap_under_load(
    base_url: str, adapter_dir: Path, adapters_root: Path, swaps: int = 3
) -> dict[str, Any]:
    from rolegraph.trainers.handoff import hand_off
    from rolegraph.trainers.registry import AdapterRegistry

    from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
    from rolegraph.serving import EndpointPool

    config = RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=base_url)},
        roles={"solver": RoleBinding(endpoint="local")},
    )
    registry = AdapterRegistry(adapters_root)
    sampling = SamplingParams(temperature=0.0, max_tokens=8)
    ok, failed, swap_s = 0, 0, []
    async with EndpointPool(config) as pool:
        stop = asyncio.Event()

        async def worker() -> None:
            nonlocal ok, failed
            while not stop.is_set():
                client, model, _ = pool.resolve("solver")
                try:
                    await client.chat(
                        [{"role": "user", "content": "Say hello."}], model=model, sampling=sampling
                    )
                    ok += 1
                except Exception:
                    failed += 1

        tasks = [asyncio.create_task(worker()) for _ in range(8)]
        await asyncio.sleep(1.0)
        for _ in range(swaps):
            adapter = registry.publish("solver", _copy(adapter_dir, adapters_root))
            report = await hand_off(pool, "solver", adapter)
            swap_s.append(report.load_s)
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
    return {"ok": ok, "failed": failed, "swap_s": swap_s}


def _copy(src: Path, root: Path) -> Path:
    import shutil

    dst = root / f"copy-{time.time_ns()}"
    shutil.copytree(src, dst)
    return dst


def main() -> int:
    from rolegraph.trainers.base import quiet

    from rolegraph.models import prepare_model

    quiet()
    model_dir = prepare_model()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # Alternate order so neither side always gets the warm cache.
        trl_a = trl_direct(model_dir, out)
        rg_a, adapter = rolegraph_sft(model_dir, out)
        rg_b, _ = rolegraph_sft(model_dir, out)
        trl_b = trl_direct(model_dir, out)
        trl_s, rg_s = (trl_a + trl_b) / 2, (rg_a + rg_b) / 2
        overhead = rg_s / trl_s - 1

        url = os.environ.get("ROLEGRAPH_BENCH_BASE_URL")
        handle = None
        if not url:
            from rolegraph.config import LaunchSpec
            from rolegraph.serving import launch_server

            handle = launch_server("bench", LaunchSpec())
            url = handle.base_url
        try:
            swap = asyncio.run(swap_under_load(url, adapter, out / "adapters"))
        finally:
            if handle is not None and handle.owned:
                handle.stop()
    worst = max(swap["swap_s"])
    print("## handoff")
    print(
        f"trainer: rolegraph SFT {STEPS} steps {rg_s:.2f}s vs TRL direct {trl_s:.2f}s "
        f"→ ratio {rg_s / trl_s:.3f} (overhead {overhead * 100:+.1f}%, target < 5%)"
    )
    print(f"steps/s: rolegraph {STEPS / rg_s:.3f} vs TRL {STEPS / trl_s:.3f}")
    print(
        f"swap (saved → serving, 8 concurrent clients): worst {worst:.2f}s, mean "
        f"{sum(swap['swap_s']) / len(swap['swap_s']):.2f}s (target < 2 s) → ratio to target {worst / 2.0:.2f}"
    )
    print(f"requests during swaps: {swap['ok']} ok, {swap['failed']} failed (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
