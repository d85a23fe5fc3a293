"""Checks for notebook 09, the ablations: reading a table of experiments honestly, exercises 9.1-9.2.

9.1 resamples the val images (a paired bootstrap) to see how much of a difference in mIoU between two rows
could be the luck of the 100 images; 9.2 finds the rows worth their cost (the Pareto front of cost and mIoU).
The references are written here in PyTorch (indexing and sums over sampled images, torch.nanmean; pairwise
comparisons by broadcasting); tests/check_cases_ablate.py passes the package's own answers (minideeplab.ablate)
through these checks.
"""

from __future__ import annotations

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_9_1", "exercise_9_2"]


# ---------------------------------------------------------------------------------------------
# 9.1 paired bootstrap of an mIoU difference


def _image_cms(rng, n_images, C, model_accuracy, absent=(), never_predicted=()):
    """(n_images, C, C) int64 per-image confusion matrices of a plausible model: each image holds the
    background and a few other classes (not those in `absent`), each true class's pixels mostly predicted right
    (about `model_accuracy`), the rest spread over the classes (not those in `never_predicted`)."""
    cms = np.zeros((n_images, C, C), np.int64)
    allowed = np.array([c for c in range(C) if c not in never_predicted])
    for i in range(n_images):
        others = [c for c in range(1, C) if c not in absent]
        present = [0] + list(rng.choice(others, size=min(len(others), int(rng.integers(1, 4))), replace=False))
        for t in present:
            n = int(rng.integers(200, 3000)) * (4 if t == 0 else 1)
            right = int(n * np.clip(rng.normal(model_accuracy, 0.1), 0, 1))
            wrong = rng.choice(allowed[allowed != t], size=n - right) if n > right else np.array([], int)
            cms[i, t] += np.bincount(wrong, minlength=C)
            if t in allowed:
                cms[i, t, t] += right
            else:  # a class this model never predicts: its pixels all go elsewhere
                cms[i, t] += np.bincount(rng.choice(allowed, size=right), minlength=C)
    return cms


def _bootstrap_cases():
    """(description, cms_a, cms_b, samples)."""
    rng = np.random.default_rng(91)
    cases = []
    a, b = _image_cms(rng, 12, 4, 0.8), _image_cms(rng, 12, 4, 0.7)
    cases.append(("12 images, 4 classes, 40 samples", a, b, rng.integers(0, 12, (40, 12))))
    a = _image_cms(rng, 15, 6, 0.85, absent=(5,), never_predicted=(5,))   # class 5: IoU nan for a
    b = _image_cms(rng, 15, 6, 0.6, absent=(5,))                           # b predicts 5: IoU 0
    cases.append(("15 images, 6 classes, class 5 in no image's truth and only b predicts it", a, b,
                  rng.integers(0, 15, (60, 15))))
    a, b = _image_cms(rng, 30, 21, 0.75), _image_cms(rng, 30, 21, 0.75)
    cases.append(("30 images, VOC's 21 classes (many absent from a sample), 100 samples", a, b,
                  rng.integers(0, 30, (100, 30))))
    a, b = _image_cms(rng, 8, 3, 0.9), _image_cms(rng, 8, 3, 0.5)
    samples = rng.integers(0, 8, (5, 8))
    samples[0] = 3                       # one image drawn eight times
    samples[1] = np.arange(8)            # every image once
    cases.append(("8 images, 3 classes, a sample of one image drawn 8 times", a, b, samples))
    return cases


def _torch_miou(cms, samples):
    """mIoU of each sample's summed confusion matrix (B,), float64: torch indexing, sum, torch.nanmean."""
    import torch

    cm = torch.from_numpy(cms)[torch.from_numpy(np.asarray(samples, dtype=np.int64))].sum(1).double()
    inter = torch.diagonal(cm, dim1=-2, dim2=-1)
    iou = inter / (cm.sum(-1) + cm.sum(-2) - inter)
    return torch.nanmean(iou, dim=-1).numpy()


def _miou_np(cm):
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
        return d / (cm.sum(-1) + cm.sum(-2) - d)


def _bootstrap_variants(a, b, samples):
    full = lambda cms: float(np.nanmean(_miou_np(cms.sum(0))))  # noqa: E731
    def per_image(cms):
        with np.errstate(invalid="ignore"):
            return np.array([np.nanmean(np.nanmean(_miou_np(cms[s]), axis=-1)) for s in samples])

    def zero(cms):
        return np.array([np.mean(np.nan_to_num(_miou_np(cms[s].sum(0)))) for s in samples])

    def unique(cms):
        return np.array([np.nanmean(_miou_np(cms[np.unique(s)].sum(0))) for s in samples])

    def acc(cms):
        c = cms[samples].sum(1)
        return np.trace(c, axis1=-2, axis2=-1) / c.sum((-1, -2))

    right = _torch_miou(a, samples) - _torch_miou(b, samples)
    return {
        "per_image": per_image(a) - per_image(b),
        "absent_zero": zero(a) - zero(b),
        "unique": unique(a) - unique(b),
        "pixel_accuracy": acc(a) - acc(b),
        "swapped": -right,
        "no_resample": np.full(len(samples), full(a) - full(b)),
    }


