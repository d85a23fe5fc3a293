"""A toy street scene with its label map, and the resolution / field-of-view picture of notebook 01."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

from minideeplab.scratch.receptive import receptive_field

CLASSES = ("background", "road", "car", "person")
COLORS = np.array([[0.75, 0.85, 0.95], [0.45, 0.45, 0.45], [0.85, 0.15, 0.15], [0.15, 0.55, 0.2]])


def toy_scene(size: int = 128, seed: int = 0):
    """A synthetic street scene. Returns image (size, size, 3) float in [0, 1] and labels (size, size)
    int64 with class ids into ``CLASSES``. Wheels and windows are labelled "car": a pixel's class
    depends on the object around it, not on its own colour."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    labels = np.zeros((size, size), dtype=np.int64)
    labels[yy > 0.62] = 1                                              # road
    body = (xx > 0.12) & (xx < 0.62) & (yy > 0.45) & (yy < 0.66)
    roof = (xx > 0.22) & (xx < 0.5) & (yy > 0.32) & (yy <= 0.45)
    wheels = ((xx - 0.22) ** 2 + (yy - 0.67) ** 2 < 0.06 ** 2) | ((xx - 0.52) ** 2 + (yy - 0.67) ** 2 < 0.06 ** 2)
    car = body | roof | wheels
    labels[car] = 2
    person = (((xx - 0.8) ** 2 + (yy - 0.36) ** 2 < 0.04 ** 2)
              | ((np.abs(xx - 0.8) < 0.045) & (yy > 0.4) & (yy < 0.6))
              | ((np.abs(xx - 0.8) < 0.035) & (yy >= 0.6) & (yy < 0.75)))
    labels[person] = 3

    image = COLORS[labels].copy()
    image[wheels] = 0.08                                               # black tyres: colour says "road"
    image[roof & (yy > 0.35) & (np.abs(xx - 0.36) > 0.01)] = [0.55, 0.75, 0.9]  # windows: colour says "sky"
    rng = np.random.default_rng(seed)
    image += rng.normal(0, 0.04, image.shape)
    return np.clip(image, 0, 1), labels


def _show_labels(ax, labels):
    ax.imshow(labels, cmap=ListedColormap(COLORS), vmin=-0.5, vmax=len(CLASSES) - 0.5, interpolation="nearest")
    ax.set_axis_off()


def plot_scene(image, labels, figsize=(8, 4)):
    """Image beside its label map (one class per pixel). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    a.imshow(image)
    a.set_title("input image")
    a.set_axis_off()
    _show_labels(b, labels)
    b.set_title("semantic segmentation: a class for every pixel")
    b.legend(handles=[Patch(color=c, label=n) for c, n in zip(COLORS, CLASSES)], loc="upper right", fontsize=8)
    return fig


def plot_resolution_vs_context(image, labels, stacks: dict, point=(70, 28), figsize=None):
    """For each named stack of (kernel, stride, rate) layers: top, the receptive field of the output
    pixel nearest ``point`` (row, col) drawn on the image; bottom, the labels as the network's output
    grid can hold them (one label per output pixel, sampled at ``start + i*jump``, shown at full size).
    Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(stacks)
    fig, axes = plt.subplots(2, n, figsize=figsize or (3 * n, 6.2), layout="constrained", squeeze=False)
    H = labels.shape[0]
    for col, (name, layers) in enumerate(stacks.items()):
        rf = receptive_field(layers)
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(image)
        top.set_axis_off()
        i = round((point[0] - rf.start) / rf.jump)
        j = round((point[1] - rf.start) / rf.jump)
        cy, cx = rf.start + i * rf.jump, rf.start + j * rf.jump
        half = (rf.size - 1) / 2
        top.plot(cx, cy, "y+", ms=10, mew=2)
        top.set_xlim(-.5, H - .5)
        top.set_ylim(H - .5, -.5)
        whole = " (whole image)" if min(cy, cx) - half <= 0 and max(cy, cx) + half >= H - 1 else ""
        if not whole:
            top.add_patch(Rectangle((cx - half - .5, cy - half - .5), rf.size, rf.size, fill=False, ec="yellow", lw=2))
        top.set_title(f"{name}\nfield {rf.size}x{rf.size} pixels{whole}", fontsize=10)
        # each image pixel gets the label of the nearest output pixel's centre
        idx = np.clip(np.round((np.arange(H) - rf.start) / rf.jump).astype(int), 0, (H - 1) // rf.jump)
        centres = np.clip(np.round(rf.start + np.arange((H - 1) // rf.jump + 1) * rf.jump).astype(int), 0, H - 1)
        coarse = labels[np.ix_(centres, centres)][np.ix_(idx, idx)]
        _show_labels(bottom, coarse)
        acc = float((coarse == labels).mean())
        bottom.set_title(f"output stride {rf.jump}: {len(centres)}x{len(centres)} labels\n"
                         f"upsampled back: {acc:.1%} pixels right", fontsize=10)
    return fig
