"""Shared pieces of the exercise checks: small converters used by more than one notebook's checks."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from minideeplab.grading.core import ExerciseWrong


def first_bad(got, expected) -> int:
    """Index of the first entry of ``got`` not close to ``expected`` (both flattened)."""
    return int(np.argmax(~np.isclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float))))


def as_number(v, exercise, call):
    """``v`` when it is a real number (not a bool); else ExerciseWrong naming the call."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ExerciseWrong(f"Exercise {exercise}: {call} returned {v!r} ({type(v).__name__}), expected a number")
    return v


def offsets_mask(offsets) -> np.ndarray:
    """A set of integer offsets as a bool mask over their span, the smallest offset at index 0."""
    lo = min(offsets)
    mask = np.zeros(max(offsets) - lo + 1, dtype=bool)
    mask[[o - lo for o in offsets]] = True
    return mask


@contextmanager
def one_torch_thread():
    """Tiny layers: torch's thread pool beside BLAS's on few cores made these checks 5x slower (measured on
    2 shared cores: 9 s -> 1.7 s for 5.1). One thread, restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
