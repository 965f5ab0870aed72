"""RFT and GRPO on TIR episodes against the real vLLM server, real sandbox sessions and real TRL steps.

The solver is bound with a structured-outputs regex so the 135M model's trajectories are short and known:
RFT's are a correct answer (one call each), GRPO's a small cell per turn, so its rollouts carry interpreter
tokens. One training step each.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.graphs.cort.samples import read_samples
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.config import GRPOSettings, SFTSettings
from rolegraph.trainers.cort_grpo import TIRGRPO, TIRGRPOSettings
from rolegraph.trainers.cort_rft import RFT, RFTSettings
from rolegraph.trainers.registry import AdapterRegistry
from tests.fixtures.serving import VLLMServer

ANSWER = r"The answer is \\boxed\{12\}\."
CELL = r"```python\nprint\(3 \* 4\)\n```\n"


def config(server: VLLMServer, regex: str) -> RolegraphConfig:
    forced = SamplingParams(max_tokens=32, temperature=1.0, extra={"structured_outputs": {"regex": regex}})
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=server.base_url)},
        roles={"cort_solver": RoleBinding(endpoint="local", model=server.model, sampling=forced)},
    )


def problems(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"problem": "What is 3 * 4?", "answer": "12"}) + "\n")
    return path


def test_rft_trains_on_kept_trajectories_and_hands_off(
    tmp_path: Path, vllm_server: VLLMServer, model_dir: Path
) -> None:
    settings = RFTSettings(
        problems=problems(tmp_path),
        run_dir=tmp_path / "rft",
        model_dir=model_dir,
        max_problems=1,
        samples=2,
        max_calls=2,
        max_tokens=64,
        seed=0,
        sandbox="bwrap",
        sft=SFTSettings(max_steps=1, batch_size=2),
    )
    registry = AdapterRegistry(tmp_path / "adapters")

    async def main() -> tuple[object, str]:
        async with EndpointPool(config(vllm_server, ANSWER)) as pool:
            report = await RFT(pool, settings, registry).run()
            return report, pool.resolve("cort_solver")[1]

    report, bound = asyncio.run(main())
    selection = report.selection  # type: ignore[attr-defined]
    assert selection.sampled == 2 and selection.kept, selection
    assert report.adapter is not None and bound == report.adapter  # type: ignore[attr-defined]
    with Store(settings.run_dir, create=False) as store:
        (training,) = store.training_runs()
    assert training.metrics["kept"] == len(selection.kept)
    assert training.metrics["model_tokens"] > 0


def test_grpo_on_tir_episodes_masks_interpreter_tokens(
    tmp_path: Path, vllm_server: VLLMServer, model_dir: Path
) -> None:
    settings = TIRGRPOSettings(
        problems=problems(tmp_path),
        run_dir=tmp_path / "grpo",
        model_dir=model_dir,
        max_problems=1,
        max_calls=1,
        max_tokens=26,
        seed=0,
        sandbox="bwrap",
        hand_off=False,
        grpo=GRPOSettings(max_steps=1, num_generations=2, batch_size=2, max_completion_length=64),
    )

    async def main() -> object:
        async with EndpointPool(config(vllm_server, CELL)) as pool:
            return await TIRGRPO(pool, settings, AdapterRegistry(tmp_path / "adapters")).run()

    report = asyncio.run(main())
    assert report.rollouts == 2 and report.adapter is not None  # type: ignore[attr-defined]
    assert report.mean_reward is not None  # type: ignore[attr-defined]
    samples = read_samples(tmp_path / "grpo" / "rollouts" / "step-0")
    assert all(0 < sum(s.mask) < len(s.mask) for s in samples)  # interpreter tokens in every rollout
    result = report.result  # type: ignore[attr-defined]
    assert result.metrics["global_step"] == 1
    # TRL counted only the env_mask=1 tokens as completion length: the mask reached the trainer.
    logged = next(e for e in result.log_history if "completions/mean_length" in e)
    assert logged["completions/mean_length"] == sum(sum(s.mask) for s in samples) / len(samples)