_BOOTSTRAP_HINTS = {
    "per_image": "this averages per-image mIoUs: sum the sampled images' confusion matrices first, then score the "
                 "sum once (VOC's protocol, as in notebook 07): small images and absent classes would otherwise "
                 "weigh as much as the rest.",
    "absent_zero": "a class absent from a whole sample (in neither truth nor prediction) counted as IoU 0: its IoU "
                   "is 0 / 0, leave it out of the mean (np.nanmean).",
    "unique": "an image drawn twice must count twice: that is what sampling with replacement means. "
              "cms[sample] keeps repeated indices; np.unique or a set drops them.",
    "pixel_accuracy": "this is the difference of pixel accuracies (trace / total): the exercise asks for mIoU.",
    "swapped": "the sign is flipped: return mIoU(a) - mIoU(b), positive when a is better.",
    "no_resample": "every entry is the difference on all the images: each entry must use its own sample, "
                   "samples[k], the images cms[samples[k]].",
}


@exercise_check("9.1")
def exercise_9_1(bootstrap_miou_difference):
    """bootstrap_miou_difference(cms_a, cms_b, samples) -> (B,) the mIoU of a minus that of b, each from the
    confusion matrices of one sample of images summed, against torch."""
    worst = 0.0
    cases = _bootstrap_cases()
    for desc, a, b, samples in cases:
        call = (f"bootstrap_miou_difference(cms_a {a.shape} int64, cms_b {b.shape} int64, samples {samples.shape}) "
                f"[{desc}]")
        args = (a.copy(), b.copy(), samples.copy())
        got = bootstrap_miou_difference(*args)
        for name, x, y in zip(("cms_a", "cms_b", "samples"), (a, b, samples), args):
            if not np.array_equal(x, y):
                raise ExerciseWrong(f"Exercise 9.1: {call} changed its argument `{name}` in place; leave it as it "
                                    f"was: work on copies (e.g. cms_a[samples[k]].sum(axis=0) makes a new array).")
        expected = _torch_miou(a, samples) - _torch_miou(b, samples)
        if isinstance(got, np.ndarray) and got.shape == expected.shape and np.isnan(got).any():
            k = int(np.argmax(np.isnan(got)))
            raise ExerciseWrong(f"Exercise 9.1: {call}: entry {k} is nan, expected {expected[k]:.6g}.\n  Hint: a "
                                "class absent from a whole sample has IoU 0 / 0 = nan: np.mean of an array holding "
                                "nan is nan; average with np.nanmean.")
        known = {_BOOTSTRAP_HINTS[k]: v for k, v in _bootstrap_variants(a, b, samples).items()
                 if not np.allclose(v, expected, rtol=1e-9, atol=1e-12)}
        worst = max(worst, compare_arrays("9.1", f"{call}, mIoU(a) - mIoU(b) per sample", got, expected,
                                          rtol=1e-9, atol=1e-12, known_mistakes=known))
    passed("9.1", f"{len(cases)} sets of bootstrap samples (absent classes, a class only one model predicts, VOC's "
                  "21 classes, repeated images) give torch's mIoU differences", worst, "1e-9 relative + 1e-12")


# ---------------------------------------------------------------------------------------------
# 9.2 the Pareto front of cost and score


def _front_cases():
    """(description, cost, score)."""
    rng = np.random.default_rng(92)
    cases = []
    cost = rng.uniform(0.02, 0.7, 13)
    score = 0.2 + 0.5 * np.sqrt(cost) + rng.normal(0, 0.05, 13)
    cases.append(("13 rows, costs and scores at random", cost, score))
    cost = np.array([0.05, 0.16, 0.16, 0.55, 0.62, 0.16, 0.05, 0.24])
    score = np.array([0.28, 0.45, 0.41, 0.52, 0.52, 0.45, 0.30, 0.50])   # rows 0 and 6: as cheap, 6 better
    cases.append(("8 rows with ties: equal costs, equal scores, and two identical rows", cost, score))
    cases.append(("one row", np.array([0.3]), np.array([0.4])))
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    cases.append(("4 rows, each dearer and better than the last", cost, np.array([0.1, 0.2, 0.3, 0.4])))
    cases.append(("4 rows, the cheapest the best", cost, np.array([0.5, 0.2, 0.3, 0.4])))
    return cases


