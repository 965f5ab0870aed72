"""The async client for one OpenAI-compatible endpoint: a concurrency limit, retries and timeouts.

Retries (exponential backoff with jitter) cover connection errors, HTTP 429 and 5xx only; anything else is the
caller's mistake and fails at once. An endpoint served by several replicas routes each call to one of them
(rolegraph.serving.replicas); a replica that cannot be reached is taken out at once and the call is retried
on another live one before it returns (so the caller records it once); adapters load into every replica.
Every failure reaches the caller as a one-line, typed RolegraphError: EndpointDownError, EndpointTimeoutError,
RequestRejectedError or ModelNotFoundError.

The client adapts to what the endpoint can do (`capabilities`, see rolegraph.serving.capabilities): `n > 1`
is emulated by concurrent requests, vLLM extras are only sent where they work, and an optional field that a
4xx answer names is dropped, remembered (`rejected_fields`) and never sent to that endpoint again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx2
import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from rolegraph.config import SamplingParams
from rolegraph.errors import (
    ConfigError,
    EndpointDownError,
    EndpointError,
    EndpointTimeoutError,
    ModelNotFoundError,
    RequestRejectedError,
    RolegraphError,
)
from rolegraph.serving.capabilities import Capabilities, require
from rolegraph.serving.replicas import Replica, ReplicaRouter
from rolegraph.serving.routing import current_episode
from rolegraph.serving.types import CallResult, Choice, Usage

logger = logging.getLogger(__name__)

T = TypeVar("T")
Message = dict[str, Any]
AdapterPaths = Callable[[int, str, str], Awaitable[str]]
"""(replica index, adapter name, its path here) → its path where that replica runs."""

SERVE_HINT = "is the server running? start it with `rolegraph serve`"
"""The hint for a server rolegraph launches; an attached one gets `attached_hint`."""
REQUIRED_FIELDS = frozenset({"model", "messages", "prompt", "max_tokens", "temperature", "extra_body"})
"""Request fields never dropped: without them the request means something else."""
STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
SCORING = "scoring log-likelihoods (score, the EM E-step)"
REVIVE_INTERVAL_S = 2.0
"""How often a replica that was taken out is asked whether it answers again."""


class ServerFailedError(EndpointDownError):
    """The server answered, but with 429 or 5xx through every retry."""


class FieldsRejectedError(RequestRejectedError):
    """A 4xx answer that names optional fields of the request (`fields`): resent without them."""

    def __init__(self, message: str, hint: str | None, fields: set[str]) -> None:
        super().__init__(message, hint)
        self.fields = fields


def attached_hint(base_url: str) -> str:
    return f"check that the server at {base_url} is running and reachable from here"


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


def _unreachable(exc: BaseException) -> bool:
    return is_retryable(exc) and _status_of(exc) is None


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code
    return None


class Client:
    """Async calls to one endpoint (one server, or several replicas of it). Safe to share between tasks;
    create and use it inside one event loop."""

    def __init__(
        self,
        name: str,
        base_url: str | Sequence[str],
        *,
        api_key: str = "EMPTY",
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        http_client: httpx2.AsyncClient | None = None,
        launched: bool = False,
        capabilities: Capabilities | None = None,
        revive_interval_s: float = REVIVE_INTERVAL_S,
        adapter_paths: AdapterPaths | None = None,
    ) -> None:
        self.name = name
        self.launched = launched
        """rolegraph launched this endpoint's server (else it is attached: hints never say to start it)."""
        self.capabilities = capabilities or Capabilities()
        """What the endpoint can do; None fields are unknown and assumed to work until an answer says not."""
        self.rejected_fields: set[str] = set()
        """Optional request fields the endpoint rejected once; never sent again."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.router = ReplicaRouter([normalize_base_url(url) for url in urls])
        """Which replica serves each call (one replica: always that one, never taken out)."""
        self.base_url = self.router.replicas[0].base_url
        """The first replica's URL (the only one for a single server)."""
        self.server_url = self.base_url.removesuffix("/v1")
        self.max_concurrency = max_concurrency
        """Concurrent requests per replica."""
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.revive_interval_s = revive_interval_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._semaphores = [asyncio.Semaphore(max_concurrency) for _ in self.replicas]
        limits = httpx2.Limits(
            max_connections=(max_concurrency + 8) * len(self.replicas),
            max_keepalive_connections=(max_concurrency + 8) * len(self.replicas),
        )
        # httpx2 is what the openai package is built on: one connection pool serves the OpenAI calls and the
        # vLLM extras (/tokenize, adapters) alike, for every replica.
        self._http = http_client or httpx2.AsyncClient(timeout=timeout_s, limits=limits)
        self._owns_http = http_client is None
        # max_retries=0: tenacity does the retrying, with the rules above.
        self._openai = [
            AsyncOpenAI(
                base_url=replica.base_url,
                api_key=api_key,
                max_retries=0,
                timeout=timeout_s,
                http_client=self._http,
            )
            for replica in self.replicas
        ]
        for api in self._openai[:1]:
            # Resolved now rather than on the first call, which would otherwise pay their imports (~60 ms).
            _ = api.chat.completions, api.completions
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.adapter_paths = adapter_paths
        """Where replica i finds an adapter given by its path here (None: at that same path)."""
        self._adapters: dict[str, str] = {}
        """Adapters loaded through this client (name → path): a replica that comes back gets them first."""
        self._adapters_lock = asyncio.Lock()
        self._revivals: dict[int, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        urls = self.base_url if len(self.replicas) == 1 else [r.base_url for r in self.replicas]
        return f"Client({self.name!r}, {urls!r}, max_concurrency={self.max_concurrency})"

    @property
    def replicas(self) -> list[Replica]:
        """Every replica of the endpoint, up or down (one for a single server)."""
        return self.router.replicas

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        revivals, self._revivals = self._revivals, {}
        for task in revivals.values():
            task.cancel()
        for task in revivals.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_http:
            await self._http.aclose()

    # --- generation -------------------------------------------------------------------------------------

    async def chat(
        self, messages: Sequence[Message], *, model: str, sampling: SamplingParams, emulate_n: bool = True
    ) -> CallResult:
        """One chat completion (n choices), with completion token ids and, when asked, per-token logprobs.

        On an endpoint without `n > 1` (known, or found out from this answer) the missing choices come from
        concurrent n=1 requests under the concurrency limit (`emulate_n=False` returns what one request gave).
        """
        if emulate_n and sampling.n > 1 and self.capabilities.n is False:
            return _merged(await self._fan_out(messages, model, sampling, range(sampling.n)))
        result = await self._chat_once(messages, model=model, sampling=sampling)
        short = sampling.n - len(result.choices)
        if emulate_n and short > 0 and result.choices:
            self.capabilities = dataclasses.replace(self.capabilities, n=False)
            more = await self._fan_out(messages, model, sampling, range(len(result.choices), sampling.n))
            return _merged([result, *more])
        return result

    async def _fan_out(
        self, messages: Sequence[Message], model: str, sampling: SamplingParams, indices: range
    ) -> list[CallResult]:
        """n=1 requests, one per index; a seeded sampling gets seed+index so the choices differ."""

        def single(i: int) -> SamplingParams:
            seed = None if sampling.seed is None else sampling.seed + i
            return sampling.model_copy(update={"n": 1, "seed": seed})

        return list(
            await asyncio.gather(
                *(self._chat_once(messages, model=model, sampling=single(i)) for i in indices)
            )
        )

    async def _chat_once(
        self, messages: Sequence[Message], *, model: str, sampling: SamplingParams
    ) -> CallResult:
        kwargs = self._sampling_kwargs(sampling)
        if sampling.logprobs:
            kwargs["logprobs"] = True
            if sampling.top_logprobs is not None:
                kwargs["top_logprobs"] = sampling.top_logprobs
        response, latency, sent = await self._generate(
            lambda api, body: api.chat.completions.create(model=model, messages=list(messages), **body),  # type: ignore[arg-type]
            kwargs,
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
        prompt_ids = _extra(response, "prompt_token_ids")
        return self._result(
            response, choices, model, latency, prompt_ids, self._unavailable(sampling, sent, choices)
        )

    async def complete(self, prompt: str | list[int], *, model: str, sampling: SamplingParams) -> CallResult:
        """One raw completion of a text or token-id prompt (no chat template)."""
        kwargs = self._sampling_kwargs(sampling)
        if sampling.logprobs:
            kwargs["logprobs"] = sampling.top_logprobs or 0
        response, latency, sent = await self._generate(
            lambda api, body: api.completions.create(model=model, prompt=prompt, **body),
            kwargs,
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
        return self._result(
            response, choices, model, latency, prompt_ids, self._unavailable(sampling, sent, choices)
        )

    def _sampling_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        """The request's sampling fields, less what the endpoint is known to lack or has rejected."""
        caps = self.capabilities
        extra = dict(sampling.extra)
        if caps.token_ids is not False:
            extra = {"return_token_ids": True, **extra}
        if caps.structured_outputs is False:
            for name in STRUCTURED_FIELDS:
                extra.pop(name, None)
        kwargs: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
            "extra_body": extra,
        }
        if caps.n is False:
            del kwargs["n"]  # requests are n=1 here (emulated), and such servers may refuse the field
        if sampling.stop:
            kwargs["stop"] = sampling.stop
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        return kwargs

    def _without_rejected(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        dropped = set(self.rejected_fields)
        if self.capabilities.logprobs is False:
            dropped |= {"logprobs", "top_logprobs"}
        body = {k: v for k, v in kwargs.items() if k not in dropped}
        body["extra_body"] = {k: v for k, v in kwargs.get("extra_body", {}).items() if k not in dropped}
        return body

    async def _generate(
        self,
        create: Callable[[AsyncOpenAI, dict[str, Any]], Awaitable[T]],
        kwargs: dict[str, Any],
        *,
        model: str,
    ) -> tuple[T, float, dict[str, Any]]:
        """Send a generation request; a 4xx naming optional fields resends it without them (remembered).
        Returns (response, latency, the fields actually sent)."""
        while True:
            body = self._without_rejected(kwargs)
            sent = {k for k in body if k not in REQUIRED_FIELDS} | set(body["extra_body"])
            try:
                response, latency = await self._call(
                    lambda replica, b=body: create(self._openai[replica.index], b),  # type: ignore[misc]
                    model=model,
                    optional=sent,
                )
            except FieldsRejectedError as exc:
                self.rejected_fields |= exc.fields
                continue
            return response, latency, {**body, **body["extra_body"]}

    def _unavailable(
        self, sampling: SamplingParams, sent: dict[str, Any], choices: list[Choice]
    ) -> dict[str, str]:
        """What this call asked for (or records by default) and did not get, each with a one-line reason."""
        where = f"endpoint '{self.name}'"
        missing: dict[str, str] = {}
        if any(c.token_ids is None for c in choices):
            missing["token_ids"] = f"{where} does not return token ids"
        if sampling.logprobs and any(c.logprobs is None for c in choices):
            missing["logprobs"] = f"{where} does not return logprobs"
        for name in STRUCTURED_FIELDS:
            if sampling.extra.get(name) is not None and name not in sent:
                missing["structured_outputs"] = f"{where} does not decode under structured outputs"
        return missing

    def _result(
        self,
        response: Any,
        choices: list[Choice],
        model: str,
        latency: float,
        prompt_ids: list[int] | None,
        unavailable: dict[str, str],
    ) -> CallResult:
        usage = response.usage
        return CallResult(
            choices=choices,
            model=response.model or model,
            endpoint=self.name,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            latency_s=latency,
            prompt_token_ids=prompt_ids,
            unavailable=unavailable,
        )

    # --- scoring ----------------------------------------------------------------------------------------

    async def score(self, prompt: str, continuation: str, *, model: str) -> float:
        """log p(continuation | prompt): the summed log-probabilities of the continuation's tokens."""
        self.require_scoring()
        prompt_ids = await self.tokenize(prompt, model=model, add_special_tokens=True)
        return await self._score_ids(prompt_ids, continuation, model=model)

    async def score_chat(self, messages: Sequence[Message], continuation: str, *, model: str) -> float:
        """log p(continuation | messages) in the context a role samples it in: continuing the final assistant
        message when the chat ends with one (a prefill), else in a newly opened assistant turn."""
        self.require_scoring()
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

    def require_scoring(self) -> None:
        """A CapabilityError before any work when this endpoint cannot score (no prompt logprobs or
        /tokenize); callers that batch many scores (the EM E-step) call it up front."""
        require(self, "prompt_logprobs", "tokenize", purpose=SCORING)

    async def token_logprobs(
        self, prompt_ids: list[int], continuation_ids: list[int], *, model: str
    ) -> list[float]:
        """Per-token log-probabilities of `continuation_ids` after `prompt_ids` (one prompt_logprobs call)."""
        if not continuation_ids:
            return []
        self.require_scoring()
        ids = prompt_ids + continuation_ids
        positions = await self.prompt_logprobs(ids, model=model)
        if len(positions) != len(ids):
            self.capabilities = dataclasses.replace(self.capabilities, prompt_logprobs=False)
            raise EndpointError(
                f"endpoint '{self.name}' returned {len(positions)} prompt logprobs for {len(ids)} tokens",
                "score on a vLLM endpoint (prompt_logprobs is a vLLM extension)",
            )
        return [_logprob_at(positions[i], ids[i]) for i in range(len(prompt_ids), len(ids))]

    async def prompt_logprobs(self, prompt: str | list[int], *, model: str) -> list[dict[str, Any] | None]:
        """vLLM's per-prompt-token logprobs (`prompt_logprobs=0`) of a text or token-id prompt."""
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        data = await self._post_json("/v1/completions", body, model=model)
        choices = data.get("choices") or [{}]
        return list(choices[0].get("prompt_logprobs") or [])

    async def _score_ids(self, prompt_ids: list[int], continuation: str, *, model: str) -> float:
        continuation_ids = await self.tokenize(continuation, model=model, add_special_tokens=False)
        return float(sum(await self.token_logprobs(prompt_ids, continuation_ids, model=model)))

    async def tokenize(self, text: str, *, model: str, add_special_tokens: bool = True) -> list[int]:
        """The server's tokenization of `text` (vLLM `/tokenize`)."""
        require(self, "tokenize", purpose="tokenizing")
        body = {"model": model, "prompt": text, "add_special_tokens": add_special_tokens}
        data = await self._post_json("/tokenize", body, model=model)
        return [int(t) for t in data["tokens"]]

    async def tokenize_chat(
        self, messages: Sequence[Message], *, model: str, continue_final_message: bool = False
    ) -> list[int]:
        """Token ids of the chat template applied to `messages`, ending with an opened assistant turn, or
        (`continue_final_message`) with the final message left open for the model to continue."""
        require(self, "tokenize", purpose="tokenizing")
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

    async def model_cards(
        self, *, retry: bool = True, replica: Replica | None = None
    ) -> list[dict[str, Any]]:
        """The raw `/v1/models` entries (of `replica`, else of any one); LoRA adapters carry `parent` = their
        base model and, on vLLM, `root` = the directory they were loaded from."""
        data = (await self._get("/v1/models", retry=retry, replica=replica)).json()
        return list(data.get("data", []))

    async def list_models(self, *, retry: bool = True) -> list[str]:
        """Names the endpoint serves: base models and loaded LoRA adapters (with several replicas, those
        every live replica serves)."""
        if len(self.replicas) == 1:
            return [str(card["id"]) for card in await self.model_cards(retry=retry)]
        listings = await self._on_each_live(lambda replica: self.model_cards(retry=retry, replica=replica))
        names = [[str(card["id"]) for card in cards] for _, cards in listings]
        common = set(names[0]).intersection(*names[1:])
        return [name for name in names[0] if name in common]

    async def listed_models(self) -> list[str] | None:
        """What `/v1/models` lists, or None when the listing fails (an answer, not a dead server)."""
        try:
            return await self.list_models(retry=False)
        except (RequestRejectedError, ServerFailedError, ValueError):
            return None

    async def base_model(self) -> str:
        """The endpoint's (first) base model, i.e. the first entry that is not a LoRA adapter."""
        try:
            cards = await self.model_cards(retry=False)
            why = "its /v1/models lists none"
        except (RequestRejectedError, ServerFailedError) as exc:
            cards, why = [], f"its /v1/models failed: {exc.message}"
        for card in cards:
            if not card.get("parent"):
                return str(card["id"])
        if self.launched:
            raise EndpointError(f"endpoint '{self.name}' at {self.base_url} serves no base model", SERVE_HINT)
        raise ConfigError(
            f"endpoint '{self.name}' at {self.base_url} names no base model ({why})",
            f"set `model:` on every role bound to endpoint '{self.name}' (the name its server serves)",
        )

    async def has_route(self, path: str) -> bool:
        """Whether the server has a POST route at `path`: a GET there answers 405, not 404."""

        async def get(replica: Replica) -> int:
            return (await self._http.get(replica.server_url + path, headers=self._headers)).status_code

        status, _ = await self._call(get, model=None)
        return status not in (404, 501)

    async def load_adapter(self, name: str, path: str) -> None:
        """Hot-load a LoRA adapter directory as `name` into every live replica; all or none (a replica that
        refuses it makes this fail, and those that loaded it unload it again). Never in place: a replica
        already serving `name` from the same directory has it; from another directory is an error. A
        replica found unreachable meanwhile is taken out, and loads it before it is brought back."""
        async with self._adapters_lock:
            loaded: list[Replica] = []
            down: EndpointDownError | None = None
            try:
                for replica in self.router.live or list(self.replicas):
                    try:
                        if await self._load_on(replica, name, path):
                            loaded.append(replica)
                    except EndpointDownError as exc:
                        if len(self.replicas) == 1 or not is_replica_down(exc):
                            raise
                        self._take_out(replica, exc)
                        down = exc
                if down is not None and not self.router.live:
                    raise down
            except BaseException:
                for replica in loaded:
                    with contextlib.suppress(EndpointError):  # best effort: the load failure is what matters
                        await self._unload_on(replica, name)
                raise
            self._adapters[name] = str(path)

    async def unload_adapter(self, name: str) -> None:
        """Remove a hot-loaded LoRA adapter from every live replica that serves it."""
        async with self._adapters_lock:
            self._adapters.pop(name, None)
            if len(self.replicas) == 1:
                await self._unload_on(self.replicas[0], name)
                return
            unloaded = False
            rejected: RequestRejectedError | None = None
            for replica in self.router.live or list(self.replicas):
                try:
                    await self._unload_on(replica, name)
                    unloaded = True
                except (
                    RequestRejectedError
                ) as exc:  # it does not serve it (e.g. unloaded via another address)
                    rejected = rejected or exc
                except EndpointDownError as exc:
                    if not is_replica_down(exc):
                        raise
                    self._take_out(replica, exc)
            if not unloaded and rejected is not None:
                raise rejected

    async def _load_on(self, replica: Replica, name: str, path: str) -> bool:
        """Load an adapter into one replica; False when it already served exactly this adapter."""
        if self.adapter_paths is not None:
            path = await self.adapter_paths(replica.index, name, path)
        try:
            await self._post_json(
                "/v1/load_lora_adapter",
                {"lora_name": name, "lora_path": str(path)},
                model=None,
                action=f"load adapter '{name}' from {path}",
                hint="pass a PEFT adapter directory (adapter_config.json) to a server launched with "
                "enable_lora",
                replica=replica,
            )
            return True
        except RequestRejectedError:
            # vLLM refuses (HTTP 400) a name it serves already: fine when it is this very adapter (the same
            # server behind two replica addresses, or a retried hand-off), as its card's `root` tells.
            if await self._serves_adapter(replica, name, path):
                return False
            raise

    async def _unload_on(self, replica: Replica, name: str) -> None:
        await self._post_json(
            "/v1/unload_lora_adapter",
            {"lora_name": name},
            model=None,
            action=f"unload adapter '{name}'",
            hint="unload one of the adapters `rolegraph endpoints status` lists",
            replica=replica,
        )

    async def _serves_adapter(self, replica: Replica, name: str, path: str) -> bool:
        """Whether `replica` lists adapter `name` loaded from `path` (an error when from another path)."""
        card = next(
            (c for c in await self.model_cards(retry=False, replica=replica) if c.get("id") == name), None
        )
        root = None if card is None else card.get("root")
        if root is None:
            return False
        if os.path.normpath(str(root)) == os.path.normpath(str(path)):
            return True
        raise RequestRejectedError(
            f"could not load adapter '{name}' from {path}: endpoint '{self.name}' at {replica.base_url} "
            f"already serves another adapter by that name (from {root})",
            "publish the adapter under a new name; a name must always mean the same weights",
        )

    async def metrics(self) -> str:
        """The server's Prometheus metrics, as exposition text (vLLM's `/metrics`; of any one replica)."""
        return (await self._get("/metrics")).text

    async def replica_metrics(self) -> list[str]:
        """The metrics of every live replica (one text each)."""
        if len(self.replicas) == 1:
            return [await self.metrics()]
        answers = await self._on_each_live(lambda replica: self._get("/metrics", replica=replica))
        return [response.text for _, response in answers]

    # --- replicas ---------------------------------------------------------------------------------------

    async def _on_each_live(self, call: Callable[[Replica], Awaitable[T]]) -> list[tuple[Replica, T]]:
        """`call` on every live replica (on every replica when none is); a replica found unreachable is taken
        out and left out of the answers. Raises when none answers."""
        targets = self.router.live or list(self.replicas)
        results = await asyncio.gather(*(call(replica) for replica in targets), return_exceptions=True)
        answers: list[tuple[Replica, T]] = []
        down: BaseException | None = None
        for replica, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                if not is_replica_down(result):
                    raise result
                self._take_out(replica, result)  # type: ignore[arg-type]
                down = down or result
                continue
            answers.append((replica, result))
        if not answers:
            assert down is not None
            raise down
        return answers

    def _take_out(self, replica: Replica, exc: RolegraphError) -> None:
        """Route no more calls to an unreachable replica, and watch for it to answer again."""
        if len(self.replicas) == 1:
            return
        if self.router.take_out(replica, exc.message):
            logger.warning(
                "endpoint '%s': replica %s is unreachable; its calls go to the other replicas (%s)",
                self.name,
                replica.base_url,
                exc.message,
            )
        watcher = self._revivals.get(replica.index)
        if watcher is None or watcher.done():
            self._revivals[replica.index] = asyncio.get_running_loop().create_task(self._revive(replica))

    async def _revive(self, replica: Replica) -> None:
        """Ask a taken-out replica every `revive_interval_s` whether it answers; bring it back once it does
        and serves the adapters the other replicas serve."""
        while not replica.up:
            await asyncio.sleep(self.revive_interval_s)
            with contextlib.suppress(RolegraphError, httpx2.HTTPError, ValueError, KeyError):
                await self._try_revive(replica)

    async def _try_revive(self, replica: Replica) -> None:
        response = await self._http.get(
            replica.server_url + "/v1/models", headers=self._headers, timeout=min(self.timeout_s, 10.0)
        )
        if response.status_code != 200:
            return
        served = {str(card["id"]) for card in response.json().get("data", [])}
        # Under the adapters lock: a hand-off either sees this replica back, or ran before it was brought back
        # and its adapter is among those loaded here.
        async with self._adapters_lock:
            wanted = dict(self._adapters)
            for other in self.router.live:
                with contextlib.suppress(RolegraphError):
                    for card in await self.model_cards(retry=False, replica=other):
                        if card.get("parent") and card.get("root"):
                            wanted.setdefault(str(card["id"]), str(card["root"]))
            for name, path in wanted.items():
                if name not in served:
                    await self._load_on(replica, name, path)
            self.router.bring_back(replica)
        logger.warning("endpoint '%s': replica %s answers again", self.name, replica.base_url)

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _call(
        self,
        make: Callable[[Replica], Awaitable[T]],
        *,
        model: str | None,
        optional: set[str] | None = None,
        retry: bool = True,
        replica: Replica | None = None,
    ) -> tuple[T, float]:
        """One request under the concurrency limit, with retries; returns (result, last attempt's latency).

        The request goes to `replica`, else to the one the router picks for the current episode; a routed
        request whose replica cannot be reached is retried on another live one (the replica is taken out).
        `optional` names the request's droppable fields: a 4xx naming some is a FieldsRejectedError."""
        tried: set[int] = set()
        failover = replica is None and len(self.replicas) > 1
        while True:
            target = replica or self.router.choose(current_episode.get(), exclude=tried)
            assert target is not None  # only every replica tried makes it None, and that raised below
            try:
                with self.router.outstanding(target):
                    return await self._call_on(
                        target,
                        make,
                        model=model,
                        optional=optional or set(),
                        retry=retry,
                        elsewhere=failover and self.router.has_live(exclude=tried | {target.index}),
                    )
            except EndpointDownError as exc:
                if not failover or not is_replica_down(exc):
                    raise
                self._take_out(target, exc)
                tried.add(target.index)
                if len(tried) == len(self.replicas):
                    raise EndpointDownError(
                        f"every replica of endpoint '{self.name}' is unreachable (last: {exc.message})",
                        exc.hint,
                    ) from None

    async def _call_on(
        self,
        replica: Replica,
        make: Callable[[Replica], Awaitable[T]],
        *,
        model: str | None,
        optional: set[str],
        retry: bool,
        elsewhere: bool,
    ) -> tuple[T, float]:
        """`make` on one replica, with retries; `elsewhere`: another replica can take the request, so an
        unreachable one is not retried."""
        attempts = 0
        try:
            async for attempt in self._retrying(retry, unreachable=not elsewhere):
                with attempt:
                    attempts += 1
                    async with self._semaphores[replica.index]:
                        started = time.perf_counter()
                        result = await make(replica)
                        return result, time.perf_counter() - started
        except Exception as exc:
            raise await self._translate(exc, model, optional, retry, replica, attempts) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _retrying(self, retry: bool = True, *, unreachable: bool = True) -> AsyncRetrying:
        """Retries by `is_retryable`; with `retry=False` only a failed connection is retried, not an answer
        (a listing that answers 500 will answer 500 again); with `unreachable=False` not even that."""

        def worth_retrying(exc: BaseException) -> bool:
            if _unreachable(exc):
                return unreachable
            return retry and is_retryable(exc)

        return AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            wait=wait_random_exponential(multiplier=self._backoff_s, max=self._max_backoff_s),
            stop=stop_after_attempt(self.max_retries + 1),
            reraise=True,
        )

    async def _get(self, path: str, *, retry: bool = True, replica: Replica | None = None) -> httpx2.Response:
        async def get(target: Replica) -> httpx2.Response:
            response = await self._http.get(target.server_url + path, headers=self._headers)
            response.raise_for_status()
            return response

        response, _ = await self._call(get, model=None, retry=retry, replica=replica)
        return response

    async def _post_json(
        self,
        path: str,
        body: dict[str, Any],
        *,
        model: str | None,
        action: str | None = None,
        hint: str | None = None,
        replica: Replica | None = None,
    ) -> dict[str, Any]:
        async def post(target: Replica) -> httpx2.Response:
            response = await self._http.post(target.server_url + path, json=body, headers=self._headers)
            response.raise_for_status()
            return response

        try:
            response, _ = await self._call(post, model=model, replica=replica)
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

    @property
    def down_hint(self) -> str:
        """What to do about an endpoint that does not answer: only a launched one is started by rolegraph."""
        return SERVE_HINT if self.launched else attached_hint(self.base_url)

    async def _translate(
        self,
        exc: Exception,
        model: str | None,
        optional: set[str],
        retried: bool = True,
        replica: Replica | None = None,
        attempts: int | None = None,
    ) -> Exception:
        """Turn a failed request into a one-line, typed RolegraphError."""
        url = (replica or self.replicas[0]).base_url
        where = f"endpoint '{self.name}' at {url}"
        down_hint = SERVE_HINT if self.launched else attached_hint(url)
        attempts = attempts or self.max_retries + 1
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return EndpointTimeoutError(
                f"{where} did not answer within {self.timeout_s:.0f} s",
                "raise the endpoint's timeout_s, lower max_tokens, or check the server load",
            )
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return EndpointDownError(
                f"{where} is unreachable after {attempts} attempts ({_reason(exc)})", down_hint
            )
        status = _status_of(exc)
        if status is None:
            return exc
        detail = _server_message(exc)
        if status == 429 or status >= 500:
            return ServerFailedError(
                f"{where} answered HTTP {status} after {attempts} attempts: {detail}",
                down_hint,
            )
        if status == 404 and model is not None:
            served = await self.listed_models()
            # An empty or failed listing proves nothing (some servers list nothing): it stays a rejection.
            if served and model not in served:
                return ModelNotFoundError(
                    f"{where} does not serve model '{model}' (it serves: {', '.join(served)})",
                    "bind the role to one of the served models, or load the adapter first",
                )
        message = f"{where} rejected the request (HTTP {status}): {detail}"
        hint = "check the request: prompt length against max_model_len, sampling parameters, adapter paths"
        named = fields_named(detail, optional - self.rejected_fields)
        if named:
            return FieldsRejectedError(message, hint, named)
        return RequestRejectedError(message, hint)


def is_replica_down(exc: BaseException) -> bool:
    """The replica could not be reached at all (not an answer, however bad): take it out, go elsewhere."""
    return isinstance(exc, EndpointDownError) and not isinstance(exc, ServerFailedError)


def fields_named(detail: str, fields: set[str]) -> set[str]:
    """The `fields` a server's error message names; short names (`n`) only count when quoted."""
    named = set()
    for name in fields:
        word = re.escape(name)
        pattern = rf"(?<![\w]){word}(?![\w])" if len(name) > 2 else rf"['\"`]{word}['\"`]"
        if re.search(pattern, detail):
            named.add(name)
    return named


def _merged(results: list[CallResult]) -> CallResult:
    """One result from the n=1 results that emulated `n`: their choices in order, usage added up."""
    first = results[0]
    unavailable: dict[str, str] = {}
    for result in results:
        unavailable.update(result.unavailable)
    return dataclasses.replace(
        first,
        choices=[choice for result in results for choice in result.choices],
        usage=Usage(
            sum(r.usage.prompt_tokens for r in results), sum(r.usage.completion_tokens for r in results)
        ),
        latency_s=max(r.latency_s for r in results),
        unavailable=unavailable,
    )


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
