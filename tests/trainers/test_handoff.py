"""Hand-off: units on two fake endpoints (every endpoint of the base model, all or nothing, unique names,
unload and prune beyond `keep`), then a real vLLM server: hot-load changes the role's greedy output, swaps
under load fail nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rolegraph.config import RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.errors import EndpointDownError, RequestRejectedError
from rolegraph.serving import EndpointPool
from rolegraph.trainers import handoff
from rolegraph.trainers.handoff import busy_adapters, hand_off
from rolegraph.trainers.registry import ID_FILE, AdapterRegistry, parse_lora_name
from tests.trainers.conftest import MARK

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
HELLO = [{"role": "user", "content": "Say hello."}]


async def _greedy(pool: EndpointPool, role: str) -> tuple[str, str]:
    client, model, _ = pool.resolve(role)
    result = await client.chat(HELLO, model=model, sampling=GREEDY)
    return model, result.text


LORA_INFO = """# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="%s",waiting_lora_adapters=""} 2.0e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="stale",waiting_lora_adapters="old"} 1.0e+09
"""


@dataclass
class FakeEndpoint:
    """An endpoint serving one base model, with runtime LoRA."""

    base: str
    loaded: list[str] = field(default_factory=list)
    loads: int = 0
    busy: str = ""
    """Adapters the metrics report running (comma-separated)."""
    fail_load: bool = False

    async def load_adapter(self, name: str, path: str) -> None:
        if self.fail_load:
            raise RequestRejectedError(f"could not load adapter '{name}'", "fix it")
        assert name not in self.loaded, "a name is never loaded twice"
        assert (Path(path) / "adapter_config.json").is_file()
        self.loads += 1
        self.loaded.append(name)

    async def unload_adapter(self, name: str) -> None:
        self.loaded.remove(name)

    async def list_models(self) -> list[str]:
        return [self.base, *self.loaded]

    async def metrics(self) -> str:
        return LORA_INFO % self.busy


class FakePool:
    """Roles bound to endpoints; `swap` checks the model is served, as EndpointPool's does."""

    def __init__(self, endpoints: dict[str, FakeEndpoint], role_endpoint: str) -> None:
        self.clients = endpoints
        self.base_models = {name: ep.base for name, ep in endpoints.items()}
        self.bindings = {"solver": RoleBinding(endpoint=role_endpoint, model=endpoints[role_endpoint].base)}
        self.swaps: list[tuple[str, list[str]]] = []
        """(model, endpoints listing it) at each swap."""

    async def swap(self, role: str, endpoint: str, model: str) -> None:
        assert model in await self.clients[endpoint].list_models()
        self.swaps.append((model, [n for n, ep in self.clients.items() if model in ep.loaded]))
        self.bindings = {**self.bindings, role: self.bindings[role].model_copy(update={"model": model})}


def _trained(tmp_path: Path, name: str) -> Path:
    """A directory as a trainer leaves it (hand-off only reads adapter_config.json's presence)."""
    out = tmp_path / "trained" / name
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    return out


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "IDLE_POLL_S", 0.0)
    monkeypatch.setattr(handoff, "UNLOAD_MAX_WAIT_S", 0.2)


async def test_hand_off_loads_into_every_endpoint_of_the_base_model_before_switching(tmp_path: Path) -> None:
    endpoints = {"a": FakeEndpoint("m"), "b": FakeEndpoint("m"), "other": FakeEndpoint("n")}
    pool = FakePool(endpoints, "b")
    adapter = AdapterRegistry(tmp_path / "adapters").publish("solver", _trained(tmp_path, "x"))
    report = await hand_off(pool, "solver", adapter)
    assert report.endpoints == ["b", "a"]  # the role's own endpoint first
    assert pool.swaps == [(adapter.lora_name, ["a", "b"])]  # switched once both had it
    assert pool.bindings["solver"].endpoint == "b" and pool.bindings["solver"].model == adapter.lora_name
    assert endpoints["other"].loaded == []  # another base model: the adapter does not fit it
    # A retried hand-off of the same version loads nothing again (its name means exactly these weights).
    await hand_off(pool, "solver", adapter)
    assert (endpoints["a"].loads, endpoints["b"].loads) == (1, 1)


async def test_a_failed_load_switches_nothing_and_unloads_where_it_loaded(tmp_path: Path) -> None:
    endpoints = {"a": FakeEndpoint("m"), "b": FakeEndpoint("m", fail_load=True)}
    pool = FakePool(endpoints, "a")
    adapter = AdapterRegistry(tmp_path / "adapters").publish("solver", _trained(tmp_path, "x"))
    with pytest.raises(RequestRejectedError, match="could not load adapter"):
        await hand_off(pool, "solver", adapter)
    assert pool.swaps == [] and pool.bindings["solver"].model == "m"
    assert endpoints["a"].loads == 1 and endpoints["a"].loaded == []


