"""A student's own photograph through torchvision's published DeepLab weights (notebook 10's last section), run by
the from-scratch NumPy model: exactly what ``minideeplab segment --weights torchvision:ARCH PHOTO`` does (the same
``training.evaluation.segment``, torchvision's preprocessing, the VOC legend), returned as arrays to show.

The weights are read from torchvision's hub cache only when they are there: nothing is downloaded unless asked
(``download=True``); ``weights_help`` says where the file goes and how to get it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["weights_help", "segment_photo"]


def weights_help(arch: str) -> str:
    """Where ``arch``'s weights file goes and how to get it (a few lines)."""
    from torchvision.models import segmentation

    from minideeplab.pretrained import ARCHS, weights_file

    path = weights_file(arch)
    url = getattr(segmentation, ARCHS[arch]).COCO_WITH_VOC_LABELS_V1.url
    return (f"torchvision's {arch} weights are not in the hub cache: {path.name} goes in {path.parent} "
            f"(TORCH_HOME moves the cache). To get it, on a machine that is online, run once\n"
            f"    minideeplab segment --weights torchvision:{arch} PHOTO.jpg\n"
            f"or set download = True here, or download {url} into that folder.")


def segment_photo(photo, arch: str = "lraspp_mobilenet_v3_large", backend: str = "numpy", alpha: float = 0.5,
                  download: bool = False) -> dict:
    """``photo`` (an image file, or an (H, W, 3) uint8 array) labelled with torchvision's published ``arch`` weights
    (COCO with the 20 VOC classes) by the from-scratch NumPy model (backend "numpy") or the torch module ("torch"),
    as ``minideeplab segment --weights torchvision:ARCH`` labels it (the shorter side resized to 520 pixels, the
    labels at the photo's size) -> {"labels": (H, W) uint8 VOC class indices, "overlay": (H', W, 3) uint8, the
    photo blended with the class colours over a legend of the classes present, "classes": their names}.

    The weights come from torchvision's hub cache; absent, WeightsMissing says where to put them (and nothing is
    downloaded unless ``download``)."""
    from PIL import Image

    from minideeplab.interop import from_torchvision
    from minideeplab.pretrained import ARCHS, RESIZE, WeightsMissing, load_torchvision, weights_file
    from minideeplab.training.evaluation import NumpyModel, segment

    if arch not in ARCHS:
        raise ValueError(f"segment_photo: arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"segment_photo: backend must be 'numpy' or 'torch', got {backend!r}")
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"segment_photo: photo must be an image file or an (H, W, 3) uint8 array, got an "
                             f"array {photo.shape} {photo.dtype}")
    elif not Path(photo).is_file():
        raise FileNotFoundError(f"segment_photo: {photo} is not a file")
    if not download and not weights_file(arch).is_file():
        raise WeightsMissing(weights_help(arch))
    module, classes = load_torchvision(arch, None, "torch")
    model = NumpyModel(from_torchvision(module), like=module) if backend == "numpy" else module
    with tempfile.TemporaryDirectory(prefix="minideeplab-photo-") as tmp:
        tmp = Path(tmp)
        path = tmp / "photo.png" if isinstance(photo, np.ndarray) else Path(photo)
        if isinstance(photo, np.ndarray):
            Image.fromarray(photo).save(path)
        segment(model, [path], tmp / "out", classes, alpha=alpha, quiet=True, resize=RESIZE)
        labels = np.asarray(Image.open(tmp / "out" / f"{path.stem}.png"))
        overlay = np.asarray(Image.open(tmp / "out" / f"{path.stem}_overlay.png").convert("RGB"))
    return {"labels": labels, "overlay": overlay, "classes": [classes[c] for c in np.unique(labels)]}
