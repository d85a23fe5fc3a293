"""Real photographs (the ones scikit-image ships, no download) with region labels and coarse,
network-like class probabilities: inputs for the dense CRF's tests, benchmark and notebook when no
trained model's output is at hand."""

from __future__ import annotations

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")


def photograph(name: str = "coffee", size: tuple[int, int] | None = None) -> np.ndarray:
    """A photograph shipped with scikit-image, uint8 (H, W, 3). With size=(H, W): the centre crop of that
    aspect ratio, resized (anti-aliased) to exactly that size."""
    import skimage.data
    import skimage.transform

    if name not in PHOTOS:
        raise ValueError(f"photograph: name must be one of {', '.join(PHOTOS)}, got {name!r}")
    image = np.asarray(getattr(skimage.data, name)())[..., :3]
    if size is None:
        return np.ascontiguousarray(image)
    H, W = size
    h, w = image.shape[:2]
    scale = min(h / H, w / W)  # the largest crop with the target's aspect ratio
    ch, cw = int(round(H * scale)), int(round(W * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    if (ch, cw) == (H, W):
        return np.ascontiguousarray(crop)
    out = skimage.transform.resize(crop, (H, W), order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def region_labels(image: np.ndarray, n_labels: int = 21, compactness: float = 10.0) -> np.ndarray:
    """(H, W) int64 labels in [0, n_labels): SLIC superpixels of the image, about n_labels of them, so that
    label borders follow the photograph's edges as object borders do. Deterministic."""
    from skimage.segmentation import slic

    seg = slic(image, n_segments=n_labels, compactness=compactness, start_label=0, enforce_connectivity=True)
    return (seg % n_labels).astype(np.int64)


def coarse_probs(labels: np.ndarray, n_labels: int, stride: int = 8, confidence: float = 4.0,
                 noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """Class probabilities (n_labels, H, W) float32 that look like a network's at output stride `stride`:
    the one-hot labels averaged over stride x stride blocks (blurred boundaries), upsampled bilinearly,
    turned into logits confidence * log(fraction) plus Gaussian noise at the coarse resolution."""
    import torch

    H, W = labels.shape
    rng = np.random.default_rng(seed)
    onehot = torch.from_numpy((labels[None] == np.arange(n_labels)[:, None, None]).astype(np.float32))
    coarse = torch.nn.functional.avg_pool2d(onehot[None], stride, stride, ceil_mode=True)
    logits = confidence * torch.log(coarse + 1e-2)
    logits = logits + noise * torch.from_numpy(rng.standard_normal(coarse.shape, dtype=np.float32))
    up = torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    return torch.softmax(up[0], dim=0).numpy()
