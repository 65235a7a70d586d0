"""Fixed-shape batches: one compiled program for any number of items."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def fixed_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(indices, valid) batches covering range(n), each of exactly `batch_size`.

    The last batch wraps around to the first items, so every batch has the
    same shape (one compiled program) and holds real data (no all-zero
    padding for a solver to divide by); keep the first `valid` results.
    """
    for start in range(0, n, batch_size):
        yield np.arange(start, start + batch_size) % n, min(batch_size, n - start)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the training batch at `step` (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=batch_size, replace=n < batch_size)
