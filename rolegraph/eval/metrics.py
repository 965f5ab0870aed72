"""Accuracy metrics of sampled answers: pass@1, unbiased pass@k, avg@k, token means and 95% intervals.

Samples whose check could not run (`None`: a sandbox or verifier failure) are left out of every accuracy and
counted apart; a problem with no checked sample is not scored at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    k = min(k, n)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p over n trials ((0, 1) when n is 0).

    For means of per-problem fractions (pass@k, avg@k) it is conservative: their variance is at
    most p(1-p)."""
    if n == 0:
        return (0.0, 1.0)
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if p <= 0 else max(0.0, centre - half)  # exact at the ends, where rounding would leak
    high = 1.0 if p >= 1 else min(1.0, centre + half)
    return (low, high)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float, float]:
    """Mean of after - before over the same problems, with a 95% normal interval of the paired differences."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_difference needs two equally long, non-empty score lists")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return (mean, -1.0, 1.0)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    half = Z95 * math.sqrt(var / len(diffs))
    return (mean, mean - half, mean + half)


@dataclass(frozen=True)
class ProblemResult:
    """One problem under one binding: each sample's verdict (None: not checked) and completion tokens."""

    problem_id: str
    passed: tuple[bool | None, ...]
    tokens: tuple[int, ...]

    @property
    def checked(self) -> list[bool]:
        return [ok for ok in self.passed if ok is not None]

    @property
    def avg(self) -> float:
        """Share of checked samples that passed (the unbiased pass@1 estimate)."""
        return sum(self.checked) / len(self.checked)


@dataclass(frozen=True)
class Scores:
    """The metrics of one binding over the problems it was evaluated on."""

    problems: int
    """Problems with at least one checked sample (the accuracies are over these)."""
    k: int
    pass1: float
    """The first checked sample of each problem."""
    pass_k: float
    """Unbiased pass@k from all checked samples."""
    avg_k: float
    """Mean share of passing samples per problem."""
    pass1_ci: tuple[float, float]
    pass_k_ci: tuple[float, float]
    avg_k_ci: tuple[float, float]
    mean_tokens: float
    """Mean completion tokens over every sample."""
    mean_tokens_solved: float | None
    """Mean completion tokens over the samples that passed (None when none did)."""
    samples: int
    unchecked_samples: int
    """Samples whose check could not run (infrastructure failures), left out of the accuracies."""
    unscored_problems: int
    """Problems none of whose samples could be checked."""


def score(results: Sequence[ProblemResult], k: int) -> Scores:
    """Aggregate per-problem results into the binding's metrics."""
    scored = [r for r in results if r.checked]
    n = len(scored)
    pass1 = sum(float(r.checked[0]) for r in scored) / n if n else 0.0
    pass_k = sum(pass_at_k(len(r.checked), sum(r.checked), k) for r in scored) / n if n else 0.0
    avg_k = sum(r.avg for r in scored) / n if n else 0.0
    tokens = [t for r in results for t in r.tokens]
    solved = [t for r in results for ok, t in zip(r.passed, r.tokens, strict=False) if ok]
    return Scores(
        problems=n,
        k=k,
        pass1=pass1,
        pass_k=pass_k,
        avg_k=avg_k,
        pass1_ci=wilson(pass1, n),
        pass_k_ci=wilson(pass_k, n),
        avg_k_ci=wilson(avg_k, n),
        mean_tokens=sum(tokens) / len(tokens) if tokens else 0.0,
        mean_tokens_solved=sum(solved) / len(solved) if solved else None,
        samples=sum(len(r.passed) for r in results),
        unchecked_samples=sum(len(r.passed) - len(r.checked) for r in results),
        unscored_problems=len(results) - n,
    )
