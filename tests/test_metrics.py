"""Segmentation metrics: hand-computed cases, an independent torch reference, bad input, the trimap."""

import re

import numpy as np
import pytest
import torch

from minideeplab.metrics import (boundary_band, class_accuracy, class_iou, confusion_matrix, frequency_weighted_iou,
                                 mean_accuracy, mean_iou, pixel_accuracy, scores, trimap_accuracy, trimap_confusion)

# 3 classes, one ignored pixel; every number below worked out by hand
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])


def test_hand_computed_case():
    cm = confusion_matrix(PRED, TARGET, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])  # rows: target, columns: pred
    assert cm.dtype == np.int64
    assert pixel_accuracy(cm) == pytest.approx(4 / 5)                      # the ignored pixel is not counted
    np.testing.assert_allclose(class_accuracy(cm), [1 / 2, 1, 1])
    assert mean_accuracy(cm) == pytest.approx(5 / 6)
    np.testing.assert_allclose(class_iou(cm), [1 / 2, 2 / 3, 1])           # class 0: 1 / (2 + 1 - 1)
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert frequency_weighted_iou(cm) == pytest.approx(2 / 5 * 1 / 2 + 2 / 5 * 2 / 3 + 1 / 5 * 1)
    assert scores(cm)["mean_iou"] == pytest.approx(mean_iou(cm))


def test_absent_classes():
    # class 2 never occurs: nan and left out of the means; class 3 is only predicted: IoU 0, counted
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 3, 1, 1])
    cm = confusion_matrix(pred, target, 4)
    iou = class_iou(cm)
    assert np.isnan(iou[2]) and iou[3] == 0
    assert mean_iou(cm) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert np.isnan(class_accuracy(cm)[3]) and mean_accuracy(cm) == pytest.approx((1 / 2 + 1) / 2)
    empty = confusion_matrix(np.zeros(2, int), np.full(2, 255), 2)  # everything ignored
    assert empty.sum() == 0 and np.isnan(pixel_accuracy(empty)) and np.isnan(mean_iou(empty))


def _torch_reference(pred, target, C):
    """The same quantities computed another way: one-hot matrices multiplied, sets compared class by class."""
    p, t = torch.from_numpy(pred).long().flatten(), torch.from_numpy(target).long().flatten()
    keep = t != 255
    p, t = p[keep], t[keep]
    cm = torch.nn.functional.one_hot(t, C).T.double() @ torch.nn.functional.one_hot(p, C).double()
    iou, acc = [], []
    for c in range(C):
        inter = ((p == c) & (t == c)).sum().item()
        union = ((p == c) | (t == c)).sum().item()
        iou.append(inter / union if union else float("nan"))
        acc.append(inter / (t == c).sum().item() if (t == c).any() else float("nan"))
    iou = torch.tensor(iou, dtype=torch.float64)
    freq = torch.bincount(t, minlength=C).double() / len(t)
    fw = (freq[freq > 0] * iou[freq > 0]).sum().item()
    return cm.long().numpy(), (p == t).double().mean().item(), np.nanmean(acc), iou.numpy(), np.nanmean(iou), fw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_torch_reference(seed):
    rng = np.random.default_rng(seed)
    C = 7
    target = rng.integers(0, C, (3, 20, 24)).astype(np.uint8)
    target[rng.uniform(size=target.shape) < 0.1] = 255
    # a prediction right 60% of the time, with class 6 never predicted and class 5 never in the target
    pred = np.where(rng.uniform(size=target.shape) < 0.6, target, rng.integers(0, 6, target.shape)).astype(np.int64)
    pred[pred == 255] = 0
    pred[pred == 6] = 1
    target[target == 5] = 4
    cm = confusion_matrix(pred, target, C)
    ref_cm, ref_pa, ref_ma, ref_iou, ref_miou, ref_fw = _torch_reference(pred, target, C)
    np.testing.assert_array_equal(cm, ref_cm)
    np.testing.assert_array_equal(cm, sum(confusion_matrix(p, t, C) for p, t in zip(pred, target)))  # additive
    assert pixel_accuracy(cm) == pytest.approx(ref_pa, abs=1e-12)
    assert mean_accuracy(cm) == pytest.approx(ref_ma, abs=1e-12)
    np.testing.assert_allclose(class_iou(cm), ref_iou, atol=1e-12)
    assert mean_iou(cm) == pytest.approx(ref_miou, abs=1e-12)
    assert frequency_weighted_iou(cm) == pytest.approx(ref_fw, abs=1e-12)


def test_accepts_torch_tensors_and_int_dtypes():
    cm = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3)
    np.testing.assert_array_equal(cm, confusion_matrix(PRED.astype(np.uint8), TARGET.astype(np.uint8), 3))