async def test_versions_beyond_keep_are_unloaded_everywhere_and_deleted(
    tmp_path: Path, fast_polls: None
) -> None:
    foreign = "solver-v9-0123abcd"  # another adapters dir's version (another run sharing the server)
    endpoints = {"a": FakeEndpoint("m", loaded=[foreign]), "b": FakeEndpoint("m")}
    pool = FakePool(endpoints, "a")
    registry = AdapterRegistry(tmp_path / "adapters")
    versions = []
    for i in range(3):
        versions.append(registry.publish("solver", _trained(tmp_path, f"x{i}")))
        report = await hand_off(pool, "solver", versions[-1], keep=2)
    first, *kept = (v.lora_name for v in versions)
    assert report.unloaded == {"a": [first], "b": [first]} and report.pruned == [first]
    assert endpoints["a"].loaded == [foreign, *kept] and endpoints["b"].loaded == kept
    assert [v.lora_name for v in registry.versions("solver")] == kept
    assert not versions[0].path.exists() and not list(versions[0].path.parent.glob(".trash-*"))


async def test_a_busy_old_version_stays_loaded_and_on_disk(tmp_path: Path, fast_polls: None) -> None:
    endpoints = {"a": FakeEndpoint("m")}
    pool = FakePool(endpoints, "a")
    registry = AdapterRegistry(tmp_path / "adapters")
    first = registry.publish("solver", _trained(tmp_path, "x0"))
    await hand_off(pool, "solver", first)
    endpoints["a"].busy = first.lora_name  # a request that resolved it before the swaps still runs
    for i in (1, 2):
        report = await hand_off(pool, "solver", registry.publish("solver", _trained(tmp_path, f"x{i}")))
    assert report.unloaded == {} and report.pruned == []
    assert first.lora_name in endpoints["a"].loaded and first.path.is_dir()
    endpoints["a"].busy = ""
    report = await hand_off(pool, "solver", registry.publish("solver", _trained(tmp_path, "x3")))
    assert first.lora_name in report.unloaded["a"] and first.lora_name in report.pruned


async def test_busy_adapters_reads_the_newest_lora_sample() -> None:
    assert await busy_adapters(FakeEndpoint("m", busy="solver-v2-0a1b2c3d")) == {"solver-v2-0a1b2c3d"}
    assert await busy_adapters(FakeEndpoint("m")) == set()

    class Down(FakeEndpoint):
        async def metrics(self) -> str:
            raise EndpointDownError("down", "start it")

    assert await busy_adapters(Down("m")) is None


def test_adapter_names_are_never_reused_even_when_the_adapters_dir_is_wiped(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    before = registry.publish("solver", _trained(tmp_path, "x"))
    assert registry.versions("solver") == [before]  # the id is read back from the version's folder
    shutil.rmtree(tmp_path / "adapters")
    after = registry.publish("solver", _trained(tmp_path, "y"))
    assert before.version == after.version == 1 and before.lora_name != after.lora_name
    assert (after.path / ID_FILE).read_text().strip() == after.id
    assert parse_lora_name(after.lora_name) == ("solver", 1)
    assert parse_lora_name("rationale_writer-v12-0123abcd") == ("rationale_writer", 12)
    for foreign in ("solver-v1", "smollm2-135m-instruct", "solver-v1-XYZ"):
        assert parse_lora_name(foreign) is None


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    versions = [registry.publish("solver", _trained(tmp_path, f"x{i}")) for i in range(4)]
    pruned = registry.prune("solver", 2, protect={versions[0].lora_name})
    assert pruned == [versions[1]]
    assert registry.versions("solver") == [versions[0], *versions[2:]]


@pytest.mark.vllm
@pytest.mark.train
async def test_hot_load_changes_role_output_but_not_base(
    rg_config: RolegraphConfig, distinct_adapter: Path, adapter_registry: AdapterRegistry
) -> None:
    async with EndpointPool(rg_config) as pool:
        base_model, base_before = await _greedy(pool, "judge")
        _, solver_before = await _greedy(pool, "solver")
        assert MARK not in solver_before

        adapter = adapter_registry.publish("solver", distinct_adapter)
        report = await hand_off(pool, "solver", adapter)

        assert report.endpoints == ["local"]
        assert pool.resolve("solver")[1] == adapter.lora_name
        assert adapter.lora_name in await pool.client("local").list_models()
        model, solver_after = await _greedy(pool, "solver")
        assert model == adapter.lora_name
        assert MARK in solver_after
        # The base model (still bound to judge) answers exactly as before.
        assert await _greedy(pool, "judge") == (base_model, base_before)
        assert report.load_s < 30


@pytest.mark.vllm
@pytest.mark.train
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
        # Until the last version answers (a loaded CPU can take many seconds per request), or 3 minutes.
        deadline = time.monotonic() + 180
        while names[-1] not in seen and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)

        assert failures == []
        assert len(seen) >= 6
        assert names[-1] in seen
        served = await pool.client("local").list_models()
        assert names[-1] in served and names[-2] in served
        assert names[0] not in served  # keep=2 unloaded the oldest
