"""Serving units without a vLLM server: retry rules and typed failures (fake transport), scoring context,
commands, ports, model resolution."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from rolegraph.config import LaunchSpec, SamplingParams
from rolegraph.errors import (
    EndpointDownError,
    EndpointError,
    EndpointTimeoutError,
    ModelNotFoundError,
    RequestRejectedError,
)
from rolegraph.models import MARKER, prepare, prepare_model, resolve_model
from rolegraph.serving.client import Client, is_retryable, normalize_base_url
from rolegraph.serving.launcher import (
    _pick_port,
    build_command,
    build_env,
    cpu_thread_binding,
    log_tail,
    spec_hash,
)

CHAT_OK = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "hi"},
            "token_ids": [7, 8],
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


MODELS = {"object": "list", "data": [{"id": "m"}, {"id": "m-lora", "parent": "m"}]}


def _fake_client(statuses: list[int], calls: list[int], *, launched: bool = False) -> Client:
    """A Client whose transport answers the given statuses in turn (then 200); /v1/models lists MODELS."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json=MODELS)
        calls.append(1)
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        if status == 200:
            return httpx2.Response(200, json=CHAT_OK)
        return httpx2.Response(status, json={"error": {"message": f"status {status}"}})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return Client(
        "fake",
        "http://127.0.0.1:9",
        max_retries=3,
        backoff_s=0.01,
        max_backoff_s=0.02,
        http_client=http,
        launched=launched,
    )


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retries_429_and_5xx_then_succeeds(status: int) -> None:
    calls: list[int] = []
    client = _fake_client([status, status], calls)
    result = await client.chat([{"role": "user", "content": "x"}], model="m", sampling=SamplingParams())
    assert len(calls) == 3
    assert result.text == "hi" and result.choices[0].token_ids == [7, 8]
    assert result.usage.total_tokens == 5 and result.endpoint == "fake"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_rejections_and_not_retried(status: int) -> None:
    calls: list[int] = []
    client = _fake_client([status] * 5, calls)
    with pytest.raises(RequestRejectedError, match=f"HTTP {status}") as info:
        await client.chat([{"role": "user", "content": "x"}], model="m", sampling=SamplingParams())
    assert len(calls) == 1
    assert "\n" not in str(info.value)


async def test_gives_up_after_max_retries_with_a_clear_error() -> None:
    calls: list[int] = []
    client = _fake_client([503] * 10, calls, launched=True)
    with pytest.raises(EndpointDownError, match="HTTP 503 after 4 attempts") as info:
        await client.chat([{"role": "user", "content": "x"}], model="m", sampling=SamplingParams())
    assert len(calls) == 4
    assert "rolegraph serve" in str(info.value)


