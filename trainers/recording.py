"""Every training run leaves a record in a run's store: inputs, hyper-parameters, metrics and its adapter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rolegraph.store import Store
from rolegraph.trainers.base import TrainResult
from rolegraph.trainers.registry import AdapterVersion


def record_training(
    run_dir: Path | str,
    result: TrainResult,
    *,
    inputs: Sequence[str | Path],
    adapter: AdapterVersion | None,
    extra_metrics: dict[str, float] | None = None,
) -> int:
    """Append one training record to `run_dir`'s store and return its id."""
    metrics = {**result.metrics, "rows": float(result.rows), "wall_s": result.wall_s, **(extra_metrics or {})}
    with Store(run_dir) as store:
        return store.record_training(
            trainer=result.method,
            inputs=list(inputs),
            hyperparams=result.hyperparameters,
            metrics=metrics,
            adapter_name=adapter.lora_name if adapter else None,
            adapter_version=f"v{adapter.version}" if adapter else None,
            adapter_path=str(adapter.path) if adapter else result.adapter_dir,
        )
