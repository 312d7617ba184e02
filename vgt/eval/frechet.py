"""Fréchet distance between two feature sets, from mergeable running sums (float64).

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), the FID formula. The matrix
square roots come from symmetric eigendecompositions (no scipy), which also keeps the trace real
for the rank-deficient covariances of small samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureStats:
    """Count, sum and sum of outer products of feature rows; `merge` combines partial stats."""

    n: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = field(default=None, repr=False)

    def add(self, feats: np.ndarray) -> "FeatureStats":
        f = np.asarray(feats, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {f.shape}")
        return self.merge(FeatureStats(len(f), f.sum(0), f.T @ f))

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        return FeatureStats(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (as numpy.cov); needs at least two rows."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        mu = self.total / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    r = _sqrt_psd(cov1)
    cross = np.linalg.eigvalsh(r @ cov2 @ r)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def frechet_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov())
