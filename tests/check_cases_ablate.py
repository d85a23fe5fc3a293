"""Cases for the checks of notebook 09 (reading the ablation table): merged into test_checks.py.

CORRECT holds minideeplab.ablate's own functions, so these cases also prove that the checks' PyTorch references
agree with the package."""

import numpy as np

from minideeplab import ablate


def bootstrap_student(cms_a, cms_b, samples, mistake=None):
    """A loop over the samples, as a student writes it, one optional mistake."""
    def miou(cms, s):
        if mistake == "unique":
            s = np.unique(s)
        if mistake == "per_image":
            return np.mean([np.nanmean(iou(cm)) for cm in cms[s]])
        cm = cms[s].sum(axis=0)
        if mistake == "accuracy":
            return np.trace(cm) / cm.sum()
        i = iou(cm)
        return np.mean(np.nan_to_num(i)) if mistake == "absent_zero" else (
            np.mean(i) if mistake == "mean" else np.nanmean(i))

    def iou(cm):
        cm = cm.astype(np.float64)
        d = np.diag(cm)
        with np.errstate(invalid="ignore", divide="ignore"):
            return d / (cm.sum(0) + cm.sum(1) - d)

    if mistake == "no_resample":
        everything = np.arange(len(cms_a))
        return np.full(len(samples), miou(cms_a, everything) - miou(cms_b, everything))
    out = np.array([miou(cms_a, s) - miou(cms_b, s) for s in samples])
    return -out if mistake == "swapped" else out


def front_student(cost, score, mistake=None):
    """Sort by cost, better score first among equal costs, and keep each row that beats every cheaper one (or is
    identical to the best so far)."""
    order = np.argsort(cost, kind="stable") if mistake == "ties" else np.lexsort((-score, cost))
    keep = np.zeros(len(cost), bool)
    best = None
    for i in order:
        if best is None or score[i] > score[best] or (score[i] == score[best] and cost[i] == cost[best]):
            keep[i] = True
            if best is None or score[i] > score[best]:
                best = i
    return np.flatnonzero(keep) if mistake == "indices" else keep


def sorts_in_place(cost, score):
    order = np.argsort(cost)
    cost[:], score[:] = cost[order], score[order]
    return front_pairs_student(cost, score)


def front_pairs_student(cost, score, mistake=None):
    """All pairs, as the definition reads."""
    n = len(cost)
    keep = np.ones(n, bool)
    for i in range(n):
        for j in range(n):
            if mistake == "strict_both":
                dominated = cost[j] < cost[i] and score[j] > score[i]
            elif mistake == "weak":
                dominated = j != i and cost[j] <= cost[i] and score[j] >= score[i]
            elif mistake == "max_cost":
                dominated = cost[j] >= cost[i] and score[j] >= score[i] and (cost[j] > cost[i] or score[j] > score[i])
            else:  # no worse in both, strictly better in one
                dominated = cost[j] <= cost[i] and score[j] >= score[i] and (cost[j] < cost[i] or score[j] > score[i])
            if dominated:
                keep[i] = False
    return keep


CORRECT = {"exercise_9_1": ablate.bootstrap_miou_difference, "exercise_9_2": ablate.pareto_front}
STUDENT_STYLE = {"exercise_9_1": bootstrap_student, "exercise_9_2": front_pairs_student}

WRONG = [
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="per_image"), "averages per-image mIoUs"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="absent_zero"), "counted as IoU 0"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="mean"), "np.nanmean"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="unique"), "an image drawn twice must count twice"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="accuracy"), "difference of pixel accuracies"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="swapped"), "the sign is flipped"),
    ("exercise_9_1", lambda *a: bootstrap_student(*a, mistake="no_resample"), "each entry must use its own sample"),
    ("exercise_9_1", lambda a, b, s: bootstrap_student(a, b, s)[:-1], "shape"),
    ("exercise_9_2", lambda c, s: front_student(c, s, mistake="ties"), "an equally cheap, better row"),
    ("exercise_9_2", lambda c, s: front_student(c, s, mistake="indices"), "These look like row indices"),
    ("exercise_9_2", lambda c, s: front_pairs_student(c, s, mistake="strict_both"), "not 'strictly better in both'"),
    ("exercise_9_2", lambda c, s: front_pairs_student(c, s, mistake="weak"), "identical rows were removed"),
    ("exercise_9_2", lambda c, s: front_pairs_student(c, s, mistake="max_cost"), "cost is to be minimised"),
    ("exercise_9_2", sorts_in_place, "changed its argument `cost` in place"),
]
