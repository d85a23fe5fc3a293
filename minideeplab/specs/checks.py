"""Argument checks, written once for the specs, the scratch layers and the optimiser.

Each raises ValueError as ``"{fn}: {name} must be ..., got {value!r}"``: the function (or spec class) that
was called, the argument, what it received and what it expects; each returns the value normalised (a
numpy integer becomes an int, a numpy bool a bool).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FLOAT_DTYPES", "is_int", "check_int", "check_flag", "check_real", "check_rates", "check_shape",
           "check_float_array", "names"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_int(v) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(fn, name, v, lo=1) -> int:
    if not is_int(v) or v < lo:
        raise ValueError(f"{fn}: {name} must be an int >= {lo}, got {v!r}")
    return int(v)


def check_flag(fn, name, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{fn}: {name} must be True or False, got {v!r}")
    return bool(v)


def check_real(fn, name, v, lo, hi=math.inf, hi_open=False) -> float:
    """A number in [lo, hi] ([lo, hi) with ``hi_open``; ``hi`` infinite: any number >= lo)."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not ok or not (lo <= v and (v < hi if hi_open else v <= hi)):
        want = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{fn}: {name} must be a number {want}, got {v!r}")
    return float(v)


def check_rates(fn, rates, name="atrous_rates") -> tuple[int, ...]:
    """A non-empty tuple (or list) of ints >= 1."""
    if not isinstance(rates, (tuple, list)) or len(rates) == 0 or not all(is_int(r) and r >= 1 for r in rates):
        raise ValueError(f"{fn}: {name} must be a non-empty tuple of ints >= 1, got {rates!r}")
    return tuple(int(r) for r in rates)


def check_shape(fn, name, shape, n) -> tuple[int, ...]:
    """A shape argument: a tuple (or list) of ``n`` ints >= 1."""
    if not isinstance(shape, (tuple, list)) or len(shape) != n or not all(is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{fn}: {name} must be a tuple of {n} ints >= 1, got {shape!r}")
    return tuple(int(s) for s in shape)


def check_float_array(fn, name, a, ndim=None, layout="", like=None):
    """``a`` must be a float32/float64 numpy array with ``ndim`` axes (``layout`` says which), none
    empty; with ``like=(other_name, other_array)`` it must also have the other's dtype."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if like is None:
        if a.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected float32 or float64")
    elif a.dtype != like[1].dtype:
        raise ValueError(f"{fn}: {name} has dtype {a.dtype} but {like[0]} has dtype {like[1].dtype}; "
                         f"they must share one dtype (float32 or float64)")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{fn}: {name} has an empty axis, shape {a.shape}")


def names(keys, limit=6) -> str:
    """'a', 'b', 'c' and 4 more: a list of keys for an error message."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
