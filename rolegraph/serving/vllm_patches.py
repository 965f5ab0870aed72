"""A vLLM general plugin that makes `prompt_logprobs` work on CPU servers started with `--enable-lora`.

vLLM 0.32's CPU LoRA logits path indexes adapters per *request* (`sampler_indices`), but the prompt-logprobs
pass computes logits for every prompt *token* of one request. With two or more requests in a batch the shapes
disagree and the engine dies (`einsum(): subscript b has size 2 ... 219`; upstream vllm#29955, fix pending in
vllm#51597). `Client.score()` (the PromptCoT 2.0 E-step) depends on prompt logprobs, so rolegraph fixes the
mapping: while prompt logprobs are computed, each prompt row uses its own token's LoRA index.

It also keeps seeded requests from killing a CPU engine: when vLLM discards the token sampled for a request
still in chunked prefill, it rewinds that request's generator by its Philox offset, which CPU generators do
not have (`RuntimeError: CPU Generator does not use offset`, and the engine shuts down). CPU generators are
left out of that rewind; the seeded request runs on, its random stream one draw further along.

vLLM loads this in every engine and worker process through the `vllm.general_plugins` entry point declared in
pyproject. Set ROLEGRAPH_VLLM_PATCHES=0 to disable it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# The hidden-states tensor whose row slices are being turned into prompt logits, while that is happening.
_prompt_hidden_states: contextvars.ContextVar[Any] = contextvars.ContextVar("rg_prompt_hidden", default=None)
_applied = False


def register() -> None:
    """Entry point for `vllm.general_plugins`; idempotent, and a no-op when vLLM's internals differ."""
    global _applied
    if _applied or os.environ.get("ROLEGRAPH_VLLM_PATCHES", "1") == "0":
        return
    try:
        from vllm.lora.ops.torch_ops.lora_ops import bgmv_expand, bgmv_shrink
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:  # another vLLM build (e.g. GPU without the CPU wrapper): nothing to fix here
        return
    _wrap_prompt_logprobs(GPUModelRunner)
    _wrap_cpu_lora_logits(PunicaWrapperCPU, bgmv_shrink, bgmv_expand)
    _skip_cpu_generator_rewind(GPUModelRunner)
    _applied = True


def _wrap_prompt_logprobs(runner_cls: Any) -> None:
    original = runner_cls._get_prompt_logprobs_dict

    @functools.wraps(original)
    def _get_prompt_logprobs_dict(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        token = _prompt_hidden_states.set(hidden_states)
        try:
            return original(self, hidden_states, *args, **kwargs)
        finally:
            _prompt_hidden_states.reset(token)

    runner_cls._get_prompt_logprobs_dict = _get_prompt_logprobs_dict


def _wrap_cpu_lora_logits(wrapper_cls: Any, bgmv_shrink: Any, bgmv_expand: Any) -> None:
    import torch

    original = wrapper_cls.add_lora_logits

    @functools.wraps(original)
    def add_lora_logits(
        self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: float, **kwargs: Any
    ) -> Any:
        base = _prompt_hidden_states.get()
        rows = x.view(-1, x.shape[-1])
        if base is None or rows.size(0) == self.sampler_indices.size(0):
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)
        # `x` is a row slice of the prompt hidden states: find which batch tokens it covers.
        row_bytes = base.stride(0) * base.element_size()
        start = (rows.data_ptr() - base.data_ptr()) // row_bytes
        indices = self.token_lora_indices[start : start + rows.size(0)]
        if indices.size(0) != rows.size(0):
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)
        y_flat = y.view(-1, y.shape[-1])
        buffer = torch.zeros((rows.size(0), lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
        bgmv_shrink(rows, lora_a_stacked, buffer, indices, scale)
        bgmv_expand(buffer, lora_b_stacked, y_flat, indices, add_inputs=True)
        return None

    wrapper_cls.add_lora_logits = add_lora_logits


def _skip_cpu_generator_rewind(runner_cls: Any) -> None:
    original = runner_cls._bookkeeping_sync

    @functools.wraps(original)
    def _bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        generators = self.input_batch.generators
        cpu = {index: gen for index, gen in generators.items() if gen.device.type == "cpu"}
        for index in cpu:
            del generators[index]
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(cpu)

    runner_cls._bookkeeping_sync = _bookkeeping_sync
