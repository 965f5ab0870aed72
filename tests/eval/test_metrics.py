"""Unit tests of the eval metrics and of reading per-sample tokens (no server)."""

from __future__ import annotations

import itertools
import math

import pytest

from rolegraph.eval.metrics import ProblemResult, paired_difference, pass_at_k, score, wilson
from rolegraph.eval.report import sample_tokens
from rolegraph.serving.types import Choice
from rolegraph.store import Step


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples that hold at least one pass."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (4, 4, 2), (3, 1, 3)])
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_wilson_matches_the_textbook_values() -> None:
    low, high = wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    low, high = wilson(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    assert wilson(0.3, 0) == (0.0, 1.0)


def test_paired_difference_interval() -> None:
    mean, low, high = paired_difference([0, 0, 0, 0], [1, 1, 0, 1])
    assert mean == pytest.approx(0.75)
    assert low == pytest.approx(0.75 - 1.96 * math.sqrt(0.25 / 4), abs=1e-3) and high > mean


def test_score_leaves_unchecked_samples_out_and_counts_them() -> None:
    results = [
        ProblemResult("a", (True, False), (10, 30)),
        ProblemResult("b", (None, False), (20, 20)),  # one sample's check could not run
        ProblemResult("c", (None, None), (5, 5)),  # no sample checked: not scored
    ]
    s = score(results, k=2)
    assert s.problems == 2 and s.unscored_problems == 1 and s.unchecked_samples == 3
    assert s.pass1 == pytest.approx(0.5)  # a's first sample passed, b's first checked sample failed
    assert s.avg_k == pytest.approx((0.5 + 0.0) / 2)
    assert s.pass_k == pytest.approx((1.0 + 0.0) / 2)
    assert s.mean_tokens == pytest.approx(15.0) and s.mean_tokens_solved == pytest.approx(10.0)
    assert s.pass1_ci[0] < s.pass1 < s.pass1_ci[1]


def test_sample_tokens_per_choice_or_shared() -> None:
    step = Step(
        id=1, episode_id="e", attempt=1, kind="role", node="rollout", role="solver",
        choices=[Choice("x", token_ids=[1, 2, 3]), Choice("y", token_ids=[4])], completion_tokens=4,
    )  # fmt: skip
    assert sample_tokens([step], 2) == (3, 1)
    first = Step(id=2, episode_id="e", attempt=1, kind="role", node="a", role="solver", completion_tokens=6)
    second = Step(id=3, episode_id="e", attempt=1, kind="role", node="b", role="solver", completion_tokens=4)
    assert sample_tokens([first, second], 2) == (5, 5)
