"""Statistics of the study's table: mIoUs of resampled val images, the paired bootstrap of a difference between
two rows and its interval (exercise 9.1; for configurations over seeds, ``bootstrap_seeds_interval``), the
Pareto front of cost and score (exercise 9.2)."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_ious", "bootstrap_miou_difference", "bootstrap_interval", "bootstrap_accuracy_interval",
           "bootstrap_seeds_interval", "pareto_front"]


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


def _miou_of_sums(cm) -> np.ndarray:
    """(..., C, C) summed confusion matrices -> (...,) mIoU (classes absent from a matrix left out)."""
    inter = np.diagonal(cm, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(inter / (cm.sum(-1) + cm.sum(-2) - inter), axis=-1)


def _accuracy_of_sums(cm) -> np.ndarray:
    """(..., C, C) summed confusion matrices -> (...,) pixel accuracy (nan for an empty matrix)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(cm, axis1=-2, axis2=-1) / cm.sum((-2, -1))


_SCORES = {"miou": _miou_of_sums, "accuracy": _accuracy_of_sums}


def bootstrap_seeds_interval(cms_a, cms_b, score="miou", n_samples=2000, level=0.95,
                             seed=0) -> tuple[float, float, float]:
    """cms_a (Sa, N, C, C), cms_b (Sb, N, C, C): two configurations, each seed's per-image matrices on the same N
    val images -> (difference of the seed means of ``score`` on all images, and the percentile interval of level
    of its paired bootstrap): the images resampled with replacement n_samples times, the same sample for every
    seed of both. score: "miou", or "accuracy" (the pixel accuracy of the summed matrices: the trimap accuracy
    from trimap confusions). The interval measures the luck of the val images given these seeds; the seeds' own
    spread is another question. With one seed a side: ``bootstrap_interval``'s numbers (the same samples)."""
    if score not in _SCORES:
        raise ValueError(f"bootstrap_seeds_interval: score must be 'miou' or 'accuracy', got {score!r}")
    a, b = np.asarray(cms_a, dtype=np.int64), np.asarray(cms_b, dtype=np.int64)
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:] or a.shape[2] != a.shape[3] or not (
            len(a) and len(b) and a.shape[1]):
        raise ValueError(f"bootstrap_seeds_interval: cms_a and cms_b must be (seeds, N, C, C) with one N > 0 and C "
                         f"and at least one seed each, got {a.shape} and {b.shape}")
    f, n, C = _SCORES[score], a.shape[1], a.shape[2]
    samples = np.random.default_rng(seed).integers(0, n, (n_samples, n))
    # how often each image is drawn in each sample: a sample's summed matrix is then one product (exact in float64)
    counts = np.bincount((np.arange(n_samples)[:, None] * n + samples).ravel(), minlength=n_samples * n)
    counts = counts.reshape(n_samples, n).astype(np.float64)

    def mean_score(cms, weights):
        return np.mean([f((weights @ c.reshape(n, C * C)).reshape(-1, C, C)) for c in cms.astype(np.float64)], 0)

    diffs = mean_score(a, counts) - mean_score(b, counts)
    lo, hi = np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    whole = mean_score(a, np.ones((1, n))) - mean_score(b, np.ones((1, n)))
    return float(whole[0]), float(lo), float(hi)


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
    a, b = np.asarray(cms_a), np.asarray(cms_b)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"bootstrap_accuracy_interval: cms_a and cms_b must both be (N, C, C), got {a.shape} and "
                         f"{b.shape}")
    return bootstrap_seeds_interval(a[None], b[None], "accuracy", n_samples, level, seed)


def pareto_front(cost, score) -> np.ndarray:
    """(n,) bool: the rows that no other row dominates, i.e. no row costs no more and scores no less while being
    strictly better in one (exercise 9.2). Identical rows do not dominate each other."""
    c, s = np.asarray(cost, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if c.shape != s.shape or c.ndim != 1:
        raise ValueError(f"pareto_front: cost and score must be 1-D of one length, got {c.shape} and {s.shape}")
    no_worse = (c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])
    better = (c[None, :] < c[:, None]) | (s[None, :] > s[:, None])
    return ~(no_worse & better).any(axis=1)
