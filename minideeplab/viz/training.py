"""Figures for notebook 07, training and evaluation.

* ``plot_samples``: images above their label maps, in PASCAL VOC's colours (255, ignored: cream).
* ``find_windows`` / ``plot_windows``: small windows that lie wholly inside one class, alone and in their image.
* ``plot_ignored``: where the ignored (255) pixels are, with a zoom on a border.
* ``plot_losses``: raw per-iteration training losses and their running mean.
* ``plot_confusions``: confusion matrices, each row (a true class) normalised.
* ``predict_labels``: a model's argmax labels for every image of a data set.
* ``plot_failures``: image, truth, prediction and the pixels it got wrong, one row per image.
* ``plot_trimap_curves``: pixel accuracy in bands of growing width around the true boundaries, per model.
"""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Patch, Rectangle

from minideeplab.data.voc import IGNORE_INDEX, voc_palette

WRONG_COLOR = np.array([1.0, 0.15, 0.1])


def label_rgb(label: np.ndarray) -> np.ndarray:
    """(H, W) class indices (255 ignored) -> (H, W, 3) float RGB in [0, 1], PASCAL VOC's colours."""
    return voc_palette()[np.asarray(label, dtype=np.int64)] / 255.0


def _legend_handles(classes, ignored=True):
    palette = voc_palette() / 255.0
    handles = [Patch(color=palette[k], label=name) for k, name in enumerate(classes)]
    if ignored:
        handles.append(Patch(color=palette[IGNORE_INDEX], label=f"{IGNORE_INDEX}: ignored"))
    return handles


def _show(ax, rgb, title=None, fontsize=9):
    ax.imshow(rgb, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize)
    ax.set_axis_off()


def plot_samples(images, labels, classes, titles=None, figsize=None):
    """n images (H, W, 3) uint8 above their n label maps (H, W). Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=figsize or (1.9 * n, 4.4), layout="constrained", squeeze=False)
    for j, (image, label) in enumerate(zip(images, labels)):
        _show(axes[0, j], image, titles[j] if titles else None)
        _show(axes[1, j], label_rgb(label))
    fig.legend(handles=_legend_handles(classes), loc="outside lower center", ncol=len(classes) + 1, fontsize=8,
               frameon=False)
    return fig


def find_windows(dataset, classes, window: int = 9, seed: int = 0, chroma: float = 40.0) -> list:
    """Windows of window x window pixels that lie wholly inside one class, one per object class, and two of the
    background: a grey one and one on clutter (coloured pixels labelled background). Searches dataset[0],
    dataset[1], ... and takes a window at random (seeded) among those of the first image that has one.
    Returns [(name, image index, row, column of the top-left corner)]."""
    from scipy.ndimage import maximum_filter, minimum_filter, uniform_filter

    rng = np.random.default_rng(seed)
    wanted = ["background (grey)", "background (clutter)", *classes[1:]]
    found = {}
    r = window // 2
    for i in range(len(dataset)):
        image, label = dataset[i]
        colour = np.ptp(image.astype(np.int64), axis=-1) > chroma          # clutter and objects are coloured
        colourful = uniform_filter(colour.astype(np.float64), window, mode="constant")
        for k, name in enumerate(wanted):
            if name in found:
                continue
            cls = max(k - 1, 0)
            inside = minimum_filter(label == cls, window, mode="constant", cval=False)  # centres
            if name == "background (grey)":
                inside &= colourful < 0.5 / window ** 2                          # no coloured pixel
            elif name == "background (clutter)":
                inside &= (colourful > 0.4) & ~maximum_filter(label > 0, 3 * window)   # no object nearby
            ys, xs = np.nonzero(inside)
            if len(ys):
                j = int(rng.integers(len(ys)))
                found[name] = (name, i, int(ys[j]) - r, int(xs[j]) - r)
        if len(found) == len(wanted):
            break
    return [found[name] for name in wanted if name in found]


def plot_windows(dataset, windows, window: int = 9, figsize=None):
    """Top: each window alone, magnified, labelled A, B, ...; bottom: the answer, the window in its image.
    windows: ``find_windows``'s list. Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(windows)
    fig, axes = plt.subplots(2, n, figsize=figsize or (1.5 * n, 3.6), layout="constrained", squeeze=False)
    for j, (name, i, y, x) in enumerate(windows):
        image = dataset[i][0]
        letter = chr(ord("A") + j)
        _show(axes[0, j], image[y:y + window, x:x + window], letter, fontsize=11)
        _show(axes[1, j], image, f"{letter}: {name}".replace(" (", "\n("), fontsize=8)
        axes[1, j].add_patch(Rectangle((x - 0.5, y - 0.5), window, window, fill=False, ec="yellow", lw=1.5))
    return fig


def _densest_box(mask, size):
    """(row, column) of the top-left corner of the size x size box holding the most True pixels."""
    from scipy.ndimage import uniform_filter

    count = uniform_filter(mask.astype(np.float64), size, mode="constant")
    H, W = mask.shape
    h = size // 2
    count[:h] = count[H - (size - h) + 1:] = -1
    count[:, :h] = count[:, W - (size - h) + 1:] = -1
    cy, cx = np.unravel_index(np.argmax(count), count.shape)
    return int(cy) - h, int(cx) - h


