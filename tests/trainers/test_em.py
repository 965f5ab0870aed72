"""One full PromptCoT 2.0 EM iteration on the real model and server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rolegraph.config import RolegraphConfig, SamplingParams
from rolegraph.serving import EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.config import SFTSettings
from rolegraph.trainers.em import P_ROLE, Q_ROLE, EMLoop, EMSettings
from rolegraph.trainers.registry import AdapterRegistry
from tests.data import shared_file

pytestmark = [pytest.mark.vllm, pytest.mark.train]


def _seeds(tmp_path: Path) -> Path:
    rows = [json.loads(line) for line in shared_file("math500_dev.jsonl").read_text().splitlines()[:2]]
    rows[0]["concepts"] = ["polar coordinates", "trigonometry"]  # the second seed has none: it gets extracted
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_one_em_iteration_produces_two_served_adapters(
    rg_config: RolegraphConfig, model_dir: Path, adapter_registry: AdapterRegistry, tmp_path: Path
) -> None:
    run_dir = tmp_path / "em-run"
    settings = EMSettings(
        seeds=_seeds(tmp_path),
        run_dir=run_dir,
        model_dir=model_dir,
        iterations=1,
        num_seeds=2,
        k=2,
        max_tokens=32,
        sft=SFTSettings(max_steps=1, batch_size=2),
    )
    async with EndpointPool(rg_config) as pool:
        loop = EMLoop(pool, settings, registry=adapter_registry)
        try:
            (report,) = await loop.run()
        finally:
            loop.close()

        assert report.q_adapter.startswith(f"{Q_ROLE}-v") and report.p_adapter.startswith(f"{P_ROLE}-v")
        assert pool.resolve(Q_ROLE)[1] == report.q_adapter and pool.resolve(P_ROLE)[1] == report.p_adapter
        client = pool.client("local")
        served = await client.list_models()
        assert report.q_adapter in served and report.p_adapter in served
        for name in (report.q_adapter, report.p_adapter):
            answer = await client.chat(
                [{"role": "user", "content": "Hi"}],
                model=name,
                sampling=SamplingParams(max_tokens=4, temperature=0),
            )
            assert answer.model == name and answer.choices
    # Figures are finite log-probabilities; the selected index is a real candidate.
    assert report.mean_best_reward < 0 and report.mean_log_p_x_before < 0 and report.mean_log_p_x_after < 0
    assert all(0 <= i < 2 for i in report.selected)

    with Store(run_dir, create=False) as store:
        runs = store.training_runs()
        assert [r.adapter_name for r in runs] == [report.q_adapter, report.p_adapter]
        assert all(r.inputs == [str(run_dir)] and r.hyperparams["method"] == "sft" for r in runs)
        assert all("train_loss" in r.metrics for r in runs)
        nodes = {s.node for s in store.steps()}
        assert {"extract", "e_sample", "e_score", "m_decode", "m_target_before", "m_target_after"} <= nodes
        # Steps record the adapter version that produced them: the M-step decode used q's new adapter.
        decode = [s for s in store.steps() if s.node == "m_decode"]
        assert decode and all(s.model == report.q_adapter for s in decode)
        selected = [
            r for s in store.steps() if s.node == "e_sample" for r in s.rewards if r.get("selected") == 1.0
        ]
        assert len(selected) == 2