async def test_connection_refused_names_the_url_and_the_fix() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client("gone", f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
    started = time.monotonic()
    with pytest.raises(EndpointDownError) as info:
        await client.list_models()
    await client.aclose()
    # rolegraph did not launch it: the hint never says to start it with `rolegraph serve`.
    assert f"127.0.0.1:{port}/v1" in str(info.value) and "rolegraph serve" not in str(info.value)
    assert "is running" in (info.value.hint or "")
    assert "after 3 attempts" in str(info.value)
    assert time.monotonic() - started < 5


async def test_a_404_for_a_model_the_endpoint_does_not_list_is_an_unknown_model() -> None:
    calls: list[int] = []
    client = _fake_client([404], calls)
    with pytest.raises(ModelNotFoundError) as info:
        await client.chat([{"role": "user", "content": "x"}], model="gone", sampling=SamplingParams())
    assert "'gone'" in str(info.value) and "it serves: m, m-lora" in str(info.value)
    assert len(calls) == 1


async def test_a_timeout_is_typed_and_not_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        raise httpx2.ReadTimeout("slow", request=request)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = Client("slow", "http://127.0.0.1:9", timeout_s=7, max_retries=3, http_client=http)
    with pytest.raises(EndpointTimeoutError, match="did not answer within 7 s"):
        await client.tokenize("x", model="m")
    assert len(calls) == 1


async def test_adapter_requests_keep_their_type_and_hint_the_right_fix() -> None:
    client = _fake_client([400], [])
    with pytest.raises(RequestRejectedError, match="could not load adapter 'a' from /nowhere") as info:
        await client.load_adapter("a", "/nowhere")
    assert "adapter_config.json" in (info.value.hint or "")
    client = _fake_client([503] * 4, [], launched=True)
    with pytest.raises(EndpointDownError, match="could not unload adapter 'a'") as down:
        await client.unload_adapter("a")
    assert "rolegraph serve" in (down.value.hint or "")


def _tokenizing_client(seen: list[dict[str, Any]]) -> Client:
    """A fake /tokenize with one id per character, except "Rx", which is one token (id 0)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append(body)
        if "prompt" in body:
            return httpx2.Response(200, json={"tokens": [ord(c) for c in body["prompt"]]})
        rendered = "".join(f"<{m['role']}>{m['content']}" for m in body["messages"])
        if body["add_generation_prompt"]:
            rendered += "<assistant>"
        parts = rendered.split("Rx")
        ids = [ord(c) for c in parts[0]]
        for part in parts[1:]:
            ids += [0, *(ord(c) for c in part)]
        return httpx2.Response(200, json={"tokens": ids})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return Client("tok", "http://127.0.0.1:9", http_client=http)


async def test_a_prefilled_chat_is_scored_continuing_the_prefill() -> None:
    seen: list[dict[str, Any]] = []
    client = _tokenizing_client(seen)
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "## R\n"}]
    prompt_ids, ids = await client.chat_continuation_ids(chat, "abc", model="m")
    assert [chr(i) for i in ids] == ["a", "b", "c"]
    assert "".join(map(chr, prompt_ids)) == "<user>q<assistant>## R\n"  # no closed turn, no new one
    assert {(b["continue_final_message"], b["add_generation_prompt"]) for b in seen} == {(True, False)}
    finals = [body["messages"][-1]["content"] for body in seen]
    assert sorted(finals) == ["## R\n", "## R\nabc"]


async def test_a_plain_chat_is_scored_in_an_opened_assistant_turn() -> None:
    seen: list[dict[str, Any]] = []
    client = _tokenizing_client(seen)
    prompt_ids, ids = await client.chat_continuation_ids([{"role": "user", "content": "q"}], "ab", model="m")
    assert "".join(map(chr, prompt_ids)) == "<user>q<assistant>" and [chr(i) for i in ids] == ["a", "b"]
    modes = sorted(
        (len(b["messages"]), b["add_generation_prompt"], b["continue_final_message"]) for b in seen
    )
    assert modes == [(1, True, False), (2, False, True)]


async def test_a_continuation_merging_into_the_prompt_is_tokenized_on_its_own() -> None:
    seen: list[dict[str, Any]] = []
    client = _tokenizing_client(seen)
    chat = [{"role": "user", "content": "question"}, {"role": "assistant", "content": "R"}]
    prompt_ids, ids = await client.chat_continuation_ids(chat, "xyz", model="m")
    assert "".join(map(chr, prompt_ids)) == "<user>question<assistant>R"
    assert [chr(i) for i in ids] == ["x", "y", "z"]
    assert seen[-1] == {"model": "m", "prompt": "xyz", "add_special_tokens": False}


def test_retry_rules() -> None:
    request = httpx2.Request("GET", "http://127.0.0.1:1")
    assert is_retryable(openai.APIConnectionError(request=request))
    assert not is_retryable(openai.APITimeoutError(request=request))
    assert is_retryable(httpx2.HTTPStatusError("x", request=request, response=httpx2.Response(502)))
    assert not is_retryable(httpx2.HTTPStatusError("x", request=request, response=httpx2.Response(404)))
    assert not is_retryable(ValueError("x"))


def test_base_urls_are_normalised() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert normalize_base_url(url) == "http://h:1/v1"


def test_cpu_command_and_environment_follow_the_platform_recipe() -> None:
    spec = LaunchSpec(kv_cache_gib=3, max_lora_rank=8, max_loras=2, extra_args=["--seed", "1"])
    cmd = build_command(spec, "/m", "name", 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in (
        "--model /m",
        "--served-model-name name",
        "--port 8123",
        "--dtype float32",
        "--enforce-eager",
    ):
        assert part in joined
    assert "--enable-lora --max-lora-rank 8 --max-loras 2" in joined and joined.endswith("--seed 1")
    env = build_env(spec)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_small_cpu_machines_compute_on_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_thread_binding([0, 1]) == "0-1"
    assert cpu_thread_binding([3, 0, 2]) == "0,2-3"
    assert cpu_thread_binding(list(range(16))) is None, "big machines keep vLLM's own binding"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert build_env(LaunchSpec())["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    parallel = LaunchSpec(extra_args=["--tensor-parallel-size", "2"])
    assert "VLLM_CPU_OMP_THREADS_BIND" not in build_env(parallel)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert build_env(LaunchSpec())["VLLM_CPU_OMP_THREADS_BIND"] == "0", "the user's setting wins"


def test_gpu_is_configuration_only() -> None:
    spec = LaunchSpec(device="gpu", dtype="bfloat16", enforce_eager=False, enable_lora=False)
    cmd = " ".join(build_command(spec, "/m", "n", 1))
    assert "--enforce-eager" not in cmd and "--enable-lora" not in cmd and "--dtype bfloat16" in cmd
    env = build_env(spec)
    assert env.get("VLLM_CPU_KVCACHE_SPACE") == os.environ.get("VLLM_CPU_KVCACHE_SPACE")


def test_spec_hash_ignores_timeout_but_not_settings() -> None:
    base = spec_hash(LaunchSpec(), "/m")
    assert spec_hash(LaunchSpec(startup_timeout_s=5), "/m") == base
    assert spec_hash(LaunchSpec(max_model_len=1024), "/m") != base
    assert spec_hash(LaunchSpec(), "/other") != base


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EndpointError, match=f"port {port} on 127.0.0.1 is in use") as info:
            _pick_port("127.0.0.1", port)
    assert "launch.port" in (info.value.hint or "")
    assert 0 < _pick_port("127.0.0.1", None) < 65536


def test_log_tail_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(20)) + "\n\n")
    assert log_tail(log, 3) == "line 17 | line 18 | line 19"
    assert log_tail(tmp_path / "missing.log") == "(no log)"


def test_resolve_model_kinds(tmp_path: Path, model_dir: Path) -> None:
    assert resolve_model("smollm2-135m-instruct") == (str(model_dir), "smollm2-135m-instruct")
    hf = tmp_path / "my-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf)) == (str(hf.resolve()), "my-model")
    assert resolve_model("HuggingFaceTB/SmolLM2-360M") == ("HuggingFaceTB/SmolLM2-360M",) * 2
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        resolve_model("no-such-model")


def test_model_preparation_is_idempotent(model_dir: Path) -> None:
    marker = model_dir / MARKER
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    started = time.monotonic()
    assert prepare_model() == model_dir
    assert time.monotonic() - started < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    info = json.loads(marker.read_text())
    assert info["name"] == "smollm2-135m-instruct" and info["source"].endswith(".gguf")
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not list(model_dir.parent.glob(f".{model_dir.name}.tmp-*"))  # no half-written leftovers


def test_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        prepare_model("gpt-9")


def test_a_crash_mid_conversion_leaves_no_model_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLEGRAPH_HOME", str(tmp_path))

    def crash(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_model()
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_stopping_a_process_group_stops_its_children_too() -> None:
    import subprocess

    from rolegraph.serving.launcher import stop_process_group

    # A parent that ignores SIGTERM (so SIGKILL is needed) with a child in the same group.
    script = "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    script += "child = subprocess.Popen(['sleep', '60']); print(child.pid, flush=True); time.sleep(60)"
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    started = time.monotonic()
    stop_process_group(process.pid, grace_s=1.0, process=process)
    assert process.poll() is not None
    assert time.monotonic() - started < 8
    time.sleep(0.2)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait a while for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
