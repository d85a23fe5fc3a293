"""Figures for DeepLabv3+ (notebook 05).

* ``stride_ceiling``: the best labels an output at a given output stride can give after bilinear
  upsampling (each cell's class fractions, upsampled, argmax), with their accuracy near borders;
  ``plot_stride_ceiling`` draws them over a photograph, with a zoom and the trimap curves.
* ``plot_align_corners``: where a stride-s feature map's samples are centred on the input, and where
  bilinear resizing assumes them to be with align_corners True and False.
"""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from minideeplab.data.photos import coarse_probs
from minideeplab.metrics import trimap_accuracy
from minideeplab.viz.crf import overlay


def stride_ceiling(labels: np.ndarray, n_labels: int, output_stride: int) -> np.ndarray:
    """(H, W) labels -> (H, W) labels: what a perfect network at ``output_stride`` predicts after bilinear
    upsampling. Its logits are log(the fraction of each class in each output_stride x output_stride cell)
    (``coarse_probs`` without noise), upsampled bilinearly to (H, W); the argmax."""
    return coarse_probs(labels, n_labels, stride=output_stride, noise=0.0).argmax(0)


def plot_stride_ceiling(image, labels, n_labels: int, strides=(16, 4), zoom=None, widths=None, figsize=None):
    """Top row: the target ``labels`` over the photograph, then ``stride_ceiling`` at each output stride.
    Bottom row: the same, zoomed on ``zoom`` = (row, col, size), a square drawn on the top row (None: the
    centre, a third of the height). Right: accuracy within each band width of a border (trimap).
    Returns the Figure."""
    import matplotlib.pyplot as plt

    H, W = labels.shape
    widths = np.arange(1, 17) if widths is None else np.asarray(widths)
    if zoom is None:
        s = H // 3
        zoom = ((H - s) // 2, (W - s) // 2, s)
    r, c, s = zoom
    preds = {f"output stride {st}, upsampled x{st}": stride_ceiling(labels, n_labels, st) for st in strides}
    panels = [("target: region labels", labels)] + list(preds.items())
    n = len(panels)
    mosaic = [[f"t{i}" for i in range(n)] + ["curve"], [f"z{i}" for i in range(n)] + ["curve"]]
    fig, ax = plt.subplot_mosaic(mosaic, figsize=figsize or (3.1 * n + 4.2, 5.6), layout="constrained",
                                 width_ratios=[1] * n + [1.5])
    for i, (title, pred) in enumerate(panels):
        rgb = overlay(image, pred, n_labels)
        if i:
            title += (f"\n{np.mean(pred == labels):.1%} of the pixels right,\n"
                      f"{trimap_accuracy(pred, labels, [4])[0]:.1%} within 4 px of a border")
        for key, view in ((f"t{i}", rgb), (f"z{i}", rgb[r:r + s, c:c + s])):
            ax[key].imshow(view, interpolation="nearest")
            ax[key].set_axis_off()
        ax[f"t{i}"].set_title(title, fontsize=9)
        ax[f"t{i}"].add_patch(Rectangle((c - 0.5, r - 0.5), s, s, fill=False, ec="yellow", lw=1.5))
    ax["z0"].set_title("zoom (yellow square)", fontsize=9)
    curve = ax["curve"]
    for (name, pred), style in zip(preds.items(), ("o-", "s-", "^-", "d-")):
        curve.plot(widths, 100 * trimap_accuracy(pred, labels, widths), style, ms=4, label=name)
    curve.set_xlabel("band width (pixels from a border)")
    curve.set_ylabel("pixel accuracy in the band (%)")
    curve.set_title("the best each output stride can do,\nnear the borders (trimap)", fontsize=10)
    curve.grid(alpha=0.3)
    curve.legend(fontsize=8)
    return fig


def plot_align_corners(size: int = 65, strides=(16, 4), figsize=(10, 3.4)):
    """One input row of ``size`` pixels and, for each stride s, the ceil(size / s) samples of a stride-s
    feature map: where a ResNet centres them (input pixel s * i: every stride-2 conv with "same" padding
    keeps pixel 0 at pixel 0), and where bilinear resizing assumes them to be, align_corners=True (the
    corners meet: i * (size - 1) / (n - 1)) and False (the cells tile the row: (i + 1/2) * size / n - 1/2).
    Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(strides), 1, figsize=figsize, layout="constrained", squeeze=False)
    for ax, s in zip(axes[:, 0], strides):
        n = -(-size // s)
        i = np.arange(n)
        rows = [("features centred at", s * i, "k", "|"),
                ("align_corners=True", i * (size - 1) / max(n - 1, 1), "tab:blue", "o"),
                ("align_corners=False", (i + 0.5) * size / n - 0.5, "tab:orange", "s")]
        ax.plot(np.arange(size), np.full(size, 3), ",", color="0.6")
        for y, (name, pos, color, marker) in zip((2, 1, 0), rows):
            ax.plot(pos, np.full(n, y), marker, color=color, ms=7 if marker != "|" else 14, mew=2)
            ax.text(-1.5, y, name, ha="right", va="center", fontsize=9, color=color)
        ax.text(-1.5, 3, f"input pixels 0..{size - 1}", ha="right", va="center", fontsize=9, color="0.4")
        ax.set_title(f"stride {s}: {n} samples across {size} input pixels", fontsize=10)
        ax.set_xlim(-0.5 * size, size + 1)
        ax.set_ylim(-0.7, 3.7)
        ax.set_yticks([])
        ax.set_xticks(np.arange(0, size, s) if size // s <= 20 else np.arange(0, size, 16))
        for sp in ("left", "right", "top"):
            ax.spines[sp].set_visible(False)
    return fig
