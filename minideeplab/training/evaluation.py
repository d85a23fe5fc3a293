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
from minideeplab.data.cityscapes import palette_of
from minideeplab.data.voc import read_image
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


class NumpyModel:
    """A scratch model (``minideeplab.scratch.deeplab.DeepLab``) behind the interface ``predict`` reads (eval(),
    parameters() for the dtype, model(x) -> {"out": logits tensor}): the NumPy backend of ``segment``. The input
    tensor goes to NumPy and the logits come back; nothing else is torch. like: the torch model it stands for;
    its ``config`` (or none: torchvision's modules) decides, as for it, whether ``predict`` pads the input to a
    multiple of the output stride (a torchvision model takes any size, and padding would change its image
    pooling)."""

    def __init__(self, model, like=None):
        self.model, self.config = model, getattr(like, "config", None)

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        return iter([torch.empty(0, dtype=torch.float32)])

    def __call__(self, x):
        return {"out": torch.from_numpy(self.model(np.ascontiguousarray(x.numpy(), dtype=np.float32)))}


def segment(model, images, out, classes=None, scales=(1.0,), flip=False, crf=False, alpha=0.5, device="cpu",
            quiet=False, resize=None) -> list[Path]:
    """For each image file write out/<stem>.png (the class map as a palette PNG, VOC's colours or Cityscapes', at the image's size) and
    out/<stem>_overlay.png (the image blended with the class colours, alpha the colours' weight, with a legend of
    the classes present when ``classes`` names them). resize: the shorter side the image is resized to before
    the model sees it (torchvision's preprocessing of its published weights: 520), the probabilities resized
    back; None: the image as it is. crf: refine the probabilities with the dense CRF (scratch.crf.dense_crf,
    DeepLab v2's parameters: its defaults), at the image's size. Returns the written paths."""
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
    palette = palette_of(classes)
    written = []
    for p in tqdm(paths, desc="segment", unit="img", disable=not _progress(quiet)):
        image = read_image(p)
        H, W = image.shape[:2]
        seen = image
        if resize is not None:
            h, w = _shorter_side(H, W, resize)
            seen = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        probs = predict(model, seen, scales, flip, device)
        if seen is not image:
            probs = F.interpolate(probs[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        probs = probs.numpy()
        if crf:
            from minideeplab.scratch.crf import dense_crf

            probs = dense_crf(probs / probs.sum(0, keepdims=True), image)
        pred = probs.argmax(0).astype(np.uint8)
        label = Image.fromarray(pred, mode="P")
        label.putpalette(palette.tobytes())
        overlay = ((1 - alpha) * image + alpha * palette[pred]).round().astype(np.uint8)
        if classes is not None:
            overlay = with_legend(overlay, [(classes[c], palette[c]) for c in np.unique(pred)])
        for path, im in ((out / f"{p.stem}.png", label), (out / f"{p.stem}_overlay.png", Image.fromarray(overlay))):
            im.save(path)
            written.append(path)
    return written


def _shorter_side(H, W, size):
    """(h, w) with the shorter side ``size`` and the other in proportion (rounded down, as torchvision)."""
    if H <= W:
        return size, int(size * W / H)
    return int(size * H / W), size


def with_legend(image: np.ndarray, entries, row=16) -> np.ndarray:
    """(H, W, 3) uint8 -> the image over a white strip that lists each (name, colour): a swatch and the name,
    as many to a line as fit."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    H, W = image.shape[:2]
    widths = [row + 4 + int(font.getlength(name)) + 12 for name, _ in entries]
    lines, x = 1, 4
    for w in widths:
        if x + w > W and x > 4:
            lines, x = lines + 1, 4
        x += w
    strip = Image.new("RGB", (W, lines * row + 4), "white")
    draw = ImageDraw.Draw(strip)
    x, y = 4, 2
    for (name, colour), w in zip(entries, widths):
        if x + w > W and x > 4:
            x, y = 4, y + row
        draw.rectangle([x, y + 2, x + row - 4, y + row - 2], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + row, y + 2), name, fill="black", font=font)
        x += w
    return np.concatenate([image, np.asarray(strip)], axis=0)


def _progress(quiet):
    return not quiet and sys.stderr.isatty()