def plot_ignored(image, label, classes, zoom: int = 20, figsize=(11, 3.5)):
    """The image, its label map, and a zoom on the zoom x zoom box with the most ignored pixels: the image and
    the label map side by side, ignored pixels cream. Returns the Figure."""
    import matplotlib.pyplot as plt

    ignored = label == IGNORE_INDEX
    y, x = _densest_box(ignored, zoom)
    fig, axes = plt.subplots(1, 4, figsize=figsize, layout="constrained")
    _show(axes[0], image, "image")
    _show(axes[1], label_rgb(label), f"labels: {ignored.mean():.1%} of the pixels ignored")
    for ax in axes[:2]:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), zoom, zoom, fill=False, ec="yellow", lw=1.5))
    box = (slice(y, y + zoom), slice(x, x + zoom))
    _show(axes[2], image[box], f"zoom: {zoom}x{zoom} pixels")
    _show(axes[3], label_rgb(label[box]), "its labels")
    fig.legend(handles=_legend_handles(classes), loc="outside lower center", ncol=len(classes) + 1, fontsize=8,
               frameon=False)
    return fig


def running_mean(values, n: int) -> np.ndarray:
    """The mean of the last n values at each step (fewer at the start), (len(values),) float64."""
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    k = np.arange(1, len(v) + 1)
    lo = np.maximum(k - n, 0)
    return (c[k] - c[lo]) / (k - lo)


def plot_losses(runs: dict, num_classes: int | None = None, smooth: int = 20, figsize=(8, 3.6)):
    """Raw per-iteration training losses (thin) and their running mean over `smooth` iterations (thick), one
    colour per run (name -> losses), iterations on a log axis; ln(num_classes), the loss of a uniform guess,
    dashed. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    for k, (name, losses) in enumerate(runs.items()):
        it = np.arange(1, len(losses) + 1)
        ax.plot(it, losses, color=f"C{k}", lw=0.6, alpha=0.35)
        ax.plot(it, running_mean(losses, smooth), color=f"C{k}", lw=2, label=f"{name} ({len(losses)} iterations)")
    if num_classes:
        ax.axhline(np.log(num_classes), color="grey", ls="--", lw=1)
        ax.text(1, np.log(num_classes), f"ln {num_classes}: a uniform guess", va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return fig


def plot_confusions(cms: dict, classes, figsize=None):
    """Confusion matrices (name -> cm (C, C), rows = truth), each row divided by its sum: the share of a true
    class's pixels given each label; a percentage in each cell. Returns the Figure."""
    import matplotlib.pyplot as plt

    n, C = len(cms), len(classes)
    fig, axes = plt.subplots(1, n, figsize=figsize or (4.6 * n, 4.2), layout="constrained", squeeze=False)
    for ax, (name, cm) in zip(axes[0], cms.items()):
        cm = np.asarray(cm, dtype=np.float64)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for t in range(C):
            for p in range(C):
                ax.text(p, t, f"{100 * share[t, p]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 0.5 else "black")
        ax.set_xticks(range(C), classes, rotation=60, fontsize=8)
        ax.set_yticks(range(C), classes, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{name}\n% of each true class's pixels", fontsize=9)
    return fig


def predict_labels(model, dataset, indices=None) -> np.ndarray:
    """(N, H, W) int64: the model's argmax class at every pixel of dataset[i] for i in indices (default all),
    single scale (``train.predict``). All images must have one size."""
    from minideeplab.train import predict

    indices = range(len(dataset)) if indices is None else indices
    return np.stack([predict(model, dataset[i][0]).argmax(0).numpy() for i in indices])


def error_rgb(image, label, pred) -> np.ndarray:
    """(H, W, 3) float: the image faded to grey, the wrongly predicted pixels red, the ignored ones cream."""
    grey = image.astype(np.float64).mean(-1, keepdims=True) / 255
    rgb = np.repeat(0.35 + 0.5 * grey, 3, -1)
    ignored = label == IGNORE_INDEX
    rgb[(pred != label) & ~ignored] = WRONG_COLOR
    rgb[ignored] = voc_palette()[IGNORE_INDEX] / 255
    return rgb


def plot_failures(images, labels, preds, classes, titles=None, figsize=None):
    """One row per image: image, truth, prediction, errors (red: wrong, cream: ignored). Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=figsize or (8.4, 2.2 * n + 0.6), layout="constrained", squeeze=False)
    for r, (image, label, pred) in enumerate(zip(images, labels, preds)):
        wrong = float(np.mean((pred != label)[label != IGNORE_INDEX]))
        heads = (titles[r] if titles else "image", "truth", "prediction", f"wrong: {wrong:.0%} of the pixels")
        for ax, rgb, head in zip(axes[r], (image, label_rgb(label), label_rgb(pred), error_rgb(image, label, pred)),
                                 heads):
            _show(ax, rgb, head, fontsize=8)
    fig.legend(handles=_legend_handles(classes), loc="outside lower center", ncol=len(classes) + 1, fontsize=8,
               frameon=False)
    return fig


def plot_trimap_curves(widths, curves: dict, overall: dict | None = None, figsize=(6.4, 3.6)):
    """Trimap accuracy against the band's width: curves maps a name to one accuracy per width (e.g. the
    "trimap_accuracy" values of ``train.evaluate``); overall (optional) maps the same names to the accuracy
    over all pixels, drawn as a dashed line of the same colour. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    for k, (name, acc) in enumerate(curves.items()):
        ax.plot(widths, 100 * np.asarray(acc, dtype=np.float64), "o-", color=f"C{k}", label=name)
        if overall and name in overall:
            ax.axhline(100 * overall[name], color=f"C{k}", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("band width: pixels from a true boundary")
    ax.set_ylabel("pixel accuracy in the band (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, title="dashed: all pixels" if overall else None, title_fontsize=8)
    return fig
