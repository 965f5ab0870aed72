"""The synthesis funnel of a run: proposed → valid → judged → kept, with the rejection reasons."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rolegraph.errors import ConfigError
from rolegraph.store import STORE_FILE, Store

STAGES = ("proposed", "valid", "judged", "kept")


@dataclass(frozen=True)
class Funnel:
    graph: str
    stages: dict[str, int]
    """Episodes reaching each stage, in STAGES order."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Rejections by reason (numbers in a reason are shown as #, so thresholds group together)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Episodes that failed (infrastructure), by failure kind."""


def reason_group(reason: str) -> str:
    return re.sub(r"-?\d+(\.\d+)?", "#", reason)


def read_funnel(run_dir: Path) -> Funnel:
    """Counts from the run's episodes: valid ones produced a problem, judged ones carry a verdict (a graph
    without a judge counts every valid episode as judged)."""
    if not (run_dir / STORE_FILE).is_file():
        raise ConfigError(f"{run_dir} holds no rolegraph run", "pass a --run-dir of `rolegraph run`")
    with Store(run_dir, create=False) as store:
        run = store.run()
        episodes = store.episodes()
        failures = store.failures_by_kind()
    finished = [e for e in episodes if e.status == "finished"]
    states = [e.final_state or {} for e in finished]
    valid = [s for s in states if str(s.get("problem") or "").strip()]
    has_judge = any("verdict" in s for s in states)
    judged = [s for s in valid if s.get("verdict") is not None] if has_judge else valid
    reasons = Counter(reason_group(e.reason or "unspecified") for e in finished if not e.kept)
    return Funnel(
        graph=run.graph if run else "?",
        stages={
            "proposed": len(episodes),
            "valid": len(valid),
            "judged": len(judged),
            "kept": sum(1 for e in finished if e.kept),
        },
        reasons=dict(reasons.most_common()),
        failures=failures,
    )
