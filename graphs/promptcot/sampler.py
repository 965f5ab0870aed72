"""PromptCoT 1.0's concept sampler: co-occurrence counts plus embedding similarity, softmax with temperature.

The next concept is drawn with probability ∝ exp((cooc(S, j) + w · sim(S, j)) / T), where S is the set
sampled so far, cooc sums co-occurrence counts with S and sim sums cosine similarities. The reference computes
`exp(scores / T)` directly, which overflows on large counts; here the softmax is taken in log space.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
from scipy.special import softmax

from rolegraph.agents.parsers import normalize_concept


def cooccurrence_graph(concept_lists: Sequence[Sequence[str]]) -> nx.Graph:
    """Nodes are normalized concepts (attrs `label`, `count`); edge `weight` counts shared seed problems."""
    graph = nx.Graph()
    for concepts in concept_lists:
        keys: list[str] = []
        for concept in concepts:
            key = normalize_concept(concept)
            if not key or key in keys:
                continue
            keys.append(key)
            if key in graph:
                graph.nodes[key]["count"] += 1
            else:
                graph.add_node(key, label=concept.strip(), count=1)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                weight = graph.edges[a, b]["weight"] + 1 if graph.has_edge(a, b) else 1
                graph.add_edge(a, b, weight=weight)
    return graph


class ConceptSampler:
    """Samples concept sets from a co-occurrence graph; deterministic for a given numpy Generator."""

    def __init__(
        self,
        graph: nx.Graph,
        embeddings: np.ndarray | None = None,
        *,
        temperature: float = 0.5,
        similarity_weight: float = 1.0,
    ) -> None:
        if graph.number_of_nodes() == 0:
            raise ValueError("the concept graph is empty")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.keys: list[str] = sorted(graph.nodes)
        self.labels = [str(graph.nodes[k].get("label", k)) for k in self.keys]
        self.cooc = nx.to_numpy_array(graph, nodelist=self.keys, weight="weight", dtype=np.float64)
        counts = np.array([float(graph.nodes[k].get("count", 1)) for k in self.keys])
        self.first_logits = np.log(np.maximum(counts, 1e-12))
        """First concept ∝ its frequency, as in the reference; in log space so huge counts stay finite."""
        n = len(self.keys)
        if embeddings is None:
            self.sim = np.zeros((n, n))
        else:
            if embeddings.shape[0] != n:
                raise ValueError(f"{embeddings.shape[0]} embeddings for {n} concepts")
            unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
            self.sim = unit @ unit.T
        self.temperature = temperature
        self.similarity_weight = similarity_weight

    def next_probabilities(self, chosen: Sequence[int]) -> np.ndarray:
        """P(next concept | chosen indices); chosen concepts get probability 0."""
        scores = self.cooc[list(chosen)].sum(axis=0) + self.similarity_weight * self.sim[list(chosen)].sum(
            axis=0
        )
        logits = scores / self.temperature
        logits[list(chosen)] = -np.inf
        return np.asarray(softmax(logits))

    def sample(self, size: int, rng: np.random.Generator) -> list[str]:
        """One concept set (labels) of up to `size` distinct concepts."""
        size = min(size, len(self.keys))
        chosen = [int(rng.choice(len(self.keys), p=softmax(self.first_logits)))]
        while len(chosen) < size:
            chosen.append(int(rng.choice(len(self.keys), p=self.next_probabilities(chosen))))
        return [self.labels[i] for i in chosen]

    def sample_many(self, count: int, size: int, seed: int) -> list[list[str]]:
        rng = np.random.default_rng(seed)
        return [self.sample(size, rng) for _ in range(count)]
