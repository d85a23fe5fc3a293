"""Checks for notebook 07, training and evaluation: the metrics, exercises 7.1-7.3.

The references are written here in PyTorch (torch.bincount for the confusion matrix, a disc-shaped
dilation by convolution for the boundary band); tests/check_cases_metrics.py passes ``minideeplab.metrics``
through these checks, so the two agree on every case.
"""

from __future__ import annotations

import math

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, crash_hint, exercise_check, passed

__all__ = ["exercise_7_1", "exercise_7_2", "exercise_7_3"]


# ---------------------------------------------------------------------------------------------
# seeded label maps: shapes on a background, mixed border pixels ignored, predictions near them


def _label_map(rng, shape, classes, n_shapes, ignore=255, ignored=0.6, dtype=np.uint8):
    """(H, W) labels: discs and boxes on class 0, of the given classes in turn (the first shapes drawn first);
    a fraction `ignored` of the pixels that differ from their right or lower neighbour set to `ignore` (as the
    data set's mixed border pixels)."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    label = np.zeros(shape, np.int64)
    for k in range(n_shapes):
        c = int(classes[k % len(classes)])
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(3, min(H, W) / 3)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * rng.uniform(0.5, 1.5))
        label[inside] = c
    border = np.zeros(shape, bool)
    border[:-1] |= label[:-1] != label[1:]
    border[:, :-1] |= label[:, :-1] != label[:, 1:]
    label[border & (rng.random(shape) < ignored)] = ignore
    return label.astype(dtype)


def _prediction(rng, label, classes, ignore=255):
    """A plausible prediction for `label`: shifted by up to a pixel, a few wrong blobs, 3 % noise; a class
    (never ignore) at every pixel, int64 as an argmax gives."""
    pred = label.astype(np.int64)
    bad = pred == ignore
    pred[bad] = rng.choice(classes, int(bad.sum()))
    pred = np.roll(pred, tuple(int(s) for s in rng.integers(-1, 2, 2)), axis=(0, 1))
    H, W = pred.shape
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(2, 6)
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.choice(classes)
    noise = rng.random(pred.shape) < 0.03
    pred[noise] = rng.choice(classes, int(noise.sum()))
    return pred


def _describe(a) -> str:
    return f"{a.shape} {a.dtype}"


def _unchanged(exercise, call, before: dict, after: dict):
    for name, a in before.items():
        if not np.array_equal(after[name], a, equal_nan=True):
            raise ExerciseWrong(f"Exercise {exercise}: {call} changed its argument `{name}` in place; leave it as "
                                f"it was (the caller still needs it): work on a copy, e.g. {name}.astype(np.int64).")


def _distinct(known: dict, expected) -> dict:
    """The known mistakes whose answer differs from the right one on this case."""
    expected = np.asarray(expected)
    return {text: w for text, w in known.items()
            if np.shape(w) != expected.shape or not np.array_equal(w, expected, equal_nan=True)}


# ---------------------------------------------------------------------------------------------
# 7.1 confusion matrix


def _cm_cases():
    """(description, pred, label, num_classes, ignore_index), the first with no ignored pixels."""
    rng = np.random.default_rng(71)
    cases = []
    label = rng.integers(0, 5, (9, 11))
    pred = label.copy()
    flip = rng.random(label.shape) < 0.4
    pred[flip] = rng.integers(0, 5, int(flip.sum()))
    cases.append(("one (9, 11) int64 map of noise, 5 classes, none ignored", pred, label, 5, 255))

    labels = np.stack([_label_map(rng, (32, 40), [1, 2, 3, 4, 5], 4) for _ in range(3)])   # class 6 absent
    preds = np.stack([_prediction(rng, lb, [0, 1, 2, 3, 4, 5]) for lb in labels])
    cases.append(("3 uint8 label maps (3, 32, 40), 7 classes, 255 on mixed border pixels, class 6 in neither",
                  preds, labels, 7, 255))

    voc = [0, 3, 8, 12, 15, 17, 19, 20]                                          # 13 of VOC's 21 classes absent
    labels = np.stack([_label_map(rng, (40, 48), voc[1:], 6) for _ in range(2)])
    preds = np.stack([_prediction(rng, lb, voc) for lb in labels])
    cases.append(("2 uint8 label maps (2, 40, 48), VOC's 21 classes (13 absent), 255 ignored", preds, labels, 21,
                  255))

    label = _label_map(rng, (30, 30), [1, 2, 3], 5, ignore=-1, dtype=np.int64)
    pred = _prediction(rng, label, [0, 1, 2, 3], ignore=-1)
    cases.append(("one (30, 30) int64 map, 4 classes, ignore_index=-1", pred, label, 4, -1))
    return cases


def _torch_confusion(pred, label, num_classes, ignore_index):
    """cm[t, p]: pixels of true class t predicted as p, ignored pixels left out (torch.bincount)."""
    import torch

    t = torch.from_numpy(np.asarray(label, dtype=np.int64)).flatten()
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64)).flatten()
    keep = t != ignore_index
    return torch.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes).numpy()


def _cm_variants(pred, label, C, ignore):
    t, p = label.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    out = {}
    right = _torch_confusion(pred, label, C, ignore)
    out["transposed"] = right.T
    if ignore < 0:                                     # a label of -1 indexes the last row
        counted = np.where(t == ignore, C - 1, t)
        out["counted"] = np.bincount(counted * C + p, minlength=C * C).reshape(C, C)
    if label.dtype == np.uint8:                        # label * C computed in uint8
        keep = t != ignore
        wrapped = (t[keep] * C) % 256 + p[keep]
        if wrapped.max() < C * C:
            out["uint8"] = np.bincount(wrapped, minlength=C * C).reshape(C, C)
    return out


_CM_HINTS = {
    "transposed": "the matrix is transposed: rows are the ground truth, cm[t, p] counts the pixels of true class "
                  "t predicted as p (index label * num_classes + pred, or cm[label, pred]).",
    "counted": "the pixels labelled ignore_index were counted (a label of -1 indexes the last row, class C-1): "
               "leave them out, keep = label != ignore_index, with the ignore_index argument (not a hard-coded "
               "255).",
    "uint8": "label * num_classes overflowed: the labels are uint8 (as read from a PNG file), and in uint8 "
             "20 * 21 = 420 wraps around to 164. Convert first: label.astype(np.int64).",
}


def _raised(wrong, has_ignored, ignore):
    """``wrong`` (the ExerciseWrong for an exception the student's function raised) with the likely cause."""
    e = wrong.student_error
    hint = ""
    if "reshape" in str(e):
        hint = ("np.bincount returns max(index) + 1 bins, fewer when the last classes never occur and more when "
                f"an ignored label ({ignore}) is counted: leave out the ignored pixels first and pass "
                "minlength=num_classes**2.")
    elif has_ignored and "negative" in str(e):
        hint = (f"np.bincount cannot count a negative index: the pixels labelled {ignore} (ignore_index) are still "
                "in, and label * num_classes + pred is negative there. Leave them out first, keep = label != "
                "ignore_index, with the ignore_index argument (not a hard-coded 255).")
    elif has_ignored and isinstance(e, IndexError):
        hint = (f"an index was out of range: the pixels labelled {ignore} (ignore_index) must be left out before "
                f"they index the matrix (there is no row {ignore}).")
    if not hint:
        raise wrong
    raise crash_hint(wrong, hint) from e


@exercise_check("7.1")
def exercise_7_1(confusion_matrix):
    """confusion_matrix(pred, label, num_classes, ignore_index) against torch.bincount of label * C + pred over
    the pixels not ignored."""
    worst = 0.0
    cases = _cm_cases()
    for desc, pred, label, C, ignore in cases:
        call = (f"confusion_matrix(pred {_describe(pred)}, label {_describe(label)}, {C}, ignore_index={ignore}) "
                f"[{desc}]")
        args = (pred.copy(), label.copy())
        try:
            got = confusion_matrix(*args, C, ignore_index=ignore)
        except ExerciseWrong as w:  # the student's function raised: the likely cause, then its own traceback
            if getattr(w, "student_error", None) is None:
                raise
            _raised(w, bool((label == ignore).any()), ignore)
        _unchanged("7.1", call, {"pred": pred, "label": label}, dict(zip(("pred", "label"), args)))
        expected = _torch_confusion(pred, label, C, ignore)
        known = _distinct({_CM_HINTS[k]: v for k, v in _cm_variants(pred, label, C, ignore).items()}, expected)
        if isinstance(got, np.ndarray) and got.shape == expected.shape and got.dtype.kind not in "iu":
            hint = ""
            if np.isclose(got.sum(), 1) or np.allclose(got.sum(1)[expected.sum(1) > 0], 1):
                hint = "\n  Hint: these look like fractions: return the counts (metrics are computed from them)."
            raise ExerciseWrong(f"Exercise 7.1: {call} returned dtype {got.dtype}; expected integer counts "
                                f"(int64), e.g. np.zeros((num_classes, num_classes), dtype=np.int64) or "
                                f"np.bincount.{hint}")
        worst = max(worst, compare_arrays("7.1", f"{call}, cm[true class, predicted class]", got, expected,
                                          rtol=0.0, atol=0.0, known_mistakes=known, check_dtype=False))
    passed("7.1", f"{len(cases)} confusion matrices (noise; uint8 maps with 255 borders and absent classes; VOC's "
                  "21 classes; ignore_index=-1) equal torch.bincount's", worst, "exact counts")


# ---------------------------------------------------------------------------------------------
# 7.2 per-class IoU and mIoU


def _iou_cases():
    """(description, cm): int64 confusion matrices of seeded label maps (counted by torch.bincount), and an edge
    case."""
    rng = np.random.default_rng(72)
    cases = []
    label = _label_map(rng, (40, 48), [1, 2, 3, 4], 6)
    cases.append(("5 classes, all present", _torch_confusion(_prediction(rng, label, range(5)), label, 5, 255)))
    label = _label_map(rng, (40, 48), [1, 2, 3, 5], 6)                     # 4 and 6 never in the truth
    cm = _torch_confusion(_prediction(rng, label, [0, 1, 2, 3, 5, 6]), label, 7, 255)  # 6 predicted, 4 in neither
    cases.append(("7 classes: class 4 in neither prediction nor truth, class 6 only predicted", cm))
    voc = [0, 2, 7, 9, 15]
    label = _label_map(rng, (48, 48), voc[1:], 7)
    pred = _prediction(rng, label, [0, 2, 7, 15])
    pred[pred == 9] = 0                                                                   # 9 never predicted
    cm = _torch_confusion(pred, label, 21, 255)
    cases.append(("VOC's 21 classes, 16 absent, class 9 never predicted", cm))
    cases.append(("3 classes, a perfect prediction of classes 0 and 2",
                  np.array([[50, 0, 0], [0, 0, 0], [0, 0, 20]], np.int64)))
    return cases


def _torch_iou(cm):
    """(IoU per class, float64 with nan for a class in neither prediction nor truth; mIoU = nanmean)."""
    import torch

    c = torch.from_numpy(np.asarray(cm, dtype=np.float64))
    inter = torch.diagonal(c)
    iou = inter / (c.sum(0) + c.sum(1) - inter)
    return iou.numpy(), float(torch.nanmean(iou))


def _iou_variants(cm):
    c = cm.astype(np.float64)
    d, rows, cols = np.diag(c), c.sum(1), c.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        right = d / (rows + cols - d)
        ious = {"no_subtract": d / (rows + cols), "recall": d / rows, "precision": d / cols,
                "absent_zero": np.nan_to_num(right), "floor": np.floor(right)}
    mious = {"absent_zero": float(np.mean(np.nan_to_num(right))), "pooled": float(d.sum() / (rows + cols - d).sum()),
             "pixel_accuracy": float(d.sum() / c.sum())}
    return ious, mious


_IOU_HINTS = {
    "no_subtract": "the union counts the intersection twice: |pred = c or truth = c| = column sum + row sum - "
                   "diagonal (with an IoU of at most 1/2, a perfect prediction would score 0.5).",
    "recall": "this divides by the row sum, the pixels of true class c: that is the class's accuracy (recall). "
              "IoU divides by the union, row sum + column sum - diagonal.",
    "precision": "this divides by the column sum, the pixels predicted c: that is precision. IoU divides by the "
                 "union, row sum + column sum - diagonal.",
    "absent_zero": "a class in neither the prediction nor the truth scored 0: its IoU is 0 / 0, undefined: "
                   "return nan (VOC leaves it out of the mean; a class that is only predicted scores 0).",
    "floor": "integer division: the counts are ints, so // (or an integer array) rounds every IoU down to 0 or "
             "1: divide as floats (/).",
}
_MIOU_HINTS = {
    "absent_zero": "mIoU averaged over every class, counting absent ones as 0: average only the classes that "
                   "occur, np.nanmean(iou).",
    "pooled": "this pools the pixels of all classes, sum(diagonal) / sum(unions): mIoU is the mean of the "
              "per-class IoUs, each class counting once whatever its size.",
    "pixel_accuracy": "this is the pixel accuracy, trace / total: mIoU is the mean of the per-class IoUs.",
}


def _as_float(exercise, call, v, what):
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(())[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ExerciseWrong(f"Exercise {exercise}: {call} returned {what} {v!r} ({type(v).__name__}), "
                            "expected one number")
    return float(v)


@exercise_check("7.2")
def exercise_7_2(iou_scores):
    """iou_scores(cm) -> (IoU per class, mIoU) against torch: diag / (col sum + row sum - diag), torch.nanmean."""
    worst = 0.0
    cases = _iou_cases()
    for desc, cm in cases:
        call = f"iou_scores(cm ({cm.shape[0]}, {cm.shape[0]}) int64) [{desc}]"
        given = cm.copy()
        got = iou_scores(given)
        _unchanged("7.2", call, {"cm": cm}, {"cm": given})
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseWrong(f"Exercise 7.2: {call} returned {type(got).__name__}; expected a tuple (iou, miou)")
        iou, miou = got
        if isinstance(iou, (list, tuple)):
            iou = np.asarray(iou, dtype=np.float64)
        expected, e_miou = _torch_iou(cm)
        if isinstance(iou, np.ndarray) and iou.dtype.kind in "iub":
            raise ExerciseWrong(f"Exercise 7.2: IoU of {call} has dtype {iou.dtype}, expected float64 (ratios "
                                f"between 0 and 1, nan for an absent class).\n  Hint: {_IOU_HINTS['floor']}")
        ious, mious = _iou_variants(cm)
        known = _distinct({_IOU_HINTS[k]: v for k, v in ious.items()}, expected)
        if isinstance(iou, np.ndarray) and iou.shape == expected.shape and iou.dtype.kind == "f":
            if iou.dtype != np.float64:
                raise ExerciseWrong(f"Exercise 7.2: IoU of {call} has dtype {iou.dtype}, expected float64: divide "
                                    "counts converted with cm.astype(np.float64).")
            nan, got_nan = np.isnan(expected), np.isnan(iou)
            if (nan != got_nan).any():
                k = int(np.argmax(nan != got_nan))
                row, col = int(cm[k].sum()), int(cm[:, k].sum())
                hint = next((f"\n  Hint: {t}" for t, v in known.items() if np.array_equal(v, iou, equal_nan=True)),
                            "")
                if nan[k]:
                    why = (f"which is in neither the truth (row sum 0) nor the prediction (column sum 0): its IoU "
                           f"is 0 / 0, expected nan")
                else:
                    why = (f"which has {row} true and {col} predicted pixels: its union is not 0, expected IoU "
                           f"{expected[k]:.6g}")
                raise ExerciseWrong(f"Exercise 7.2: IoU of {call}: got {iou[k]:.6g} for class {k}, {why}.{hint}")
            finite = ~nan
            worst = max(worst, compare_arrays("7.2", f"IoU of {call}, the classes that occur",
                                              iou[finite], expected[finite], rtol=1e-12, atol=0.0,
                                              known_mistakes={t: v[finite] for t, v in known.items()
                                                              if np.shape(v) == expected.shape}))
        else:
            compare_arrays("7.2", f"IoU of {call}", iou, expected, rtol=1e-12, known_mistakes=known)
        miou = _as_float("7.2", call, miou, "mIoU")
        if math.isnan(miou):
            raise ExerciseWrong(f"Exercise 7.2: mIoU of {call} is nan, expected {e_miou:.6g}.\n  Hint: np.mean of an "
                                "array holding nan is nan: average the classes that occur, np.nanmean(iou).")
        if not math.isclose(miou, e_miou, rel_tol=1e-12, abs_tol=0.0):
            hint = next((f"\n  Hint: {_MIOU_HINTS[k]}" for k, v in mious.items()
                         if not math.isclose(v, e_miou, rel_tol=1e-12) and math.isclose(miou, v, rel_tol=1e-12)), "")
            present = int((~np.isnan(expected)).sum())
            raise ExerciseWrong(f"Exercise 7.2: mIoU of {call}: got {miou:.6g}, expected {e_miou:.6g}, the mean IoU "
                                f"of the {present} of {len(expected)} classes that occur; tolerance 1e-12 "
                                f"relative.{hint}")
        worst = max(worst, abs(miou - e_miou) / max(abs(e_miou), 1e-300))
    passed("7.2", f"per-class IoU and mIoU of {len(cases)} confusion matrices (absent classes, a class only "
                  "predicted, one never predicted, VOC's 21 classes) equal torch's", worst, "1e-12 relative")


# ---------------------------------------------------------------------------------------------
# 7.3 trimap accuracy


def _trimap_cases():
    """(description, pred, label, width, ignore_index)."""
    rng = np.random.default_rng(73)
    cases = []
    for shape, classes, n, width in (((40, 48), [1, 2, 3], 5, 3), ((48, 48), [1, 2, 3, 4, 5, 6], 7, 2),
                                     ((36, 44), [1, 2], 4, 0), ((48, 56), [1, 2, 3, 4], 6, 6)):
        label = _label_map(rng, shape, classes, n)
        cases.append((f"uint8 label {shape}, 255 on mixed borders, width={width}",
                      _prediction(rng, label, [0, *classes]), label, width, 255))
    label = _label_map(rng, (40, 40), [1, 2, 3], 5, ignore=-1, dtype=np.int64)
    cases.append(("int64 label (40, 40), ignore_index=-1, width=1", _prediction(rng, label, [0, 1, 2, 3], ignore=-1),
                  label, 1, -1))
    label = np.full((24, 30), 2, np.uint8)
    cases.append(("a label of one class only (24, 30), no boundary, width=3", _prediction(rng, label, [0, 1, 2]),
                  label, 3, 255))
    return cases


def _edges(label, both_sides=True, skip=None, wrap=False):
    """(H, W) bool: pixels whose label differs from a 4-neighbour's (both_sides=False: from the right or lower
    neighbour only); skip: a label value whose differences do not count; wrap: the last row's neighbour is the
    first row (and so for columns), as np.roll makes it."""
    import torch

    lab = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if wrap:
        down, right = lab != torch.roll(lab, -1, 0), lab != torch.roll(lab, -1, 1)
        if not both_sides:
            return down | right
        return down | right | (lab != torch.roll(lab, 1, 0)) | (lab != torch.roll(lab, 1, 1))
    dy, dx = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
    if skip is not None:
        dy &= (lab[1:] != skip) & (lab[:-1] != skip)
        dx &= (lab[:, 1:] != skip) & (lab[:, :-1] != skip)
    edge = torch.zeros(lab.shape, dtype=torch.bool)
    edge[:-1] |= dy
    edge[:, :-1] |= dx
    if both_sides:
        edge[1:] |= dy
        edge[:, 1:] |= dx
    return edge


def _dilate(edge, width, metric="euclidean", strict=False):
    """The pixels within `width` of an edge pixel: Euclidean (a disc-shaped kernel, by convolution) or
    Chebyshev (a square: max pooling)."""
    import torch
    import torch.nn.functional as F

    if width < 0:
        return torch.zeros_like(edge)
    r = int(math.floor(width))
    x = edge.double()[None, None]
    if metric == "square":
        return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    dist2 = d[:, None] ** 2 + d[None, :] ** 2
    disc = (dist2 < width ** 2) if strict else (dist2 <= width ** 2)
    return F.conv2d(x, disc.double()[None, None], padding=r)[0, 0] > 0.5


def _torch_band(label, width, ignore):
    """The trimap band of minideeplab.metrics.boundary_band, in torch: pixels within Euclidean distance `width`
    of a pixel whose label differs from a 4-neighbour's, ignored pixels left out."""
    import torch

    lab = torch.from_numpy(np.asarray(label, dtype=np.int64))
    return (_dilate(_edges(label), width) & (lab != ignore)).numpy()


def _band_accuracy(pred, label, band):
    return float(np.mean(pred[band] == label[band])) if band.any() else math.nan


def _trimap_variants(pred, label, width, ignore):
    import torch

    keep = (torch.from_numpy(np.asarray(label, dtype=np.int64)) != ignore)
    bands = {
        "pred_band": _dilate(_edges(pred), width) & keep,
        "ignored_counted": _dilate(_edges(label), width),
        "ignore_no_edge": _dilate(_edges(label, skip=ignore), width) & keep,
        "square": _dilate(_edges(label), width, "square") & keep,
        "strict": _dilate(_edges(label), width, strict=True) & keep,
        "plus_one": _dilate(_edges(label), width + 1) & keep,
        "minus_one": _dilate(_edges(label), width - 1) & keep,
        "half": _dilate(_edges(label), width / 2) & keep,
        "one_side": _dilate(_edges(label, both_sides=False), width) & keep,
        "roll": _dilate(_edges(label, wrap=True), width) & keep,
        "roll_one_side": _dilate(_edges(label, both_sides=False, wrap=True), width) & keep,
        "whole_image": keep,
    }
    return {k: _band_accuracy(pred, label, b.numpy()) for k, b in bands.items()}


_TRIMAP_HINTS = {
    "pred_band": "the band follows the prediction's boundaries: it must follow the ground truth's (label), or a "
                 "prediction that misses an object has no boundary there and its errors escape the band.",
    "ignored_counted": "the ignored pixels were scored (and count as wrong: no prediction equals ignore_index): "
                       "leave pixels with label == ignore_index out of the band.",
    "ignore_no_edge": "a pixel next to an ignored one is on a boundary: compare the labels as they are, "
                      "ignore_index included (in the data the ignored pixels are the object borders), and only "
                      "then leave the ignored pixels themselves out of the band.",
    "square": "the band is a square around each boundary pixel (max pooling, or a (2w+1) x (2w+1) box): it is "
              "every pixel within Euclidean distance `width`, a disc (e.g. scipy.ndimage.distance_transform_edt"
              "(~boundary) <= width).",
    "strict": "'within width pixels' includes a distance of exactly width: distance <= width, not < width "
              "(width 0 is the boundary pixels themselves).",
    "plus_one": "the band is one pixel too wide: the pixels at distance <= width from a boundary pixel "
                "(a boundary pixel is at distance 0).",
    "minus_one": "the band is one pixel too narrow: the pixels at distance <= width from a boundary pixel, "
                 "the boundary pixels included (distance 0).",
    "half": "width is the distance from the boundary (a radius), not the band's total width: distance <= width, "
            "not width / 2.",
    "one_side": "only one pixel of each differing pair was marked: a pixel is on the boundary when its label "
                "differs from any of its 4 neighbours, so both sides of a border are marked.",
    "roll": "np.roll wraps around: it compares the first row with the last (and the first column with the last), "
            "so pixels on the image's edge count as boundary where the opposite edge has another class. Compare "
            "neighbours inside the image only, e.g. label[1:] != label[:-1] marks both rows of each pair.",
    "roll_one_side": "np.roll wraps around (the first row is compared with the last, the first column with the "
                     "last), and only one pixel of each differing pair was marked: compare neighbours inside the "
                     "image only (label[1:] != label[:-1], ...) and mark both sides of a border.",
    "whole_image": "this is the pixel accuracy of the whole image: score only the pixels in the band around the "
                   "label's boundaries.",
}


@exercise_check("7.3")
def exercise_7_3(trimap_accuracy):
    """trimap_accuracy(pred, label, width, ignore_index) against torch: the accuracy inside the band of pixels
    within Euclidean distance `width` of the label's boundaries (a disc dilation by convolution)."""
    worst = 0.0
    cases = _trimap_cases()
    for desc, pred, label, width, ignore in cases:
        call = (f"trimap_accuracy(pred {_describe(pred)}, label {_describe(label)}, width={width}, "
                f"ignore_index={ignore}) [{desc}]")
        args = (pred.copy(), label.copy())
        got = _as_float("7.3", call, trimap_accuracy(*args, width, ignore_index=ignore), "accuracy")
        _unchanged("7.3", call, {"pred": pred, "label": label}, dict(zip(("pred", "label"), args)))
        band = _torch_band(label, width, ignore)
        expected = _band_accuracy(pred, label, band)
        if math.isnan(expected):
            if not math.isnan(got):
                raise ExerciseWrong(f"Exercise 7.3: {call}: got {got:.6g}, expected nan. The label map has no "
                                    "boundary, so the band is empty and there is nothing to score: return nan "
                                    "(as np.mean of an empty array, or float('nan')).")
            continue
        variants = _trimap_variants(pred, label, width, ignore)
        if math.isnan(got) or not math.isclose(got, expected, rel_tol=1e-12, abs_tol=0.0):
            hint = next((f"\n  Hint: {_TRIMAP_HINTS[k]}" for k, v in variants.items()
                         if not math.isnan(v) and v != expected and math.isclose(got, v, rel_tol=1e-12)), "")
            right = int((pred[band] == label[band]).sum())
            raise ExerciseWrong(f"Exercise 7.3: {call}: got {got:.6g}, expected {expected:.6g}: the band (pixels "
                                f"within {width} px of the label's boundaries, ignored ones left out) holds "
                                f"{int(band.sum())} of the {label.size} pixels, {right} of them predicted right; "
                                f"tolerance 1e-12 relative.{hint}")
        worst = max(worst, abs(got - expected) / expected if expected else abs(got))
    passed("7.3", f"trimap accuracies of {len(cases)} label maps (widths 0 to 6, 255 borders, ignore_index=-1, no "
                  "boundary at all) equal torch's disc-dilated band", worst, "1e-12 relative")
