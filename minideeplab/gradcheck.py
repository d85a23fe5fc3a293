"""Gradient checking: centred differences, and the worst disagreement per parameter group of a model.

``numerical_gradient`` needs nothing but the forward pass, so it can judge any backward pass (notebook 06,
exercise 6.1); ``group_errors`` summarises two gradient (or parameter) dicts keyed like a DeepLab's params.
"""

from __future__ import annotations

import numpy as np

__all__ = ["numerical_gradient", "parameter_group", "group_errors"]


def numerical_gradient(f, x, h=1e-5):
    """Centred differences (f(x + h e_i) - f(x - h e_i)) / 2h for every entry i of the array x.

    f: x -> a number. x is perturbed in place, one entry at a time, and restored, so f may also read x
    through a closure (a model's parameter array). Returns an array shaped and typed like x.
    The error is about h^2 |f'''| / 6 (truncation) + eps |f| / h (rounding): h = 1e-5 in float64.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise ValueError(f"numerical_gradient: x must be a float numpy array, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if not (isinstance(h, (int, float, np.floating)) and not isinstance(h, bool) and h > 0):
        raise ValueError(f"numerical_gradient: h must be a number > 0, got {h!r}")
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = float(f(x))
        x[i] = old - h
        f_minus = float(f(x))
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def parameter_group(name: str) -> str:
    """The part of DeepLab a parameter belongs to: "backbone.layer3.1.conv2.weight" -> "backbone.layer3",
    "backbone.conv1.weight" and "backbone.bn1.*" -> "backbone.stem", "aspp.convs.1.0.weight" -> "aspp"."""
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 2:
        return "backbone." + (parts[1] if parts[1].startswith("layer") else "stem")
    return parts[0]


def group_errors(got: dict, expected: dict) -> dict:
    """{group: worst max|got - expected| / max|expected| over the group's arrays}, in the order of ``expected``.
    Both dicts share their keys (e.g. a model's gradients from two implementations)."""
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise ValueError(f"group_errors: the keys differ; missing {missing[:3]}, unexpected {extra[:3]}")
    worst = {}
    for k, e in expected.items():
        e = np.asarray(e, dtype=np.float64)
        g = np.asarray(got[k], dtype=np.float64)
        if g.shape != e.shape:
            raise ValueError(f"group_errors: {k} has shape {g.shape}, expected {e.shape}")
        scale = np.abs(e).max()
        err = np.abs(g - e).max() / (scale if scale > 0 else 1.0)
        group = parameter_group(k)
        worst[group] = max(worst.get(group, 0.0), float(err))
    return worst
