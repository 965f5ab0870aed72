"""TIR trajectories read back from a cort run's store: what RFT, GRPO and `runs show` work from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegraph.store import Store
from rolegraph.store.records import EpisodeRecord
from rolegraph.store.rewards import training_reward


@dataclass(frozen=True)
class TIRSample:
    """One finished episode: its exact token ids (prompt, then everything after it) and its mask."""

    episode_id: str
    problem_id: str
    mode: str
    sample: int
    prompt_ids: list[int]
    ids: list[int]
    mask: list[int]
    """1 for a model token, 0 for an interpreter or hint token (aligned with `ids`)."""
    correct: bool | None
    reward: float | None
    """The graph's training reward (correct − 0.1 · code_penalty); None when it could not be computed."""
    flags: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        """A detector fired (delayed computation, result distrust, or a registered one)."""
        return any(count > 0 for count in self.flags.values())


def sample_of(episode: EpisodeRecord, declared: list[dict[str, Any]]) -> TIRSample:
    state = episode.final_state or {}
    return TIRSample(
        episode_id=episode.id,
        problem_id=str(state.get("problem", {}).get("id", episode.id)),
        mode=str(state.get("mode", "tir")),
        sample=int(state.get("sample") or 0),
        prompt_ids=list(state.get("tir_prompt_ids") or []),
        ids=list(state.get("tir_ids") or []),
        mask=list(state.get("tir_mask") or []),
        correct=state.get("correct"),
        reward=training_reward(episode.rewards, declared) if episode.rewards else None,
        flags=dict(state.get("tir_flags") or {}),
        metrics=dict(episode.metrics),
    )


def read_samples(run_dir: Path | str) -> list[TIRSample]:
    """The finished episodes of a cort run, in episode order."""
    with Store(run_dir, create=False) as store:
        run = store.run()
        declared = run.rewards if run is not None else []
        return [sample_of(e, declared) for e in store.episodes(status="finished")]
