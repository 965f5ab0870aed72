"""The vLLM plugin that keeps prompt_logprobs working on CPU servers with --enable-lora (vllm#29955)."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from tests.fixtures.serving import VLLMServer

pytestmark = pytest.mark.vllm


async def _prompt_logprob_sum(client: httpx2.AsyncClient, server: VLLMServer, text: str) -> float:
    body = {"model": server.model, "prompt": text, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
    response = await client.post(f"{server.base_url}/completions", json=body)
    response.raise_for_status()
    rows = response.json()["choices"][0]["prompt_logprobs"]
    return sum(next(iter(row.values()))["logprob"] for row in rows if row)


async def _chat(client: httpx2.AsyncClient, server: VLLMServer) -> str:
    messages = [{"role": "user", "content": "Count to five."}]
    body = {"model": server.model, "messages": messages, "max_tokens": 12}
    response = await client.post(f"{server.base_url}/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


async def test_batched_prompt_logprobs_match_solo_and_server_survives(vllm_server: VLLMServer) -> None:
    texts = [f"The number {i} comes right after {i - 1}. " * (2 + i) for i in range(1, 5)]
    async with httpx2.AsyncClient(timeout=180) as client:
        solo = [await _prompt_logprob_sum(client, vllm_server, text) for text in texts]
        mixed = await asyncio.gather(
            *(_prompt_logprob_sum(client, vllm_server, text) for text in texts),
            *(_chat(client, vllm_server) for _ in range(3)),
        )
        assert mixed[: len(texts)] == pytest.approx(solo, abs=1e-3)
        assert all(isinstance(reply, str) for reply in mixed[len(texts) :])
        health = await client.get(vllm_server.base_url.removesuffix("/v1") + "/health")
        assert health.status_code == 200


def test_plugin_is_registered_for_vllm() -> None:
    from importlib.metadata import entry_points

    names = {entry.value for entry in entry_points(group="vllm.general_plugins")}
    assert "rolegraph.serving.vllm_patches:register" in names


def test_seeded_requests_in_chunked_prefill_do_not_kill_a_cpu_engine() -> None:
    """vLLM rewinds a discarded sample's generator by Philox offset; CPU generators have none."""
    import torch

    from rolegraph.serving.vllm_patches import _skip_cpu_generator_rewind

    class Batch:
        def __init__(self) -> None:
            self.generators = {0: torch.Generator(device="cpu"), 3: torch.Generator(device="cpu")}

    class Runner:
        """The loop of vLLM's GPUModelRunner._bookkeeping_sync that dies on CPU generators."""

        def __init__(self) -> None:
            self.input_batch = Batch()

        def _bookkeeping_sync(self, discarded: list[int]) -> str:
            for index in discarded:
                gen = self.input_batch.generators.get(index)
                if gen is not None:
                    gen.set_offset(gen.get_offset() - 4)
            return "ok"

    with pytest.raises(RuntimeError, match="does not use offset"):
        Runner()._bookkeeping_sync([0])
    _skip_cpu_generator_rewind(Runner)
    runner = Runner()
    assert runner._bookkeeping_sync([0, 3]) == "ok"
    assert sorted(runner.input_batch.generators) == [0, 3]  # the request's generator stays with it
