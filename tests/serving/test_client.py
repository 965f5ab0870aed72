"""The client and the pool against the session's real vLLM server (tiny generations)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx2
import pytest

from rolegraph.agents.registry import get_role
from rolegraph.config import RolegraphConfig, SamplingParams
from rolegraph.errors import ConfigError, ModelNotFoundError, RequestRejectedError
from rolegraph.serving import Client, EndpointPool
from tests.fixtures.serving import VLLMServer

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "What is 2+3? Answer briefly."}]


async def test_chat_with_n_choices_logprobs_and_token_ids(vllm_server: VLLMServer) -> None:
    async with Client("t", vllm_server.base_url) as client:
        sampling = SamplingParams(n=3, max_tokens=12, temperature=1.0, logprobs=True, seed=1)
        result = await client.chat(QUESTION, model=vllm_server.model, sampling=sampling)
    assert len(result.choices) == 3
    assert result.model == vllm_server.model and result.endpoint == "t"
    assert result.latency_s > 0 and result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens == sum(len(c.token_ids or []) for c in result.choices)
    assert result.prompt_token_ids and len(result.prompt_token_ids) == result.usage.prompt_tokens
    for choice in result.choices:
        assert choice.token_ids and 1 <= len(choice.token_ids) <= 12
        assert choice.logprobs is not None and len(choice.logprobs) == len(choice.token_ids)
        assert all(lp <= 0.0 for lp in choice.logprobs)
        assert choice.finish_reason in {"stop", "length"}


async def test_greedy_completion_of_token_ids_is_deterministic(vllm_server: VLLMServer) -> None:
    async with Client("t", vllm_server.base_url) as client:
        ids = await client.tokenize("The capital of France is", model=vllm_server.model)
        greedy = SamplingParams(temperature=0.0, max_tokens=6, logprobs=True)
        by_text = await client.complete("The capital of France is", model=vllm_server.model, sampling=greedy)
        by_ids = await client.complete(ids, model=vllm_server.model, sampling=greedy)
    assert by_text.text == by_ids.text and "Paris" in by_text.text
    assert by_text.prompt_token_ids == ids
    assert by_text.choices[0].logprobs is not None and len(by_text.choices[0].logprobs) == 6


async def test_score_agrees_with_a_direct_prompt_logprobs_request(vllm_server: VLLMServer) -> None:
    prompt, continuation = "The capital of France is", " Paris, a city on the Seine."
    async with Client("t", vllm_server.base_url) as client:
        score = await client.score(prompt, continuation, model=vllm_server.model)
        worse = await client.score(prompt, " Berlin, a city on the Seine.", model=vllm_server.model)
        p_ids = await client.tokenize(prompt, model=vllm_server.model)
        c_ids = await client.tokenize(continuation, model=vllm_server.model, add_special_tokens=False)
    # The same quantity straight from the server, without the client layer.
    async with httpx2.AsyncClient(timeout=60) as http:
        response = await http.post(
            f"{vllm_server.base_url}/completions",
            json={"model": vllm_server.model, "prompt": p_ids + c_ids, "max_tokens": 1, "prompt_logprobs": 0},
        )
    positions = response.json()["choices"][0]["prompt_logprobs"]
    direct = sum(positions[i][str(t)]["logprob"] for i, t in enumerate(c_ids, start=len(p_ids)))
    assert score == pytest.approx(direct, abs=1e-4)
    assert score < 0 and worse < score


async def test_score_chat_scores_after_the_assistant_prompt(vllm_server: VLLMServer) -> None:
    async with Client("t", vllm_server.base_url) as client:
        ids = await client.tokenize_chat(QUESTION, model=vllm_server.model)
        right = await client.score_chat(QUESTION, "2 + 3 = 5", model=vllm_server.model)
        wrong = await client.score_chat(QUESTION, "2 + 3 = 9", model=vllm_server.model)
        c_ids = await client.tokenize("2 + 3 = 5", model=vllm_server.model, add_special_tokens=False)
        per_token = await client.token_logprobs(ids, c_ids, model=vllm_server.model)
    assert len(ids) > 10  # the template (system turn, user turn, opened assistant turn) was applied
    assert right > wrong
    assert right == pytest.approx(sum(per_token), abs=1e-4) and len(per_token) == len(c_ids)


async def test_score_chat_is_what_the_prefilled_proposer_sampled(vllm_server: VLLMServer) -> None:
    """PromptCoT 2.0's E-step reward: z,x are scored in the very context the proposer samples them in (its
    prefilled assistant turn, continued), so the score equals the sum of the sampled tokens' logprobs."""
    role = get_role("proposer")
    concepts = ["modular arithmetic", "prime factorization"]
    messages = role.render({"concepts": concepts, "difficulty": "AMC 10"})
    assert messages[-1]["role"] == "assistant" and role.sampling["extra"]["continue_final_message"]
    sampling = SamplingParams.model_validate(role.sampling).merged(
        temperature=1.0, max_tokens=16, n=8, logprobs=True, seed=11
    )
    checked = 0
    async with Client("t", vllm_server.base_url) as client:
        result = await client.chat(messages, model=vllm_server.model, sampling=sampling)
        for choice in result.choices:
            if choice.finish_reason != "length":
                continue  # it ends with an end-of-turn token, which its text leaves out
            assert choice.logprobs is not None and choice.token_ids
            prompt_ids, ids = await client.chat_continuation_ids(
                messages, choice.text, model=vllm_server.model
            )
            assert prompt_ids == result.prompt_token_ids  # scored in the context it was sampled in
            # At temperature 1 a few samples are non-canonical tokenizations of their text; a text cannot tell
            # those tokens from the canonical ones, which are scored instead.
            if ids != choice.token_ids:
                continue
            score = await client.score_chat(messages, choice.text, model=vllm_server.model)
            assert score == pytest.approx(sum(choice.logprobs), abs=0.05, rel=1e-2)
            checked += 1
    assert checked >= 1


