"""The async client for one OpenAI-compatible (vLLM) endpoint: a concurrency limit, retries and timeouts.

Retries (exponential backoff with jitter) cover connection errors, HTTP 429 and 5xx only; anything else is the
caller's mistake and fails at once. Every failure reaches the caller as a one-line, typed RolegraphError:
EndpointDownError, EndpointTimeoutError, RequestRejectedError or ModelNotFoundError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx2
import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from rolegraph.config import SamplingParams
from rolegraph.errors import (
    EndpointDownError,
    EndpointError,
    EndpointTimeoutError,
    ModelNotFoundError,
    RequestRejectedError,
)
from rolegraph.serving.types import CallResult, Choice, Usage

T = TypeVar("T")
Message = dict[str, Any]

SERVE_HINT = "is the server running? start it with `rolegraph serve`"


def normalize_base_url(base_url: str) -> str:
    """`http://host:port`, `…/`, `…/v1` and `…/v1/` all become `http://host:port/v1`."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, 429 and 5xx are worth retrying; timeouts and other statuses are not."""
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return False
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return True
    status = _status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code
    return None


class Client:
    """Async calls to one endpoint. Safe to share between tasks; create and use it inside one event loop."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str = "EMPTY",
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.base_url = normalize_base_url(base_url)
        self.server_url = self.base_url.removesuffix("/v1")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._semaphore = asyncio.Semaphore(max_concurrency)
        limits = httpx2.Limits(
            max_connections=max_concurrency + 8, max_keepalive_connections=max_concurrency + 8
        )
        # httpx2 is what the openai package is built on: one connection pool serves the OpenAI calls and the
        # vLLM extras (/tokenize, adapters) alike.
        self._http = http_client or httpx2.AsyncClient(timeout=timeout_s, limits=limits)
        self._owns_http = http_client is None
        # max_retries=0: tenacity does the retrying, with the rules above.
        self._openai = AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout_s, http_client=self._http
        )
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def __repr__(self) -> str:
        return f"Client({self.name!r}, {self.base_url!r}, max_concurrency={self.max_concurrency})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- generation -------------------------------------------------------------------------------------

    async def chat(self, messages: Sequence[Message], *, model: str, sampling: SamplingParams) -> CallResult:
        """One chat completion (n choices), with completion token ids and, when asked, per-token logprobs."""
        kwargs = self._sampling_kwargs(sampling)
        if sampling.logprobs:
            kwargs["logprobs"] = True
            if sampling.top_logprobs is not None:
                kwargs["top_logprobs"] = sampling.top_logprobs
        response, latency = await self._call(
            lambda: self._openai.chat.completions.create(model=model, messages=list(messages), **kwargs),  # type: ignore[arg-type]
            model=model,
        )
        choices = [
            Choice(
                text=c.message.content or "",
                finish_reason=c.finish_reason,
                token_ids=_extra(c, "token_ids"),
                logprobs=[t.logprob for t in c.logprobs.content]
                if c.logprobs and c.logprobs.content
                else None,
            )
            for c in response.choices
        ]
        return self._result(response, choices, model, latency, _extra(response, "prompt_token_ids"))

    async def complete(self, prompt: str | list[int], *, model: str, sampling: SamplingParams) -> CallResult:
        """One raw completion of a text or token-id prompt (no chat template)."""
        kwargs = self._sampling_kwargs(sampling)
        if sampling.logprobs:
            kwargs["logprobs"] = sampling.top_logprobs or 0
        response, latency = await self._call(
            lambda: self._openai.completions.create(model=model, prompt=prompt, **kwargs),
            model=model,
        )
        choices = [
            Choice(
                text=c.text,
                finish_reason=c.finish_reason,
                token_ids=_extra(c, "token_ids"),
                logprobs=[float(x) for x in c.logprobs.token_logprobs or []] if c.logprobs else None,
            )
            for c in response.choices
        ]
        prompt_ids = _extra(response.choices[0], "prompt_token_ids") if response.choices else None
        return self._result(response, choices, model, latency, prompt_ids)

    def _sampling_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
            "extra_body": {"return_token_ids": True, **sampling.extra},
        }
        if sampling.stop:
            kwargs["stop"] = sampling.stop
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        return kwargs

    def _result(
        self, response: Any, choices: list[Choice], model: str, latency: float, prompt_ids: list[int] | None
    ) -> CallResult:
        usage = response.usage
        return CallResult(
            choices=choices,
            model=response.model or model,
            endpoint=self.name,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            latency_s=latency,
            prompt_token_ids=prompt_ids,
        )

    # --- scoring ----------------------------------------------------------------------------------------

    async def score(self, prompt: str, continuation: str, *, model: str) -> float:
        """log p(continuation | prompt): the summed log-probabilities of the continuation's tokens."""
        prompt_ids = await self.tokenize(prompt, model=model, add_special_tokens=True)
        return await self._score_ids(prompt_ids, continuation, model=model)

    async def score_chat(self, messages: Sequence[Message], continuation: str, *, model: str) -> float:
        """log p(continuation | messages) in the context a role samples it in: continuing the final assistant
        message when the chat ends with one (a prefill), else in a newly opened assistant turn."""
        prompt_ids, continuation_ids = await self.chat_continuation_ids(messages, continuation, model=model)
        return float(sum(await self.token_logprobs(prompt_ids, continuation_ids, model=model)))

    async def chat_continuation_ids(
        self, messages: Sequence[Message], continuation: str, *, model: str
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, continuation ids): the prompt as the model samples after it (see `score_chat`), and
        the continuation tokenized in that context, i.e. the ids the model would have produced."""
        prefilled = bool(messages) and messages[-1].get("role") == "assistant"
        if prefilled:
            last = messages[-1]
            full = [*messages[:-1], {**last, "content": f"{last.get('content') or ''}{continuation}"}]
        else:
            full = [*messages, {"role": "assistant", "content": continuation}]
        prompt_ids, full_ids = await asyncio.gather(
            self.tokenize_chat(messages, model=model, continue_final_message=prefilled),
            self.tokenize_chat(full, model=model, continue_final_message=True),
        )
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, full_ids[len(prompt_ids) :]
        # The continuation's first characters merged with the prompt's last token: the model, which samples
        # after exactly the prompt's ids, starts a fresh token there.
        return prompt_ids, await self.tokenize(continuation, model=model, add_special_tokens=False)

    async def token_logprobs(
        self, prompt_ids: list[int], continuation_ids: list[int], *, model: str
    ) -> list[float]:
        """Per-token log-probabilities of `continuation_ids` after `prompt_ids` (one prompt_logprobs call)."""
        if not continuation_ids:
            return []
        ids = prompt_ids + continuation_ids
        sampling = SamplingParams.model_validate(
            {"temperature": 0.0, "max_tokens": 1, "extra": {"prompt_logprobs": 0}}
        )
        response, _ = await self._call(
            lambda: self._openai.completions.create(
                model=model, prompt=ids, **self._sampling_kwargs(sampling)
            ),
            model=model,
        )
        positions = _extra(response.choices[0], "prompt_logprobs") or []
        if len(positions) != len(ids):
            raise EndpointError(
                f"endpoint '{self.name}' returned {len(positions)} prompt logprobs for {len(ids)} tokens",
                "use a vLLM server (prompt_logprobs is a vLLM extension)",
            )
        return [_logprob_at(positions[i], ids[i]) for i in range(len(prompt_ids), len(ids))]

    async def _score_ids(self, prompt_ids: list[int], continuation: str, *, model: str) -> float:
        continuation_ids = await self.tokenize(continuation, model=model, add_special_tokens=False)
        return float(sum(await self.token_logprobs(prompt_ids, continuation_ids, model=model)))

    async def tokenize(self, text: str, *, model: str, add_special_tokens: bool = True) -> list[int]:
        """The server's tokenization of `text` (vLLM `/tokenize`)."""
        body = {"model": model, "prompt": text, "add_special_tokens": add_special_tokens}
        data = await self._post_json("/tokenize", body, model=model)
        return [int(t) for t in data["tokens"]]

    async def tokenize_chat(
        self, messages: Sequence[Message], *, model: str, continue_final_message: bool = False
    ) -> list[int]:
        """Token ids of the chat template applied to `messages`, ending with an opened assistant turn, or
        (`continue_final_message`) with the final message left open for the model to continue."""
        body = {
            "model": model,
            "messages": list(messages),
            "add_generation_prompt": not continue_final_message,
            "continue_final_message": continue_final_message,
            "add_special_tokens": False,
        }
        data = await self._post_json("/tokenize", body, model=model)
        return [int(t) for t in data["tokens"]]

    # --- models, adapters and metrics ------------------------------------------------------------------

    async def model_cards(self) -> list[dict[str, Any]]:
        """The raw `/v1/models` entries; LoRA adapters carry `parent` = their base model."""
        data = (await self._get("/v1/models")).json()
        return list(data.get("data", []))

    async def list_models(self) -> list[str]:
        """Names the endpoint serves: base models and loaded LoRA adapters."""
        return [str(card["id"]) for card in await self.model_cards()]

    async def base_model(self) -> str:
        """The endpoint's (first) base model, i.e. the first entry that is not a LoRA adapter."""
        cards = await self.model_cards()
        for card in cards:
            if not card.get("parent"):
                return str(card["id"])
        raise EndpointError(f"endpoint '{self.name}' at {self.base_url} serves no base model", SERVE_HINT)

    async def load_adapter(self, name: str, path: str) -> None:
        """Hot-load a LoRA adapter directory as `name`. Never in place: a loaded name keeps its weights."""
        await self._post_json(
            "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": str(path)},
            model=None,
            action=f"load adapter '{name}' from {path}",
            hint="pass a PEFT adapter directory (adapter_config.json) to a server launched with enable_lora",
        )

    async def unload_adapter(self, name: str) -> None:
        """Remove a hot-loaded LoRA adapter."""
        await self._post_json(
            "/v1/unload_lora_adapter",
            {"lora_name": name},
            model=None,
            action=f"unload adapter '{name}'",
            hint="unload one of the adapters `rolegraph endpoints status` lists",
        )

    async def metrics(self) -> str:
        """The server's Prometheus metrics, as exposition text (vLLM's `/metrics`)."""
        return (await self._get("/metrics")).text

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _call(self, make: Callable[[], Awaitable[T]], *, model: str | None) -> tuple[T, float]:
        """One request under the concurrency limit, with retries; returns (result, last attempt's latency)."""
        try:
            async for attempt in self._retrying():
                with attempt:
                    async with self._semaphore:
                        started = time.perf_counter()
                        result = await make()
                        return result, time.perf_counter() - started
        except Exception as exc:
            raise await self._translate(exc, model) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            wait=wait_random_exponential(multiplier=self._backoff_s, max=self._max_backoff_s),
            stop=stop_after_attempt(self.max_retries + 1),
            reraise=True,
        )

    async def _get(self, path: str) -> httpx2.Response:
        async def get() -> httpx2.Response:
            response = await self._http.get(self.server_url + path, headers=self._headers)
            response.raise_for_status()
            return response

        response, _ = await self._call(get, model=None)
        return response

    async def _post_json(
        self,
        path: str,
        body: dict[str, Any],
        *,
        model: str | None,
        action: str | None = None,
        hint: str | None = None,
    ) -> dict[str, Any]:
        async def post() -> httpx2.Response:
            response = await self._http.post(self.server_url + path, json=body, headers=self._headers)
            response.raise_for_status()
            return response

        try:
            response, _ = await self._call(post, model=model)
        except EndpointError as exc:
            if action is None:
                raise
            # A rejected request is the caller's to fix (`hint`); a failed server keeps the server's hint.
            fix = hint if isinstance(exc, RequestRejectedError) else exc.hint
            raise type(exc)(f"could not {action}: {exc.message}", fix) from None
        try:
            return dict(response.json())
        except ValueError:
            return {"text": response.text}

    async def _translate(self, exc: Exception, model: str | None) -> Exception:
        """Turn a failed request into a one-line, typed RolegraphError."""
        where = f"endpoint '{self.name}' at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return EndpointTimeoutError(
                f"{where} did not answer within {self.timeout_s:.0f} s",
                "raise the endpoint's timeout_s, lower max_tokens, or check the server load",
            )
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return EndpointDownError(
                f"{where} is unreachable after {self.max_retries + 1} attempts ({_reason(exc)})", SERVE_HINT
            )
        status = _status_of(exc)
        if status is None:
            return exc
        detail = _server_message(exc)
        if status == 429 or status >= 500:
            return EndpointDownError(
                f"{where} answered HTTP {status} after {self.max_retries + 1} attempts: {detail}", SERVE_HINT
            )
        if status == 404 and model is not None:
            served = await self._served_models()
            # An empty or failed listing proves nothing (some servers list nothing): it stays a rejection.
            if served and model not in served:
                return ModelNotFoundError(
                    f"{where} does not serve model '{model}' (it serves: {', '.join(served)})",
                    "bind the role to one of the served models, or load the adapter first",
                )
        return RequestRejectedError(
            f"{where} rejected the request (HTTP {status}): {detail}",
            "check the request: prompt length against max_model_len, sampling parameters, adapter paths",
        )

    async def _served_models(self) -> list[str]:
        """What the endpoint serves, or [] when even listing fails (a failure is being reported already)."""
        try:
            return await self.list_models()
        except Exception:
            return []


def _extra(obj: Any, name: str) -> Any:
    """A vLLM extension field the OpenAI types do not declare (kept in pydantic's model_extra)."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def _logprob_at(position: dict[str, Any] | None, token_id: int) -> float:
    if not position:
        raise EndpointError("the server returned no logprob for a scored token", "score a non-empty prompt")
    entry = position.get(str(token_id))
    if entry is None:
        # prompt_logprobs=0 returns exactly the prompt token; fall back to the only entry if keys differ.
        entry = next(iter(position.values()))
    return float(entry["logprob"] if isinstance(entry, dict) else entry)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc).strip() or type(cause or exc).__name__
    return text.splitlines()[0][:200]


def _server_message(exc: Exception) -> str:
    body: Any = None
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
    elif isinstance(exc, httpx2.HTTPStatusError):
        try:
            body = exc.response.json()
        except ValueError:
            body = exc.response.text
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        body = message if message is not None else body
    text = str(body if body is not None else exc).strip()
    return " ".join(text.split())[:300]