@pytest.mark.parametrize("pred, target, num_classes, message", [
    (PRED[:, :2], TARGET, 3, "pred has shape (2, 2) but target has (2, 3)"),
    (PRED.astype(np.float32), TARGET, 3, "pred must hold integer class indices, got dtype float32"),
    (PRED, TARGET.astype(np.float64), 3, "target must hold integer class indices, got dtype float64"),
    (PRED, TARGET > 0, 3, "target must hold integer class indices, got dtype bool"),
    (PRED, np.where(TARGET == 2, 7, TARGET), 3, "target has values [7] outside 0..2 or 255"),
    (PRED, np.where(TARGET == 2, -1, TARGET), 3, "target has values [-1]"),
    (np.where(PRED == 2, 255, PRED), TARGET, 3, "pred has values [255] outside 0..2"),
    (PRED, TARGET, 0, "num_classes must be an int >= 1"),
    (PRED, TARGET, 2.5, "num_classes must be an int >= 1"),
])
def test_bad_input_names_the_argument(pred, target, num_classes, message):
    with pytest.raises(ValueError, match=re.escape(f"confusion_matrix: {message}")):
        confusion_matrix(pred, target, num_classes)


@pytest.mark.parametrize("fn", [pixel_accuracy, mean_accuracy, class_iou, mean_iou, frequency_weighted_iou])
@pytest.mark.parametrize("cm", [np.ones((3, 2), np.int64), np.ones((3, 3)), -np.ones((2, 2), np.int64)])
def test_bad_confusion_matrix(fn, cm):
    with pytest.raises(ValueError, match=f"{fn.__name__}: cm must be a square confusion matrix"):
        fn(cm)


def test_boundary_band_by_hand():
    labels = np.zeros((5, 6), np.int64)
    labels[:, 3:] = 1                          # a vertical border between columns 2 and 3
    band0 = boundary_band(labels, 0)
    assert band0[:, [2, 3]].all() and band0.sum() == 10
    band1 = boundary_band(labels, 1)
    assert band1[:, 1:5].all() and band1.sum() == 20
    labels[0, 0] = 255                         # ignored pixels are never in the band
    assert not boundary_band(labels, 10)[0, 0]
    assert not boundary_band(np.zeros((4, 4), np.int64), 3).any()


def test_trimap_confusion_matches_trimap_accuracy():
    rng = np.random.default_rng(0)
    target = np.zeros((2, 24, 24), np.int64)
    target[0, 6:18, 4:14] = 1
    target[1, 3:20, 10:22] = 2
    target[1, 12, :] = 255
    pred = np.where(rng.uniform(size=target.shape) < 0.8, target, rng.integers(0, 3, target.shape))
    pred[pred == 255] = 0
    widths = [0, 1, 3, 6]
    tcm = trimap_confusion(pred, target, widths, 3)
    assert tcm.shape == (4, 3, 3)
    # pooled over the two images: the sum of the counts, not the mean of the two accuracies
    for k, w in enumerate(widths):
        band = [boundary_band(t, w) for t in target]
        right = sum(int((p[b] == t[b]).sum()) for p, t, b in zip(pred, target, band))
        assert tcm[k].sum() == sum(int(b.sum()) for b in band)
        assert pixel_accuracy(tcm[k]) == pytest.approx(right / tcm[k].sum())
    np.testing.assert_allclose([pixel_accuracy(c) for c in trimap_confusion(pred[0], target[0], widths, 3)],
                               trimap_accuracy(pred[0], target[0], widths))
    assert (np.diff(tcm.sum(axis=(1, 2))) >= 0).all()  # wider bands hold more pixels
    with pytest.raises(ValueError, match="trimap_confusion: pred and target must both be"):
        trimap_confusion(pred[0], target, widths, 3)
    with pytest.raises(ValueError, match="trimap_confusion: num_classes must be an int >= 1, got 0"):
        trimap_confusion(pred, target, widths, 0)
    with pytest.raises(ValueError, match="trimap_confusion: target must hold integer class indices"):
        trimap_confusion(pred, target.astype(np.float32), widths, 3)


def test_trimap_accuracy_perfect_and_shifted():
    target = np.zeros((20, 20), np.int64)
    target[5:15, 5:15] = 1
    np.testing.assert_array_equal(trimap_accuracy(target, target, [1, 4]), [1.0, 1.0])
    shifted = np.roll(target, 2, axis=1)      # a border two pixels off: worst in the narrowest band
    acc = trimap_accuracy(shifted, target, [0, 2, 8])
    assert acc[0] < acc[1] < acc[2] < 1
