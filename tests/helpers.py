"""Helpers shared by the model tests."""

import numpy as np


def rel(a, b):
    """max |a - b| relative to max |b| (shapes must match)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.max(np.abs(b))
    return np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0)
