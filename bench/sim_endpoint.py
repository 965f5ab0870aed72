"""Simulated OpenAI-compatible endpoints for benches: a fixed time per generated token, no model.

Each endpoint serves /v1/models, /v1/chat/completions, /v1/completions, /tokenize and /health on 127.0.0.1
with vLLM's extras (`return_token_ids`, `prompt_token_ids`, logprobs, `n`), so the rolegraph client treats it
as a vLLM server, plus /sim/stats (requests served, seconds they spent queued) for the bench. A request
sleeps `max_tokens × per_token_s` (asyncio.sleep); at most `slots` requests of an endpoint generate at once
and the others queue, like a server with a fixed batch. So an endpoint's capacity is `slots / (max_tokens ×
per_token_s)` requests a second, whatever the host's CPUs do, and N endpoints have N times that capacity:
the bench measures whether the runtime keeps up.

    python bench/sim_endpoint.py --count 4 --port 9100 --per-token-ms 20 --slots 2

prints one JSON line `{"base_urls": [...]}` once every endpoint answers, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MODEL = "sim"
DEFAULT_MAX_TOKENS = 16
WORD = "tok"
TOKEN_ID = 7


@dataclass
class SimSettings:
    """How one simulated endpoint behaves."""

    per_token_s: float = 0.02
    slots: int = 1
    """Requests generating at once; more queue (a server's batch size)."""
    model: str = MODEL


def _prompt_ids(body: dict[str, Any]) -> list[int]:
    """Fake prompt token ids: one per whitespace-separated word of the prompt or messages."""
    if "messages" in body:
        text = " ".join(str(m.get("content") or "") for m in body["messages"])
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            return [int(x) for x in prompt] or [1]
        text = str(prompt)
    return [1 + (hash(word) % 30000) for word in text.split()] or [1]


class SimEndpoint:
    """One endpoint's routes and its generation slots."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.slots)
        self.requests = 0
        self.waited_s = 0.0
        """Time requests spent queued for a slot, summed: > 0 means callers collided on this endpoint."""
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/tokenize", self.tokenize, methods=["POST"]),
                Route("/sim/stats", self.stats),
            ]
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({})

    async def models(self, request: Request) -> JSONResponse:
        card = {"id": self.settings.model, "object": "model", "owned_by": "sim", "root": self.settings.model}
        return JSONResponse({"object": "list", "data": [card]})

    async def stats(self, request: Request) -> JSONResponse:
        """What the bench reads between measurements: requests served and time spent queued."""
        return JSONResponse({"requests": self.requests, "waited_s": self.waited_s})

    async def tokenize(self, request: Request) -> JSONResponse:
        body = await request.json()
        ids = _prompt_ids({"prompt": body.get("prompt", "")} if "prompt" in body else body)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": 8192})

    async def _generate(self, body: dict[str, Any]) -> tuple[int, int]:
        """Wait for a slot, then the time the tokens take. Returns (tokens per choice, choices)."""
        tokens = int(body.get("max_tokens") or DEFAULT_MAX_TOKENS)
        n = int(body.get("n") or 1)
        self.requests += 1
        queued = time.perf_counter()
        async with self.slots:
            self.waited_s += time.perf_counter() - queued
            await asyncio.sleep(tokens * self.settings.per_token_s)
        return tokens, n

    def _envelope(
        self, kind: str, body: dict[str, Any], choices: list[dict[str, Any]], tokens: int
    ) -> dict[str, Any]:
        prompt = _prompt_ids(body)
        return {
            "id": f"sim-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model") or self.settings.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": tokens * len(choices),
                "total_tokens": len(prompt) + tokens * len(choices),
            },
            "prompt_token_ids": prompt,
        }

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        tokens, n = await self._generate(body)
        text = " ".join([WORD] * tokens)
        logprobs = None
        if body.get("logprobs"):
            entry = {"token": WORD, "logprob": -0.5, "bytes": list(WORD.encode()), "top_logprobs": []}
            logprobs = {"content": [entry] * tokens}
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
                "logprobs": logprobs,
                "token_ids": [TOKEN_ID] * tokens,
            }
            for i in range(n)
        ]
        return JSONResponse(self._envelope("chat.completion", body, choices, tokens))

    async def completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        tokens, n = await self._generate(body)
        logprobs = None
        if body.get("logprobs") is not None:
            logprobs = {
                "tokens": [WORD] * tokens,
                "token_logprobs": [-0.5] * tokens,
                "top_logprobs": None,
                "text_offset": list(range(tokens)),
            }
        prompt = _prompt_ids(body)
        choices = [
            {
                "index": i,
                "text": " ".join([WORD] * tokens),
                "finish_reason": "length",
                "logprobs": logprobs,
                "token_ids": [TOKEN_ID] * tokens,
                "prompt_token_ids": prompt,
            }
            for i in range(n)
        ]
        return JSONResponse(self._envelope("text_completion", body, choices, tokens))


async def serve(ports: list[int], settings: SimSettings, ready: asyncio.Event | None = None) -> None:
    """Serve one simulated endpoint on each port of 127.0.0.1 until cancelled."""
    servers = [
        uvicorn.Server(
            uvicorn.Config(SimEndpoint(settings).app, host="127.0.0.1", port=port, log_level="warning")
        )
        for port in ports
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            for task in tasks:
                task.result()  # a port in use: raise what uvicorn raised
            raise RuntimeError("a simulated endpoint stopped while starting")
        await asyncio.sleep(0.02)
    if ready is not None:
        ready.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        for server in servers:
            server.should_exit = True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1, help="endpoints, on consecutive ports")
    parser.add_argument("--port", type=int, default=9100, help="the first endpoint's port")
    parser.add_argument("--per-token-ms", type=float, default=20.0)
    parser.add_argument("--slots", type=int, default=1, help="requests one endpoint generates at once")
    args = parser.parse_args()
    ports = [args.port + i for i in range(args.count)]
    settings = SimSettings(per_token_s=args.per_token_ms / 1000, slots=args.slots)

    async def run() -> None:
        ready = asyncio.Event()
        server = asyncio.create_task(serve(ports, settings, ready))
        await asyncio.wait({server, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        print(json.dumps({"base_urls": [f"http://127.0.0.1:{port}/v1" for port in ports]}), flush=True)
        await server

    asyncio.run(run())


if __name__ == "__main__":
    main()
