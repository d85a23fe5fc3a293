"""Published weights for real photographs: torchvision's DeepLabV3 and LR-ASPP trained on COCO with the 20 PASCAL
VOC classes (and background), through torchvision's own weights API and hub cache, as the torch module or the
from-scratch NumPy model.

On a machine that is online the first use downloads the file into ``$TORCH_HOME/hub/checkpoints/`` (torchvision's
cache, ``~/.cache/torch`` by default); after that, and offline, the file is read from there (torch does not check
its hash then). With ``MINIDEEPLAB_OFFLINE=1`` in the environment no download is tried.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minideeplab.interop import from_torchvision

__all__ = ["ARCHS", "VOC_CLASSES", "RESIZE", "WeightsMissing", "weights_file", "load_torchvision"]

# torchvision's segmentation builders -> their weights enum (COCO_WITH_VOC_LABELS_V1)
ARCHS = {"deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights", "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights",
         "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
         "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights"}
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
RESIZE = 520  # torchvision's preprocessing for these weights: the shorter side resized to 520 pixels


class WeightsMissing(FileNotFoundError):
    """The weights file is not in the hub cache and could not be downloaded."""


def _check_arch(fn, arch):
    if arch not in ARCHS:
        raise ValueError(f"{fn}: the architecture must be one of {', '.join(ARCHS)}, got {arch!r}")


def _weights(arch):
    from torchvision.models import segmentation

    return getattr(segmentation, ARCHS[arch]).COCO_WITH_VOC_LABELS_V1


def weights_file(arch) -> Path:
    """Where torchvision's hub cache keeps ``arch``'s published weights (the file need not exist)."""
    _check_arch("weights_file", arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights(arch).url)


def _state_dict(arch, path):
    if path is not None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or one that holds more than tensors
            raise ValueError(f"load_torchvision: {path} is not a state_dict torch can load ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    target = weights_file(arch)
    if not target.exists() and os.environ.get("MINIDEEPLAB_OFFLINE"):
        raise WeightsMissing(f"{target.name} is not in {target.parent} (MINIDEEPLAB_OFFLINE is set, so no "
                             f"download was tried): put the file there, from {_weights(arch).url}")
    try:
        return _weights(arch).get_state_dict(progress=False)
    except OSError as e:  # URLError, a refused connection, a broken file
        raise WeightsMissing(f"{target.name} is not in {target.parent} and could not be downloaded ({e}): on a "
                             f"machine that is online, run this once, or put the file there, from "
                             f"{_weights(arch).url}") from None


def load_torchvision(arch, path=None, backend="numpy"):
    """(model, class names) for torchvision's published ``arch`` weights (path=None: through the hub cache) or a
    local state_dict file of that architecture. backend "torch": the torchvision module (eval); "numpy": the
    scratch model holding the same weights (``interop.from_torchvision``)."""
    from torchvision.models import segmentation

    fn = "load_torchvision"
    _check_arch(fn, arch)
    if backend not in ("numpy", "torch"):
        raise ValueError(f"{fn}: backend must be 'numpy' or 'torch', got {backend!r}")
    state = _state_dict(arch, path)
    aux = any(k.startswith("aux_classifier.") for k in state)
    kw = {} if arch.startswith("lraspp") else {"aux_loss": aux}
    module = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=len(VOC_CLASSES), **kw)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{fn}: {path or weights_file(arch)} is not a {arch} state_dict: {e}") from None
    module.eval()
    return (module if backend == "torch" else from_torchvision(module)), list(VOC_CLASSES)
