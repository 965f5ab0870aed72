"""The concept sampler: co-occurrence drives sampling, and huge counts stay finite."""

from __future__ import annotations

import warnings
from collections import Counter

import networkx as nx
import numpy as np

from rolegraph.graphs.promptcot.sampler import ConceptSampler, cooccurrence_graph


def test_cooccurrence_graph_counts_and_normalizes() -> None:
    graph = cooccurrence_graph([["Algebra", "Geometry"], ["algebra ", "GEOMETRY", "Primes"], ["Primes"]])
    assert graph.edges["algebra", "geometry"]["weight"] == 2
    assert graph.edges["algebra", "primes"]["weight"] == 1
    assert graph.nodes["primes"]["count"] == 2
    assert graph.nodes["algebra"]["label"] == "Algebra"


def test_high_cooccurrence_pairs_are_sampled_more_often() -> None:
    # 'a' co-occurs with 'b' 5 times and with 'c' once; 'd' never co-occurs with 'a'.
    lists = [["a", "b"]] * 5 + [["a", "c"]] + [["c", "d"]] + [["b", "d"]]
    sampler = ConceptSampler(cooccurrence_graph(lists), temperature=2.0)
    rng = np.random.default_rng(0)
    partners: Counter[str] = Counter()
    for _ in range(3000):
        pair = sampler.sample(2, rng)
        if pair[0] == "a":
            partners[pair[1]] += 1
    total = sum(partners.values())
    assert total > 300
    assert partners["b"] > 2 * partners["c"] > 0
    assert partners["c"] > partners["d"]
    # expected share for b: softmax([5, 1, 0] / 2)[0] ≈ 0.82
    assert abs(partners["b"] / total - 0.82) < 0.05


def test_embedding_similarity_breaks_ties() -> None:
    graph = nx.Graph()
    graph.add_nodes_from(["a", "b", "c"], count=1)
    embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    sampler = ConceptSampler(graph, embeddings, temperature=0.1)
    probabilities = sampler.next_probabilities([0])
    assert probabilities[0] == 0.0
    assert probabilities[1] > 0.99


def test_huge_counts_give_finite_probabilities_without_warnings() -> None:
    graph = nx.Graph()
    graph.add_node("a", count=10**6)
    graph.add_node("b", count=10**6)
    graph.add_node("c", count=1)
    graph.add_edge("a", "b", weight=1e6)
    graph.add_edge("a", "c", weight=5e5)
    sampler = ConceptSampler(graph, temperature=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities = sampler.next_probabilities([0])
        samples = sampler.sample_many(50, 3, seed=1)
    assert np.all(np.isfinite(probabilities))
    assert abs(probabilities.sum() - 1.0) < 1e-9
    assert probabilities[1] == 1.0  # exp(5e6) dominates without overflowing
    assert all(len(set(s)) == 3 for s in samples)


def test_sampling_is_deterministic_per_seed() -> None:
    sampler = ConceptSampler(cooccurrence_graph([["a", "b", "c"], ["c", "d"], ["d", "e", "a"]]))
    assert sampler.sample_many(20, 3, seed=7) == sampler.sample_many(20, 3, seed=7)
    assert sampler.sample_many(20, 3, seed=7) != sampler.sample_many(20, 3, seed=8)
    assert sampler.sample_many(1, 10, seed=0)[0].__len__() == 5  # capped at the pool size
