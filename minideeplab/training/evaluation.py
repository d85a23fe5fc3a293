"""Inference and scores: class probabilities of one image (multi-scale, flipped), a model scored on a data
set from one confusion matrix summed over it (VOC's way), label maps and overlays written for image files.
The model: a torch module, or anything with its interface (eval(), parameters() for the dtype,
config.output_stride, model(x (N, 3, H, W) tensor) -> {"out": (N, C, H, W) logits tensor})."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minideeplab.data.transforms import IGNORE_INDEX
from minideeplab.data.voc import read_image, voc_palette
from minideeplab.metrics import class_iou, confusion_matrix, mean_accuracy, mean_iou, pixel_accuracy, trimap_confusion
from minideeplab.training.data import to_tensor

TRIMAP_WIDTHS = (1, 2, 4, 8, 16)


@torch.no_grad()
def predict(model, image: np.ndarray, scales=(1.0,), flip: bool = False, device="cpu") -> torch.Tensor:
    """Class probabilities for one (H, W, 3) uint8 image -> (C, H, W) float32 on the CPU: the mean of the
    softmax over the scales (and, with flip, the mirror images'). Each input is padded at the bottom and right
    to a multiple of the model's output stride (with the mean colour, 0 after normalisation) and the logits are
    cropped back before they are resized to (H, W)."""
    model.eval()
    weight = next(model.parameters(), None)  # the model's dtype (float32 for a model without parameters)
    x = to_tensor(image)[None].to(device=device, dtype=torch.float32 if weight is None else weight.dtype)
    H, W = x.shape[-2:]
    stride = getattr(getattr(model, "config", None), "output_stride", 1)
    total = 0
    for s in scales:
        h, w = max(1, round(H * s)), max(1, round(W * s))
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        for mirror in ((False, True) if flip else (False,)):
            xm = xs.flip(-1) if mirror else xs
            logits = model(F.pad(xm, (0, -w % stride, 0, -h % stride)))["out"][..., :h, :w]
            logits = logits.flip(-1) if mirror else logits
            if (h, w) != (H, W):
                logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            total = total + logits.softmax(1)
    return (total / (len(scales) * (2 if flip else 1)))[0].float().cpu()


def evaluate(model, dataset, classes, scales=(1.0,), flip=False, widths=TRIMAP_WIDTHS, device="cpu",
             quiet=False) -> dict:
    """Score a model on a data set of (image (H, W, 3) uint8, label (H, W)) pairs, full images, from one
    confusion matrix summed over the set (VOC's way) -> ``scores``."""
    cm, trimap = confusions(model, dataset, range(len(dataset)), len(classes), scales, flip, widths, device, quiet)
    return scores(cm, trimap, classes, widths, len(dataset))


def confusions(model, dataset, indices, C, scales=(1.0,), flip=False, widths=TRIMAP_WIDTHS, device="cpu",
               quiet=True):
    """(confusion matrix (C, C), trimap confusions (len(widths), C, C)) summed over dataset[i], i in indices."""
    from tqdm import tqdm

    cm = np.zeros((C, C), np.int64)
    trimap = np.zeros((len(widths), C, C), np.int64)
    for i in tqdm(indices, desc="eval", unit="img", disable=not _progress(quiet), leave=False):
        image, label = dataset[i]
        pred = predict(model, image, scales, flip, device).argmax(0).numpy()
        cm += confusion_matrix(pred, label, C, IGNORE_INDEX)
        trimap += trimap_confusion(pred, label, widths, C, IGNORE_INDEX)
    return cm, trimap


def scores(cm, trimap, classes, widths, images) -> dict:
    """A confusion matrix (C, C) and trimap confusions (len(widths), C, C) -> {"miou", "pixel_accuracy",
    "mean_accuracy", "per_class_iou" {class: IoU or nan}, "trimap_accuracy" {width: pixel accuracy within
    that many pixels of a boundary}, "images"}."""
    return {"miou": mean_iou(cm), "pixel_accuracy": pixel_accuracy(cm), "mean_accuracy": mean_accuracy(cm),
            "per_class_iou": dict(zip(classes, class_iou(cm).tolist())),
            "trimap_accuracy": {str(w): pixel_accuracy(t) for w, t in zip(widths, trimap)},
            "images": images}


def segment(model, images, out, classes=None, scales=(1.0,), flip=False, crf=False, alpha=0.5, device="cpu",
            quiet=False) -> list[Path]:
    """For each image file write out/<stem>.png (the class map as a VOC palette PNG) and
    out/<stem>_overlay.png (the image blended with the class colours, alpha the colours' weight).
    crf: refine the probabilities with the dense CRF (scratch.crf.dense_crf, DeepLab v2's parameters: its
    defaults). Returns the written paths."""
    from PIL import Image
    from tqdm import tqdm

    paths = [Path(p) for p in images]
    stems = {}
    for p in paths:
        if p.stem in stems:
            raise ValueError(f"segment: {stems[p.stem]} and {p} would both write {p.stem}.png; rename one")
        stems[p.stem] = p
    if not 0 <= alpha <= 1:
        raise ValueError(f"segment: alpha must be in [0, 1], got {alpha!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    written = []
    for p in tqdm(paths, desc="segment", unit="img", disable=not _progress(quiet)):
        image = read_image(p)
        probs = predict(model, image, scales, flip, device).numpy()
        if crf:
            from minideeplab.scratch.crf import dense_crf

            probs = dense_crf(probs / probs.sum(0, keepdims=True), image)
        pred = probs.argmax(0).astype(np.uint8)
        label = Image.fromarray(pred, mode="P")
        label.putpalette(palette.tobytes())
        overlay = ((1 - alpha) * image + alpha * palette[pred]).round().astype(np.uint8)
        for path, im in ((out / f"{p.stem}.png", label), (out / f"{p.stem}_overlay.png", Image.fromarray(overlay))):
            im.save(path)
            written.append(path)
    return written


def _progress(quiet):
    return not quiet and sys.stderr.isatty()
