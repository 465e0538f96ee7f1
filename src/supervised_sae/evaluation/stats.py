"""Intervals for success rates: over swaps (Wilson), and over people (bootstrap)."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a success rate (sound at rates near 0 or 1)."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def people_bootstrap_interval(hit: np.ndarray, person: np.ndarray, draws: int = 2000,
                              seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of `hit` when people (not single trials) are
    resampled with replacement: trials of one person are not independent."""
    if len(hit) == 0:
        return [0.0, 1.0]
    people, index = np.unique(person, return_inverse=True)
    sums = np.bincount(index, weights=hit.astype(float), minlength=len(people))
    counts = np.bincount(index, minlength=len(people))
    pick = np.random.default_rng(seed).integers(0, len(people), (draws, len(people)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
