"""Cases for the checks of notebook 07 (the metrics): merged into test_checks.py.

CORRECT holds minideeplab.metrics itself, so these cases also prove that the checks' PyTorch references
(torch.bincount, a disc dilation by convolution) agree with the package's NumPy metrics, exactly.
"""

import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_edt, maximum_filter

from minideeplab import metrics


def package_iou(cm):
    return metrics.class_iou(cm), metrics.mean_iou(cm)


def package_trimap(pred, label, width, ignore_index=255):
    return float(metrics.trimap_accuracy(pred, label, [width], ignore_index)[0])


def cm_student(pred, label, num_classes, ignore_index=255, mistake=None):
    """The bincount way, as a student writes it, one optional mistake."""
    t, p = label.ravel(), pred.ravel()
    if mistake != "uint8":
        t, p = t.astype(np.int64), p.astype(np.int64)
    keep = t != (255 if mistake == "hardcoded" else ignore_index)
    if mistake == "no_ignore":
        keep = np.ones(t.shape, bool)
    index = t[keep] * num_classes + p[keep]
    if mistake == "no_minlength":
        return np.bincount(index).reshape(num_classes, num_classes)
    cm = np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    if mistake == "transposed":
        return cm.T
    return cm / cm.sum() if mistake == "fractions" else cm


def cm_loop_student(pred, label, num_classes, ignore_index=255, mistake=None):
    """The indexing way: np.add.at into a zero matrix, one optional mistake."""
    cm = np.zeros((num_classes, num_classes), np.float64 if mistake == "float" else np.int64)
    t, p = label.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    keep = t != (255 if mistake == "hardcoded" else ignore_index)
    if mistake == "no_ignore":
        keep = np.ones(t.shape, bool)
    np.add.at(cm, (t[keep], p[keep]), 1)
    return cm


def iou_student(cm, mistake=None):
    """IoU from row and column sums, one optional mistake."""
    cm = cm.astype(np.float64) if mistake != "int" else cm
    inter = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - (0 if mistake == "no_subtract" else inter)
    if mistake == "recall":
        union = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter // union if mistake == "int" else inter / union
    if mistake == "absent_zero":
        iou = np.nan_to_num(iou)
    if mistake == "mean":
        return iou, float(np.mean(iou))
    if mistake == "mean_zero":
        return iou, float(np.mean(np.nan_to_num(iou)))
    if mistake == "pooled":
        return iou, float(inter.sum() / union.sum())
    return iou, float(np.nanmean(iou))


def iou_loop_student(cm):
    """A loop over the classes, skipping absent ones for the mean."""
    C = cm.shape[0]
    iou = np.full(C, np.nan)
    for c in range(C):
        tp = cm[c, c]
        union = cm[c, :].sum() + cm[:, c].sum() - tp
        if union > 0:
            iou[c] = tp / union
    return iou, float(np.mean(iou[~np.isnan(iou)]))


def trimap_student(pred, label, width, ignore_index=255, mistake=None):
    """The distance-transform way, as a student writes it, one optional mistake."""
    source = pred if mistake == "pred_band" else label
    lab = source.astype(np.int64)
    if mistake in ("roll", "roll_one_side"):  # neighbours by np.roll: the edges of the image wrap around
        edge = (lab != np.roll(lab, -1, 0)) | (lab != np.roll(lab, -1, 1))
        if mistake == "roll":
            edge |= (lab != np.roll(lab, 1, 0)) | (lab != np.roll(lab, 1, 1))
        band = distance_transform_edt(~edge) <= width
        band &= label != ignore_index
        return float(np.mean(pred[band] == label[band])) if band.any() else float("nan")
    edge = np.zeros(lab.shape, bool)
    dy, dx = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
    if mistake == "ignore_no_edge":
        dy &= (lab[1:] != ignore_index) & (lab[:-1] != ignore_index)
        dx &= (lab[:, 1:] != ignore_index) & (lab[:, :-1] != ignore_index)
    edge[:-1] |= dy
    edge[:, :-1] |= dx
    if mistake != "one_side":
        edge[1:] |= dy
        edge[:, 1:] |= dx
    if not edge.any():
        return float("nan")
    if mistake == "square":  # max pooling with a (2w+1) x (2w+1) window
        band = maximum_filter(edge, size=2 * width + 1)
    else:
        dist = distance_transform_edt(~edge)
        band = {"strict": dist < width, "plus_one": dist <= width + 1, "half": dist <= width / 2}.get(
            mistake, dist <= width)
    if mistake != "ignored_counted":
        band &= label != ignore_index
    return float(np.mean(pred[band] == label[band]))


