"""Segmentation metrics. So far: the trimap (boundary band) accuracy with which DeepLab measured what the
dense CRF does at object borders."""

from __future__ import annotations

import numpy as np


def boundary_band(labels: np.ndarray, width: float, ignore_index: int = 255) -> np.ndarray:
    """(H, W) labels -> (H, W) bool: the pixels within `width` pixels (Euclidean) of a boundary, where a
    boundary pixel is one whose label differs from its right or lower neighbour (both sides are marked).
    Ignored pixels are never in the band. width 0 gives the boundary pixels themselves."""
    from scipy.ndimage import distance_transform_edt

    labels = _labels("boundary_band", "labels", labels)
    if not np.isfinite(width) or width < 0:
        raise ValueError(f"boundary_band: width must be a number >= 0, got {width!r}")
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:, :] != labels[:-1, :]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if not edge.any():
        return np.zeros(labels.shape, bool)
    return (distance_transform_edt(~edge) <= width) & (labels != ignore_index)


def trimap_accuracy(pred: np.ndarray, target: np.ndarray, widths, ignore_index: int = 255) -> np.ndarray:
    """Pixel accuracy of `pred` inside the band of each width around `target`'s boundaries, as DeepLab
    measured the CRF (the trimap experiment of the v1 and v2 papers). pred, target (H, W) ints -> float64 array, one value per width
    (nan where a band is empty)."""
    pred = _labels("trimap_accuracy", "pred", pred)
    target = _labels("trimap_accuracy", "target", target)
    if pred.shape != target.shape:
        raise ValueError(f"trimap_accuracy: pred has shape {pred.shape} but target has {target.shape}; "
                         f"they must be the same (H, W)")
    out = []
    for w in np.atleast_1d(widths):
        band = boundary_band(target, float(w), ignore_index)
        out.append(np.mean(pred[band] == target[band]) if band.any() else np.nan)
    return np.asarray(out, dtype=np.float64)


def _labels(fn, name, a):
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype.kind not in "iu":
        got = f"shape {a.shape} and dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{fn}: {name} must be an integer label map of shape (H, W), got {got}")
    return a
