"""Capability detection and fallbacks against a stub server that lacks one capability at a time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams, load_config
from rolegraph.config.schema import EndpointCapabilities
from rolegraph.errors import ConfigError, ModelNotFoundError
from rolegraph.serving import Client, EndpointPool
from rolegraph.serving.capabilities import Capabilities, CapabilityError, probe
from rolegraph.serving.client import fields_named
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion
from tests.serving.stub_server import Stub, serve

QUESTION = [{"role": "user", "content": "2+3?"}]
ALL_KNOWN = Capabilities.vllm(runtime_lora=True)


def _config(base_url: str, model: str | None = "stub-model", **capabilities: bool) -> RolegraphConfig:
    return RolegraphConfig(
        endpoints={
            "other": EndpointConfig(
                base_url=base_url, max_retries=1, capabilities=EndpointCapabilities(**capabilities)
            )
        },
        roles={"solver": RoleBinding(endpoint="other", model=model)},
    )


def _pool(config: RolegraphConfig) -> tuple[EndpointPool, io.StringIO]:
    out = io.StringIO()
    return EndpointPool(config, console=Console(file=out, width=200)), out


@pytest.mark.parametrize("listing", ["http 500", "empty"])
async def test_a_model_the_listing_lacks_is_used_with_a_one_line_warning(listing: str) -> None:
    stub = Stub(models_status=500) if listing == "http 500" else Stub(listed=[])
    with serve(stub) as url:
        pool, out = _pool(_config(url))
        async with pool:
            client, model, _ = pool.resolve("solver")
            result = await client.chat(QUESTION, model=model, sampling=SamplingParams(max_tokens=2))
            assert pool.capabilities["other"].lists_models is False
    assert result.text == "answer 0" and model == "stub-model"
    warning = out.getvalue().strip()
    assert "endpoint 'other'" in warning and "using the configured model 'stub-model'" in warning
    assert len(warning.splitlines()) == 1


async def test_an_unlisted_model_the_server_rejects_shows_the_servers_own_message() -> None:
    with serve(Stub(models_status=500)) as url:
        pool, _ = _pool(_config(url, model="typo-model"))
        with pytest.raises(ModelNotFoundError) as info:
            await pool.start()
    assert "does not list model 'typo-model'" in str(info.value)
    assert "The model `typo-model` does not exist." in str(info.value)


async def test_no_listing_and_no_model_asks_for_one_and_never_for_rolegraph_serve() -> None:
    with serve(Stub(listed=[])) as url:
        pool, _ = _pool(_config(url, model=None))
        with pytest.raises(ConfigError) as info:
            await pool.start()
    assert "roles.solver.model" in (info.value.hint or "") and "rolegraph serve" not in str(info.value)


async def test_a_down_attached_endpoint_is_not_told_to_start_with_rolegraph_serve() -> None:
    with serve(Stub()) as url:
        pass  # stopped: nothing listens there now
    pool, _ = _pool(_config(url))
    with pytest.raises(Exception) as info:
        await pool.start()
    assert "unreachable" in str(info.value) and "rolegraph serve" not in str(info.value)


async def test_fields_a_422_names_are_dropped_remembered_and_never_sent_again() -> None:
    stub = Stub(strict_fields=True)
    with serve(stub) as url:
        async with Client("other", url) as client:
            sampling = SamplingParams(max_tokens=2, extra={"structured_outputs": {"regex": "a"}})
            first = await client.chat(QUESTION, model="stub-model", sampling=sampling)
            second = await client.chat(QUESTION, model="stub-model", sampling=sampling)
    assert client.rejected_fields == {"return_token_ids", "structured_outputs"}
    chats = stub.bodies("/v1/chat/completions")
    assert len(chats) == 3  # one rejection, then each call once without the fields
    assert "return_token_ids" in chats[0] and all("return_token_ids" not in body for body in chats[1:])
    assert first.text == second.text == "answer 0"
    assert first.unavailable["token_ids"] == "endpoint 'other' does not return token ids"
    assert "structured_outputs" in second.unavailable


async def test_n_is_emulated_by_concurrent_requests_when_the_server_ignores_it() -> None:
    stub = Stub(honour_n=False)
    with serve(stub) as url:
        async with Client("other", url, max_concurrency=2) as client:
            sampling = SamplingParams(n=3, max_tokens=2, seed=7)
            result = await client.chat(QUESTION, model="stub-model", sampling=sampling)
            again = await client.chat(QUESTION, model="stub-model", sampling=sampling)
    assert len(result.choices) == len(again.choices) == 3
    assert result.usage.completion_tokens == 3 and client.capabilities.n is False
    chats = stub.bodies("/v1/chat/completions")
    assert len(chats) == 6
    # Once known, `n` is not sent at all, and each emulated request has its own seed.
    assert all("n" not in body for body in chats[3:]) and sorted(b["seed"] for b in chats[3:]) == [7, 8, 9]


async def test_missing_logprobs_are_recorded_as_unavailable() -> None:
    with serve(Stub(logprobs=False, token_ids=False)) as url:
        async with Client("other", url) as client:
            sampling = SamplingParams(max_tokens=2, logprobs=True)
            result = await client.chat(QUESTION, model="stub-model", sampling=sampling)
    assert result.choices[0].logprobs is None and result.choices[0].token_ids is None
    assert set(result.unavailable) == {"logprobs", "token_ids"}


async def test_probe_finds_what_a_bare_server_lacks() -> None:
    stub = Stub(
        strict_fields=True,
        honour_n=False,
        logprobs=False,
        token_ids=False,
        tokenize=False,
        prompt_logprobs=False,
        runtime_lora=False,
        models_status=500,
    )
    with serve(stub) as url:
        async with Client("other", url, max_retries=0) as client:
            found = await probe(client, "stub-model")
    assert found == Capabilities(False, False, False, False, False, False, False, False)
    assert "lacks: lists_models n logprobs" in found.summary()


async def test_probe_finds_everything_on_a_capable_server() -> None:
    with serve(Stub()) as url:
        async with Client("other", url) as client:
            found = await probe(client, "stub-model")
    # The stub does not constrain its answer, so structured outputs are (rightly) not believed.
    assert found == Capabilities(True, True, True, True, True, False, True, True)


async def test_declared_capabilities_are_not_probed() -> None:
    stub = Stub()
    declared = {name: True for name in Capabilities.__dataclass_fields__}
    with serve(stub) as url:
        pool, _ = _pool(_config(url, **declared))
        async with pool:
            assert pool.capabilities["other"] == ALL_KNOWN
            assert pool.capability_record()["other"]["tokenize"] is True
    assert stub.bodies("/v1/chat/completions") == [] and stub.bodies("/tokenize") == []


async def test_scoring_is_refused_up_front_without_prompt_logprobs_or_tokenize() -> None:
    stub = Stub(tokenize=False, prompt_logprobs=False)
    with serve(stub) as url:
        pool, _ = _pool(_config(url))
        async with pool:
            client, model, _ = pool.resolve("solver")
            sent = len(stub.requests)
            with pytest.raises(CapabilityError) as info:
                await client.score_chat(QUESTION, "5", model=model)
            with pytest.raises(CapabilityError):
                client.require_scoring()
    assert len(stub.requests) == sent  # refused before any request
    message = str(info.value)
    assert "endpoint 'other'" in message and "prompt logprobs" in message and "/tokenize" in message


def _adapter(tmp_path: Path) -> AdapterVersion:
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "adapter_config.json").write_text("{}")
    return AdapterRegistry(tmp_path / "adapters").publish("solver", trained)


async def test_hand_off_skips_an_endpoint_without_runtime_lora_and_says_where_the_adapter_is(
    tmp_path: Path,
) -> None:
    capable, bare = Stub(), Stub(runtime_lora=False)
    adapter = _adapter(tmp_path)
    with serve(capable) as url_a, serve(bare) as url_b:
        config = RolegraphConfig(
            endpoints={"a": EndpointConfig(base_url=url_a), "b": EndpointConfig(base_url=url_b)},
            roles={"solver": RoleBinding(endpoint="a"), "critic": RoleBinding(endpoint="b")},
        )
        pool, _ = _pool(config)
        async with pool:
            report = await hand_off(pool, "solver", adapter)
            assert pool.resolve("solver")[1] == adapter.lora_name
    assert report.swapped and report.endpoints == ["a"] and capable.loaded == [adapter.lora_name]
    assert bare.bodies("/v1/load_lora_adapter") == []
    assert f"saved at {adapter.path}" in report.not_loaded["b"] and "endpoint 'b'" in report.not_loaded["b"]


async def test_hand_off_to_a_role_on_an_endpoint_without_runtime_lora_keeps_the_binding(
    tmp_path: Path,
) -> None:
    adapter = _adapter(tmp_path)
    with serve(Stub(runtime_lora=False)) as url:
        pool, _ = _pool(_config(url))
        async with pool:
            report = await hand_off(pool, "solver", adapter)
            assert pool.resolve("solver")[1] == "stub-model"
    assert not report.swapped and "cannot load LoRA adapters" in report.not_loaded["other"]
    assert adapter.path.is_dir()  # training's result stays published


def test_fields_named_matches_whole_names_and_quoted_short_ones() -> None:
    detail = "Unexpected fields in the request: {'return_token_ids', 'n'}"
    assert fields_named(detail, {"return_token_ids", "n", "seed", "token_ids"}) == {"return_token_ids", "n"}
    assert fields_named("n must be 1 when using greedy sampling", {"n"}) == set()


def test_capabilities_are_declared_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    endpoint = "endpoints:\n  other: {base_url: 'http://127.0.0.1:9/v1', capabilities: %s}\n"
    path.write_text(endpoint % "{n: false, tokenize: false}")
    declared = load_config(path).endpoints["other"].capabilities
    assert Capabilities.declared(declared) == Capabilities(n=False, tokenize=False)
    path.write_text(endpoint % "{lora: true}")
    with pytest.raises(ConfigError, match=r"endpoints\.other\.capabilities\.lora"):
        load_config(path)