def trimap_disc_student(pred, label, width, ignore_index=255):
    """Dilation of the boundary by a disc of radius `width`."""
    edge = np.zeros(label.shape, bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    r = int(width)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    band = binary_dilation(edge, structure=yy ** 2 + xx ** 2 <= width ** 2) & (label != ignore_index)
    return float(np.mean(pred[band] == label[band])) if band.any() else float("nan")


CORRECT = {
    "exercise_7_1": metrics.confusion_matrix,
    "exercise_7_2": package_iou,
    "exercise_7_3": package_trimap,
}
STUDENT_STYLE = {"exercise_7_1": cm_loop_student, "exercise_7_2": iou_loop_student,
                 "exercise_7_3": trimap_disc_student}

WRONG = [
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="transposed"), "the matrix is transposed"),
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="uint8"), "label * num_classes overflowed"),
    ("exercise_7_1", lambda *a, **k: cm_loop_student(*a, **k, mistake="hardcoded"), "not a hard-coded 255"),
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="hardcoded"),
     "np.bincount cannot count a negative index: the pixels labelled -1 (ignore_index) are still in"),
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="no_ignore"),
     "more when an ignored label (255) is counted"),
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="no_minlength"), "fewer when the last classes"),
    ("exercise_7_1", lambda *a, **k: cm_loop_student(*a, **k, mistake="float"), "expected integer counts"),
    ("exercise_7_1", lambda *a, **k: cm_student(*a, **k, mistake="fractions"), "these look like fractions"),
    ("exercise_7_1", lambda *a, **k: cm_loop_student(*a, **k, mistake="no_ignore"), "there is no row 255"),
    ("exercise_7_2", lambda cm: iou_student(cm, "no_subtract"), "counts the intersection twice"),
    ("exercise_7_2", lambda cm: iou_student(cm, "recall"), "(recall)"),
    ("exercise_7_2", lambda cm: iou_student(cm, "absent_zero"), "its IoU is 0 / 0"),
    ("exercise_7_2", lambda cm: iou_student(cm, "int"), "integer division"),
    ("exercise_7_2", lambda cm: iou_student(cm, "mean"), "np.nanmean(iou)"),
    ("exercise_7_2", lambda cm: iou_student(cm, "mean_zero"), "counting absent ones as 0"),
    ("exercise_7_2", lambda cm: iou_student(cm, "pooled"), "pools the pixels of all classes"),
    ("exercise_7_2", lambda cm: iou_student(cm)[0], "expected a tuple (iou, miou)"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="pred_band"), "must follow the ground truth"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="ignored_counted"), "ignored pixels were scored"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="ignore_no_edge"), "next to an ignored one"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="square"), "a disc"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="strict"), "not < width"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="plus_one"), "one pixel too wide"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="half"), "not width / 2"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="one_side"), "both sides of a border"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="roll"), "np.roll wraps around: it compares"),
    ("exercise_7_3", lambda *a, **k: trimap_student(*a, **k, mistake="roll_one_side"),
     "and only one pixel of each differing pair"),
    ("exercise_7_3", lambda p, t, w, ignore_index=255: float(np.mean(p[t != ignore_index] == t[t != ignore_index])),
     "pixel accuracy of the whole image"),
    ("exercise_7_3", lambda p, t, w, ignore_index=255: 0.0 if np.all(t == t.flat[0]) else
     trimap_student(p, t, w, ignore_index), "expected nan"),
]
