"""Step 1: seed problems → concept lists → a deduplicated concept pool, cached per seed file and k."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rolegraph.agents.parsers import normalize_concept
from rolegraph.errors import ConfigError, RolegraphError
from rolegraph.graphs.context import GraphContext
from rolegraph.graphs.promptcot.state import PromptCotOptions
from rolegraph.graphs.runtime import PREPARE_EPISODE
from rolegraph.paths import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SEEDS = REPO_ROOT.parent / "shared" / "data" / "math500_dev.jsonl"
SEED_HINT = "pass --set seeds=FILE (JSONL with a 'problem' field) or set $ROLEGRAPH_SEEDS"


def resolve_seeds(option: Path | None) -> Path:
    """The seed file: the `seeds` option, else $ROLEGRAPH_SEEDS, else ../shared/data/math500_dev.jsonl."""
    env = os.environ.get("ROLEGRAPH_SEEDS")
    path = option or (Path(env) if env else DEFAULT_SEEDS)
    path = Path(path).expanduser()
    if not path.is_file():
        source = "--set seeds" if option else ("$ROLEGRAPH_SEEDS" if env else "the default seed path")
        raise ConfigError(f"seed problems file {path} ({source}) does not exist", SEED_HINT)
    return path


def load_seed_problems(path: Path, limit: int) -> list[str]:
    """The first `limit` problems of a JSONL file; malformed lines are errors naming the line."""
    problems: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{number}: not valid JSON", SEED_HINT) from None
            problem = row.get("problem") if isinstance(row, dict) else None
            if not isinstance(problem, str) or not problem.strip():
                raise ConfigError(f"{path}:{number}: no 'problem' text field", SEED_HINT)
            problems.append(problem.strip())
            if len(problems) >= limit:
                break
    if not problems:
        raise ConfigError(f"{path} holds no seed problems", SEED_HINT)
    return problems


def concepts_cache_path(seeds: Path, options: PromptCotOptions) -> Path:
    digest = hashlib.sha256(seeds.read_bytes())
    digest.update(f"k={options.concepts_per_seed};limit={options.seed_limit}".encode())
    return cache_dir() / "promptcot" / f"concepts-{digest.hexdigest()[:16]}.json"


def build_pool(concept_lists: list[list[str]]) -> list[str]:
    """Concepts in first-seen order, deduplicated by normalized case and whitespace."""
    seen: dict[str, str] = {}
    for concepts in concept_lists:
        for concept in concepts:
            seen.setdefault(normalize_concept(concept), concept.strip())
    return list(seen.values())


async def extract_concepts(
    ctx: GraphContext, problems: list[str], k: int, max_tokens: int | None
) -> list[list[str]]:
    """One concept_extractor call per seed problem (concurrent); unparseable outputs give empty lists."""
    overrides: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}

    async def one(index: int, problem: str) -> list[str]:
        call = await ctx.call_role(
            "concept_extractor",
            node="concepts",
            episode_id=PREPARE_EPISODE,
            variables={"problem": problem, "k": k},
            **overrides,
        )
        items = call.first["items"] if call.first else []
        return [str(item) for item in items][:k]

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(problems))))


async def prepare_concepts(ctx: GraphContext, options: PromptCotOptions) -> dict[str, Any]:
    """The concept lists and pool (cached per seed file and k) and the cache file path."""
    seeds = resolve_seeds(options.seeds)
    cache = concepts_cache_path(seeds, options)
    if cache.is_file():
        data = json.loads(cache.read_text())
    else:
        problems = load_seed_problems(seeds, options.seed_limit)
        lists = await extract_concepts(ctx, problems, options.concepts_per_seed, options.max_tokens)
        pool = build_pool(lists)
        if not pool:
            raise RolegraphError(
                f"no concepts could be parsed from {len(problems)} seed problems",
                "see the concept_extractor steps in the run's store; try a larger model or more max_tokens",
            )
        data = {"seeds": str(seeds), "concept_lists": lists, "pool": pool}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(cache)
    return {"concept_lists": data["concept_lists"], "concept_pool": data["pool"], "concepts_file": str(cache)}
