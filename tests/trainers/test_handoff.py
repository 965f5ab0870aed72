"""Hand-off on a real vLLM server: hot-load changes the role's greedy output, swaps under load fail
nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rolegraph.config import RolegraphConfig, SamplingParams
from rolegraph.serving import EndpointPool
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.registry import AdapterRegistry
from tests.trainers.conftest import MARK

pytestmark = [pytest.mark.vllm, pytest.mark.train]

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
HELLO = [{"role": "user", "content": "Say hello."}]


async def _greedy(pool: EndpointPool, role: str) -> tuple[str, str]:
    client, model, _ = pool.resolve(role)
    result = await client.chat(HELLO, model=model, sampling=GREEDY)
    return model, result.text


async def test_hot_load_changes_role_output_but_not_base(
    rg_config: RolegraphConfig, distinct_adapter: Path, adapter_registry: AdapterRegistry
) -> None:
    async with EndpointPool(rg_config) as pool:
        base_model, base_before = await _greedy(pool, "judge")
        _, solver_before = await _greedy(pool, "solver")
        assert MARK not in solver_before

        adapter = adapter_registry.publish("solver", distinct_adapter)
        report = await hand_off(pool, "solver", adapter)

        assert pool.resolve("solver")[1] == adapter.lora_name
        assert adapter.lora_name in await pool.client("local").list_models()
        model, solver_after = await _greedy(pool, "solver")
        assert model == adapter.lora_name
        assert MARK in solver_after
        # The base model (still bound to judge) answers exactly as before.
        assert await _greedy(pool, "judge") == (base_model, base_before)
        assert report.load_s < 30


async def test_swap_under_concurrent_load_fails_no_request(
    rg_config: RolegraphConfig, distinct_adapter: Path, adapter_registry: AdapterRegistry
) -> None:
    async with EndpointPool(rg_config) as pool:
        seen: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                client, model, _ = pool.resolve("solver")
                try:
                    result = await client.chat(
                        HELLO, model=model, sampling=SamplingParams(temperature=0, max_tokens=8)
                    )
                    seen.append(result.model or model)
                except Exception as exc:
                    failures.append(exc)

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        await asyncio.sleep(1.0)
        names = []
        for _ in range(3):  # three hand-offs in a row: the oldest gets unloaded while load keeps running
            adapter = adapter_registry.publish("solver", distinct_adapter)
            await hand_off(pool, "solver", adapter, keep=2)
            names.append(adapter.lora_name)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)

        assert failures == []
        assert len(seen) >= 6
        assert names[-1] in seen
        served = await pool.client("local").list_models()
        assert names[-1] in served and names[-2] in served
        assert names[0] not in served  # keep=2 unloaded the oldest
