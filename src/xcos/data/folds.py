"""Splitting pair lists into folds: used by the pair-set readers and by the k-fold protocol."""

from __future__ import annotations

import numpy as np


def contiguous_folds(count: int, folds: int = 10) -> np.ndarray:
    """Fold index of each of ``count`` pairs in ``folds`` contiguous blocks (no shuffle)."""
    if count < folds:
        raise ValueError(f"{count} pairs cannot be split into {folds} folds")
    return np.minimum(np.arange(count) * folds // count, folds - 1)
