"""DeepLab's training augmentation on NumPy arrays: random scale (0.5-2.0), crop with padding (image 0,
label 255 so the padding is ignored by the loss), horizontal flip. Each function takes an explicit
numpy Generator, so a seeded run is reproducible.

image: (H, W, 3) uint8, label: (H, W) uint8 (255 = ignore).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def _check(fn, image, label, rng=None):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{fn}: image must be a uint8 array of shape (H, W, 3), got {got}")
    if not isinstance(label, np.ndarray) or label.ndim != 2 or label.dtype != np.uint8:
        got = f"shape {label.shape}, dtype {label.dtype}" if isinstance(label, np.ndarray) else type(label).__name__
        raise ValueError(f"{fn}: label must be a uint8 array of shape (H, W), got {got}")
    if image.shape[:2] != label.shape:
        raise ValueError(f"{fn}: image is {image.shape[:2]} but label is {label.shape}; they must be the same (H, W)")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")


def resize(image, label, size):
    """Resize to size = (H, W): the image bilinearly, the label by nearest neighbour (no new classes)."""
    from PIL import Image

    _check("resize", image, label)
    H, W = size
    if (H, W) == label.shape:
        return image, label
    im = np.asarray(Image.fromarray(image).resize((W, H), Image.Resampling.BILINEAR))
    lb = np.asarray(Image.fromarray(label).resize((W, H), Image.Resampling.NEAREST))
    return im, lb


def random_scale(image, label, rng, scale_range=(0.5, 2.0)):
    """Resize both by one factor drawn uniformly from scale_range."""
    _check("random_scale", image, label, rng)
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"random_scale: scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
    s = rng.uniform(lo, hi)
    H, W = label.shape
    return resize(image, label, (max(1, int(round(H * s))), max(1, int(round(W * s)))))


def random_crop(image, label, size, rng, image_fill=0, label_fill=IGNORE_INDEX):
    """A crop of size = (h, w) at a uniformly random place; first pads the bottom and right, the image with
    image_fill and the label with label_fill (ignored), where the image is smaller than the crop."""
    _check("random_crop", image, label, rng)
    h, w = size
    if not (int(h) == h > 0 and int(w) == w > 0):
        raise ValueError(f"random_crop: size must be (h, w) positive ints, got {size!r}")
    H, W = label.shape
    ph, pw = max(h - H, 0), max(w - W, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=image_fill)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=label_fill)
    H, W = label.shape
    y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
    return image[y:y + h, x:x + w], label[y:y + h, x:x + w]


def random_flip(image, label, rng, p: float = 0.5):
    """Mirror both left-right with probability p."""
    _check("random_flip", image, label, rng)
    if rng.uniform() < p:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def train_transform(image, label, rng, crop_size=(128, 128), scale_range=(0.5, 2.0)):
    """DeepLab's augmentation: random scale, random crop of crop_size (padded with 0 / 255), random flip.
    Returns contiguous arrays (crop_size + (3,)) uint8 and crop_size uint8."""
    image, label = random_scale(image, label, rng, scale_range)
    image, label = random_crop(image, label, crop_size, rng)
    image, label = random_flip(image, label, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
