"""Statistics of the study's table: mIoUs of resampled val images, the paired bootstrap of a difference between
two rows and its interval (exercise 9.1), the Pareto front of cost and score (exercise 9.2)."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_ious", "bootstrap_miou_difference", "bootstrap_interval", "bootstrap_accuracy_interval",
           "pareto_front"]


def mean_ious(cms, samples) -> np.ndarray:
    """cms (N, C, C) per-image confusion matrices, samples (B, M) image indices (repeats count) -> (B,) float64:
    the mIoU of each sample's summed matrix (classes absent from a whole sample left out of its mean)."""
    cm = np.asarray(cms, dtype=np.int64)[np.asarray(samples, dtype=np.int64)].sum(1)
    inter = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (cm.sum(-1) + cm.sum(-2) - inter)
        return np.nanmean(iou, axis=-1)


def bootstrap_miou_difference(cms_a, cms_b, samples) -> np.ndarray:
    """The paired bootstrap of an mIoU difference (exercise 9.1): for each row of samples, (B, N) indices of
    images drawn with replacement, mIoU(a) - mIoU(b) on those images -> (B,) float64."""
    return mean_ious(cms_a, samples) - mean_ious(cms_b, samples)


def bootstrap_interval(cms_a, cms_b, n_samples=2000, level=0.95, seed=0) -> tuple[float, float, float]:
    """(mIoU(a) - mIoU(b) on all images, and the percentile interval of level of its paired bootstrap): the
    val images resampled with replacement n_samples times, the same images for both rows. It measures the luck of
    the val images, not that of the training run (one seed per row)."""
    a, b = np.asarray(cms_a), np.asarray(cms_b)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"bootstrap_interval: cms_a and cms_b must both be (N, C, C), got {a.shape} and {b.shape}")
    n = len(a)
    samples = np.random.default_rng(seed).integers(0, n, (n_samples, n))
    diffs = bootstrap_miou_difference(a, b, samples)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    whole = float(bootstrap_miou_difference(a, b, np.arange(n)[None])[0])
    return whole, float(lo), float(hi)


def bootstrap_accuracy_interval(cms_a, cms_b, n_samples=2000, level=0.95, seed=0) -> tuple[float, float, float]:
    """``bootstrap_interval`` for the pixel accuracy of the summed matrices (the trimap accuracy, from per-image
    trimap confusions (N, C, C)): (accuracy(a) - accuracy(b) on all images, the percentile interval)."""
    a, b = np.asarray(cms_a, dtype=np.int64), np.asarray(cms_b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"bootstrap_accuracy_interval: cms_a and cms_b must both be (N, C, C), got {a.shape} and "
                         f"{b.shape}")
    n = len(a)
    samples = np.random.default_rng(seed).integers(0, n, (n_samples, n))

    def accuracy(cms, idx):
        cm = cms[idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.trace(cm, axis1=-2, axis2=-1) / cm.sum((-2, -1))

    diffs = accuracy(a, samples) - accuracy(b, samples)
    lo, hi = np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    whole = accuracy(a, np.arange(n)[None])[0] - accuracy(b, np.arange(n)[None])[0]
    return float(whole), float(lo), float(hi)


def pareto_front(cost, score) -> np.ndarray:
    """(n,) bool: the rows that no other row dominates, i.e. no row costs no more and scores no less while being
    strictly better in one (exercise 9.2). Identical rows do not dominate each other."""
    c, s = np.asarray(cost, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if c.shape != s.shape or c.ndim != 1:
        raise ValueError(f"pareto_front: cost and score must be 1-D of one length, got {c.shape} and {s.shape}")
    no_worse = (c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])
    better = (c[None, :] < c[:, None]) | (s[None, :] > s[:, None])
    return ~(no_worse & better).any(axis=1)
