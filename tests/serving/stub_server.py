"""A stub OpenAI-compatible server on loopback (unit tests only) that lacks whatever a test says it lacks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KNOWN_CHAT_FIELDS = {"model", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed"}


@dataclass
class Stub:
    """How the stub behaves, and what it was asked."""

    model: str = "stub-model"
    models_status: int = 200
    listed: list[str] | None = None
    """What /v1/models lists (None: the served model)."""
    strict_fields: bool = False
    """Answer 422 naming unknown fields, as `transformers serve` does."""
    honour_n: bool = True
    logprobs: bool = True
    token_ids: bool = True
    tokenize: bool = True
    prompt_logprobs: bool = True
    runtime_lora: bool = True
    loaded: list[str] = field(default_factory=list)
    """Adapters loaded at run time (listed and served)."""
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(method, path, body) of every request."""

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The bodies POSTed to `path`."""
        return [body for method, seen, body in self.requests if method == "POST" and seen == path]


def _chat(stub: Stub, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if stub.strict_fields:
        unexpected = (
            set(body) - KNOWN_CHAT_FIELDS - ({"logprobs", "top_logprobs"} if stub.logprobs else set())
        )
        if unexpected:
            return 422, {"detail": f"Unexpected fields in the request: {unexpected}"}
    if body.get("model") not in (stub.model, *stub.loaded):
        return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
    n = body.get("n", 1) if stub.honour_n else 1
    choices = []
    for i in range(n):
        choice: dict[str, Any] = {
            "index": i,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": f"answer {i}"},
        }
        if stub.logprobs and body.get("logprobs"):
            choice["logprobs"] = {
                "content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]
            }
        if stub.token_ids and body.get("return_token_ids"):
            choice["token_ids"] = [5]
        choices.append(choice)
    usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
    response = {"id": "s", "object": "chat.completion", "created": 0, "model": stub.model, "choices": choices}
    return 200, {**response, "usage": usage}


def _route(stub: Stub, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if method == "GET" and path == "/v1/models":
        if stub.models_status != 200:
            return stub.models_status, {"detail": "Internal Server Error"}
        listed = ([stub.model] if stub.listed is None else stub.listed) + stub.loaded
        return 200, {"object": "list", "data": [{"id": name, "object": "model"} for name in listed]}
    if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and stub.runtime_lora:
        if method == "GET":
            return 405, {"detail": "Method Not Allowed"}
        if path == "/v1/load_lora_adapter":
            stub.loaded.append(body["lora_name"])
        else:
            stub.loaded.remove(body["lora_name"])
        return 200, {}
    if method == "POST" and path == "/v1/chat/completions":
        return _chat(stub, body)
    if method == "POST" and path == "/tokenize" and stub.tokenize:
        return 200, {"tokens": list(range(len(str(body.get("prompt", "ab")))))}
    if method == "POST" and path == "/v1/completions":
        if "prompt_logprobs" in body and not stub.prompt_logprobs:
            return 422, {"detail": "Unexpected fields in the request: {'prompt_logprobs'}"}
        choice: dict[str, Any] = {"index": 0, "text": "x", "finish_reason": "length"}
        if stub.prompt_logprobs and "prompt_logprobs" in body:
            choice["prompt_logprobs"] = [None, {"1": {"logprob": -1.0}}]
        return 200, {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": stub.model,
            "choices": [choice],
        }
    return 404, {"detail": "Not Found"}


@contextmanager
def serve(stub: Stub) -> Iterator[str]:
    """Run `stub` on a free loopback port; yields its base URL (ending in /v1)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            stub.requests.append((method, self.path, body))
            status, payload = _route(stub, method, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