def _torch_front(cost, score):
    """Row i is on the front when no row j is at most as costly and at least as good, and better in one."""
    import torch

    c, s = torch.from_numpy(np.asarray(cost, np.float64)), torch.from_numpy(np.asarray(score, np.float64))
    no_worse = (c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])      # [i, j]: j is no worse than i
    better = (c[None, :] < c[:, None]) | (s[None, :] > s[:, None])
    return ~(no_worse & better).any(1).numpy()


def _front_variants(cost, score):
    c, s = np.asarray(cost), np.asarray(score)
    ci, cj, si, sj = c[:, None], c[None, :], s[:, None], s[None, :]
    eye = np.eye(len(c), dtype=bool)
    scan, best = np.zeros(len(c), bool), None
    for i in np.argsort(c, kind="stable"):  # cheapest first (equal costs in table order), keep what beats the best
        if best is None or s[i] > s[best] or (s[i] == s[best] and c[i] == c[best]):
            scan[i] = True
            if best is None or s[i] > s[best]:
                best = i
    return {
        "strict_both": ~((cj < ci) & (sj > si)).any(1),
        "weak": ~((cj <= ci) & (sj >= si) & ~eye).any(1),
        "max_cost": ~((cj >= ci) & (sj >= si) & ((cj > ci) | (sj > si))).any(1),
        "min_score": ~((cj <= ci) & (sj <= si) & ((cj < ci) | (sj < si))).any(1),
        "scan_ties": scan,
    }


_FRONT_HINTS = {
    "strict_both": "a row is also dominated by one that is as cheap and better, or as good and cheaper: "
                   "dominance is 'no worse in both, strictly better in one', not 'strictly better in both'.",
    "weak": "identical rows were removed: a row that is merely as good (same cost, same score) does not dominate; "
            "the dominating row must be strictly better in cost or in score.",
    "max_cost": "cost is to be minimised: a row is dominated by one that costs no more and scores no less.",
    "min_score": "score is to be maximised: a row is dominated by one that scores no less and costs no more.",
    "scan_ties": "a scan in order of cost kept a row that an equally cheap, better row dominates: with equal costs, "
                 "look at the better score first (sort by cost, then by score descending), or compare all pairs.",
}


@exercise_check("9.2")
def exercise_9_2(pareto_front):
    """pareto_front(cost, score) -> (n,) bool: the rows no other row dominates (costs no more and scores no less,
    strictly better in one), against torch's pairwise comparison."""
    cases = _front_cases()
    for desc, cost, score in cases:
        call = f"pareto_front(cost ({len(cost)},), score ({len(score)},)) [{desc}]"
        args = (cost.copy(), score.copy())
        got = pareto_front(*args)
        for name, x, y in zip(("cost", "score"), (cost, score), args):
            if not np.array_equal(x, y):
                raise ExerciseWrong(f"Exercise 9.2: {call} changed its argument `{name}` in place (sorted it?); "
                                    f"leave it as it was: np.argsort gives the order without moving the values.")
        expected = _torch_front(cost, score)
        if isinstance(got, (list, tuple)):
            got = np.asarray(got)
        if not isinstance(got, np.ndarray) or got.dtype != bool:
            what = f"an array of dtype {got.dtype}" if isinstance(got, np.ndarray) else type(got).__name__
            hint = (" These look like row indices: return a mask, True for the rows on the front (e.g. "
                    "mask = np.zeros(n, bool); mask[indices] = True)."
                    if isinstance(got, np.ndarray) and got.dtype.kind in "iu" and got.shape != expected.shape else "")
            raise ExerciseWrong(f"Exercise 9.2: {call} returned {what}; expected a bool array of shape "
                                f"{expected.shape}, True for the rows on the front.{hint}")
        known = {_FRONT_HINTS[k]: v for k, v in _front_variants(cost, score).items() if not np.array_equal(v, expected)}
        if got.shape != expected.shape or not np.array_equal(got, expected):
            hint = next((f"\n  Hint: {t}" for t, v in known.items() if np.array_equal(v, got)), "")
            if got.shape != expected.shape:
                raise ExerciseWrong(f"Exercise 9.2: {call} returned shape {got.shape}, expected {expected.shape}: one "
                                    f"entry per row.{hint}")
            k = int(np.argmax(got != expected))
            dom = [j for j in range(len(cost)) if cost[j] <= cost[k] and score[j] >= score[k]
                   and (cost[j] < cost[k] or score[j] > score[k])]
            why = (f"row {dom[0]} (cost {cost[dom[0]]:.3g}, score {score[dom[0]]:.3g}) dominates it" if dom
                   else "no row costs no more and scores no less, strictly better in one")
            raise ExerciseWrong(f"Exercise 9.2: {call}: row {k} (cost {cost[k]:.3g}, score {score[k]:.3g}) got "
                                f"{bool(got[k])}, expected {bool(expected[k])}: {why}.{hint}")
    passed("9.2", f"{len(cases)} tables (ties in cost and in score, identical rows, a single row) give torch's "
                  "front", 0.0, "exact")
