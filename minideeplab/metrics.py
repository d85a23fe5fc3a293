"""Segmentation metrics, all from one confusion matrix accumulated over a data set (as the VOC benchmark
does: sum the matrices of every image, then score; never average per-image scores):
pixel accuracy, mean (class) accuracy, per-class IoU, mean IoU and frequency-weighted IoU (the four of the
FCN paper), and the trimap (boundary band) accuracy with which DeepLab measured what the dense CRF does at
object borders.

    cm = sum(confusion_matrix(pred, label, num_classes) for pred, label in ...)
    mean_iou(cm)

Label maps are integer arrays; the target's ignore_index (255) pixels are left out everywhere.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """pred, target: integer arrays of one shape (e.g. (H, W) or (N, H, W)) -> (num_classes, num_classes)
    int64, cm[t, p] = number of pixels of true class t predicted as p. Pixels whose target is ignore_index
    are left out; every other value must be in 0..num_classes-1."""
    _num_classes("confusion_matrix", num_classes)
    pred = _class_map("confusion_matrix", "pred", pred)
    target = _class_map("confusion_matrix", "target", target)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred has shape {pred.shape} but target has {target.shape}; "
                         f"they must be the same")
    keep = target != ignore_index
    t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
    for name, a in (("target", t), ("pred", p)):
        bad = (a < 0) | (a >= num_classes)
        if bad.any():
            vals = np.unique(a[bad])
            extra = f" or {ignore_index} (ignored)" if name == "target" else ""
            raise ValueError(f"confusion_matrix: {name} has values {vals[:10].tolist()} outside 0..{num_classes - 1}"
                             f"{extra} ({int(bad.sum())} pixels)")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def pixel_accuracy(cm) -> float:
    """The fraction of (non-ignored) pixels predicted right: trace / total."""
    cm = _cm("pixel_accuracy", cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def class_accuracy(cm) -> np.ndarray:
    """(C,) float64: per class, the fraction of its pixels predicted right (recall); nan for a class absent
    from the target."""
    cm = _cm("class_accuracy", cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def mean_accuracy(cm) -> float:
    """The mean of class_accuracy over the classes present in the target."""
    return _nanmean(class_accuracy(_cm("mean_accuracy", cm)))


def class_iou(cm) -> np.ndarray:
    """(C,) float64: per class, intersection over union |pred = c and target = c| / |pred = c or target = c|;
    nan for a class absent from both pred and target (a class only predicted scores 0)."""
    cm = _cm("class_iou", cm)
    inter = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def mean_iou(cm) -> float:
    """mIoU: the mean of class_iou over the classes that occur (in pred or target)."""
    return _nanmean(class_iou(_cm("mean_iou", cm)))


def frequency_weighted_iou(cm) -> float:
    """Each class's IoU weighted by its share of the target pixels."""
    cm = _cm("frequency_weighted_iou", cm)
    freq = cm.sum(axis=1) / max(cm.sum(), 1)
    iou = class_iou(cm)
    return float(np.sum(freq[freq > 0] * iou[freq > 0])) if cm.sum() else float("nan")


def scores(cm) -> dict:
    """All of the above from one confusion matrix, as a dict of floats (class_iou as a list)."""
    cm = _cm("scores", cm)
    return {"pixel_accuracy": pixel_accuracy(cm), "mean_accuracy": mean_accuracy(cm), "mean_iou": mean_iou(cm),
            "frequency_weighted_iou": frequency_weighted_iou(cm), "class_iou": class_iou(cm).tolist()}


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


def trimap_confusion(pred, target, widths, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Confusion matrices restricted to the band around target's boundaries, one per width:
    (len(widths), C, C) int64. pred, target (H, W) or (N, H, W) (bands per image). Sum them over a data set,
    then score each with pixel_accuracy or mean_iou: DeepLab's trimap curves over a range of widths."""
    _num_classes("trimap_confusion", num_classes)
    pred = _class_map("trimap_confusion", "pred", pred)
    target = _class_map("trimap_confusion", "target", target)
    if pred.shape != target.shape or target.ndim not in (2, 3):
        raise ValueError(f"trimap_confusion: pred and target must both be (H, W) or (N, H, W), got "
                         f"{pred.shape} and {target.shape}")
    if target.ndim == 2:
        pred, target = pred[None], target[None]
    widths = np.atleast_1d(np.asarray(widths, dtype=np.float64))
    out = np.zeros((len(widths), num_classes, num_classes), np.int64)
    for p, t in zip(pred, target):
        t = t.astype(np.int64)
        for k, w in enumerate(widths):
            band = boundary_band(t, float(w), ignore_index)
            out[k] += confusion_matrix(p[band], t[band], num_classes, ignore_index)
    return out


def _num_classes(fn, n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{fn}: num_classes must be an int >= 1, got {n!r}")


def _class_map(fn, name, a):
    """An integer array (NumPy, or anything np.asarray takes: a CPU torch tensor, a list)."""
    arr = np.asarray(a)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ValueError(f"{fn}: {name} must hold integer class indices, got dtype {arr.dtype} "
                         f"(shape {arr.shape}); take argmax over classes first, or .astype(np.int64) if whole")
    return arr


def _cm(fn, cm):
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.dtype.kind not in "iu" or (cm < 0).any():
        raise ValueError(f"{fn}: cm must be a square confusion matrix of counts (C, C) >= 0 as confusion_matrix "
                         f"returns, got shape {cm.shape} and dtype {cm.dtype}")
    return cm


def _nanmean(a) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def _labels(fn, name, a):
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype.kind not in "iu":
        got = f"shape {a.shape} and dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{fn}: {name} must be an integer label map of shape (H, W), got {got}")
    return a