class CountingTransport(httpx2.AsyncHTTPTransport):
    """Counts requests in flight on the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            response = await super().handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.in_flight -= 1


async def test_the_concurrency_limit_holds(vllm_server: VLLMServer) -> None:
    transport = CountingTransport()
    http = httpx2.AsyncClient(transport=transport, timeout=120)
    client = Client("t", vllm_server.base_url, max_concurrency=2, http_client=http)
    sampling = SamplingParams(max_tokens=8, temperature=0.0)
    results = await asyncio.gather(
        *(client.chat(QUESTION, model=vllm_server.model, sampling=sampling) for _ in range(6))
    )
    await http.aclose()
    assert len(results) == 6 and all(r.text for r in results)
    assert transport.peak == 2  # reached, never exceeded


async def test_an_unserved_model_lists_what_is_served(vllm_server: VLLMServer) -> None:
    async with Client("t", vllm_server.base_url) as client:
        with pytest.raises(ModelNotFoundError) as info:
            await client.chat(QUESTION, model="no-such-model", sampling=SamplingParams(max_tokens=2))
    assert "no-such-model" in str(info.value) and vllm_server.model in str(info.value)


async def test_a_rejected_request_is_one_line_and_not_retried(vllm_server: VLLMServer) -> None:
    async with Client("t", vllm_server.base_url) as client:
        with pytest.raises(RequestRejectedError, match="HTTP 400") as info:
            await client.chat(QUESTION, model=vllm_server.model, sampling=SamplingParams(max_tokens=100_000))
    assert "max_tokens" in str(info.value) and "\n" not in str(info.value)


async def test_pool_resolves_roles_and_rejects_unknown_ones(rg_config: RolegraphConfig) -> None:
    async with EndpointPool(rg_config) as pool:
        client, model, sampling = pool.resolve("solver")
        assert model == rg_config.roles["solver"].model and sampling.max_tokens == 64
        result = await client.chat(QUESTION, model=model, sampling=sampling.merged(max_tokens=4))
        assert result.choices and result.endpoint == "local"
        with pytest.raises(ConfigError, match="unknown role 'critic'") as info:
            pool.resolve("critic")
        assert "solver" in str(info.value)
    assert pool.clients == {}  # closed


async def test_swapping_to_an_unserved_model_fails_listing_served_models(rg_config: RolegraphConfig) -> None:
    async with EndpointPool(rg_config) as pool:
        before = pool.resolve("judge")[1]
        with pytest.raises(ModelNotFoundError) as info:
            await pool.swap("judge", "local", "judge-v9")
        assert "judge-v9" in str(info.value) and before in str(info.value)
        assert pool.resolve("judge")[1] == before  # unchanged
        with pytest.raises(ConfigError, match="unknown endpoint 'far'"):
            await pool.swap("judge", "far", before)
        with pytest.raises(ConfigError, match="unknown role"):
            await pool.swap("nobody", "local", before)


@pytest.fixture(scope="module")
def random_adapter(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LoRA (random B) saved by PEFT: enough to hot-load and swap to."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapter") / "random-lora"
    peft_model.save_pretrained(out)
    return out


async def test_hot_load_swap_and_unload_an_adapter(rg_config: RolegraphConfig, random_adapter: Path) -> None:
    name = "serving-test-lora"
    async with EndpointPool(rg_config) as pool:
        client = pool.client("local")
        await client.load_adapter(name, str(random_adapter))
        try:
            cards = {c["id"]: c for c in await client.model_cards()}
            assert cards[name].get("parent") == rg_config.roles["solver"].model
            resolved_before = pool.resolve("solver")
            await pool.swap("solver", "local", name)
            assert pool.resolve("solver")[1] == name
            assert resolved_before[1] != name  # what was resolved earlier keeps its model
            result = await client.chat(
                QUESTION, model=name, sampling=SamplingParams(max_tokens=4, temperature=0)
            )
            assert result.model == name and result.choices[0].token_ids
            # Loading a served name again is a no-op when it is the same directory (a retried hand-off), and
            # refused from any other: a name always means the weights it was first loaded with.
            await client.load_adapter(name, str(random_adapter))
            assert name in await client.list_models()
            elsewhere = random_adapter.parent / "same-weights-elsewhere"
            shutil.copytree(random_adapter, elsewhere, dirs_exist_ok=True)
            with pytest.raises(RequestRejectedError, match="already serves another adapter by that name"):
                await client.load_adapter(name, str(elsewhere))
        finally:
            await client.unload_adapter(name)
        assert name not in await client.list_models()
