"""Figures for ASPP (notebook 04): what each branch of the pyramid reads, and how a 3x3 kernel at a large rate
degenerates on a small feature map.

* ``plot_fields_of_view``: a photograph with the 9 taps of each 3x3 branch around one output pixel, at image scale.
* ``plot_branch_taps``: on the feature map itself, the taps each branch reads for a few output pixels.
* ``valid_weight_stats`` / ``plot_valid_weights``: DeepLabv3's count of valid (non-padding) weights against the rate.

Counts of valid taps come from the package's own ``scratch.atrous_conv2d`` of a ones map with a 3x3 ones kernel.
"""

from __future__ import annotations

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def valid_taps_map(size: int, rate: int) -> np.ndarray:
    """(size, size) int: how many of the 9 taps of a 3x3 kernel at ``rate`` ("same" padding) land inside a
    size x size map, per output pixel."""
    ones = np.ones((1, 1, size, size))
    return np.rint(atrous_conv2d(ones, np.ones((1, 1, 3, 3)), rate=rate)[0, 0]).astype(np.int64)


def valid_weight_stats(size: int, rates) -> dict[str, np.ndarray]:
    """Per rate: ``"fraction"``, the mean share of the 9 weights that read the map (not padding), and
    ``"exactly_k"`` for k in 1, 4, 9, the share of output pixels at which exactly k weights do."""
    maps = [valid_taps_map(size, int(r)) for r in rates]
    stats = {"rates": np.asarray(rates), "fraction": np.array([m.mean() / 9 for m in maps])}
    for k in (1, 4, 9):
        stats[f"exactly_{k}"] = np.array([np.mean(m == k) for m in maps])
    return stats


def plot_valid_weights(sizes=(33, 65), max_rate: int = 72, aspp_rates=None, figsize=None):
    """One panel per map size: the share of output pixels with exactly 1, 4 or 9 valid weights and the mean
    share of valid weights, against the rate (1 .. max_rate). ``aspp_rates``: {size: (rates, label)} marked
    as vertical lines. Returns the Figure."""
    import matplotlib.pyplot as plt

    aspp_rates = aspp_rates or {}
    rates = np.arange(1, max_rate + 1)
    fig, axes = plt.subplots(1, len(sizes), figsize=figsize or (5.2 * len(sizes), 3.8), layout="constrained",
                             squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        s = valid_weight_stats(size, rates)
        for k, c in ((9, "tab:green"), (4, "tab:orange"), (1, "tab:red")):
            ax.plot(rates, s[f"exactly_{k}"], color=c, lw=1.8, label=f"pixels with exactly {k} valid weight"
                    + ("s" if k > 1 else ""))
        ax.plot(rates, s["fraction"], "k--", lw=1.5, label="mean share of valid weights")
        ax.axvline(size - 1, color="0.5", lw=0.8, ls=":")
        ax.text(size - 1, 1.02, f" rate {size - 1}", color="0.4", fontsize=8, ha="center", va="bottom")
        if size in aspp_rates:
            marks, label = aspp_rates[size]
            for i, r in enumerate(marks):
                ax.axvline(r, color="tab:blue", lw=1, alpha=0.6, label=label if i == 0 else None)
        ax.set_xlabel("atrous rate")
        ax.set_title(f"3x3 kernel on a {size}x{size} map", fontsize=10)
        ax.set_ylim(0, 1.08)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center right")
    axes[0, 0].set_ylabel("share")
    return fig


def _square(ax, cy, cx, half, **kw):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False, **kw))


def plot_fields_of_view(image, atrous_rates=(6, 12, 18, 24), output_stride: int = 8, pixels=None, figsize=None):
    """The photograph ``image`` (H, W, 3) with, around output pixel (i, j) of the feature map (size
    ceil(H / output_stride)), the 9 taps of a 3x3 kernel at each rate, drawn at image scale (feature pixel k
    sits at image pixel k * output_stride). Filled dots read the map, crosses read the zero padding.
    ``pixels``: the output pixels, one panel each (default: the centre and one near the top-left corner).
    Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    H, W = image.shape[:2]
    n_rows, n_cols = -(-H // output_stride), -(-W // output_stride)
    if pixels is None:
        pixels = ((n_rows // 2, n_cols // 2), (n_rows // 10, n_cols // 10))
    reach = max(atrous_rates) * output_stride
    fig, axes = plt.subplots(1, len(pixels), figsize=figsize or (4.6 * len(pixels), 4.9), layout="constrained",
                             squeeze=False)
    for ax, (i, j) in zip(axes[0], pixels):
        ax.set_facecolor("0.85")
        ax.imshow(image, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        cy, cx = i * output_stride, j * output_stride
        outside = 0
        for c, r in zip(COLORS, atrous_rates):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ti, tj = i + di * r, j + dj * r
                    y, x = ti * output_stride, tj * output_stride
                    if 0 <= ti < n_rows and 0 <= tj < n_cols:
                        ax.plot(x, y, "o", ms=7, mfc=c, mec="white", mew=1)
                    else:
                        ax.plot(x, y, "x", ms=7, color=c, mew=2)
                        outside += 1
            _square(ax, cy, cx, r * output_stride, ec=c, lw=1.2, ls="--")
        ax.plot(cx, cy, "s", ms=8, mfc="red", mec="white")
        ax.set_xlim(min(-0.5, cx - reach - 20), max(W - 0.5, cx + reach + 20))
        ax.set_ylim(max(H - 0.5, cy + reach + 20), min(-0.5, cy - reach - 20))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"output pixel ({i}, {j}) of the {n_rows}x{n_cols} map (OS {output_stride}):\n"
                     f"{outside} of {9 * len(atrous_rates)} taps read the zero padding", fontsize=9)
    handles = [Line2D([], [], color=c, marker="o", ls="--", label=f"rate {r}: taps {r * output_stride} px apart")
               for c, r in zip(COLORS, atrous_rates)]
    handles.append(Line2D([], [], color="0.3", marker="x", ls="", mew=2, label="tap in the padding"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    return fig


def plot_branch_taps(size: int = 33, atrous_rates=(6, 12, 18), pixels=((16, 16), (4, 4), (4, 26)), figsize=None):
    """One panel per ASPP branch (the 1x1, a 3x3 per rate, image pooling) on a size x size feature map: for each
    output pixel in ``pixels`` (a colour each), the map pixels it reads. The title gives the mean number of the
    9 taps inside the map over all output pixels. Returns the Figure."""
    import matplotlib.pyplot as plt

    branches = [("1x1 conv", 0)] + [(f"3x3, rate {r}", r) for r in atrous_rates] + [("image pooling", None)]
    fig, axes = plt.subplots(1, len(branches), figsize=figsize or (2.7 * len(branches), 3.3), layout="constrained",
                             squeeze=False)
    for ax, (name, rate) in zip(axes[0], branches):
        grid = np.zeros((size, size, 3)) + 0.93
        if rate is None:
            grid[:] = (0.75, 0.85, 0.95)  # every pixel, averaged
            title = f"{name}\nreads all {size * size} pixels"
        elif rate == 0:
            title = f"{name}\n1 tap, always inside"
        else:
            title = f"{name}\n{valid_taps_map(size, rate).mean():.2f} of 9 taps inside, on average"
        ax.imshow(grid, extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
        for c, (i, j) in zip(COLORS, pixels):
            if rate is not None and rate > 0:
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ti, tj = i + di * rate, j + dj * rate
                        if 0 <= ti < size and 0 <= tj < size and (di, dj) != (0, 0):
                            ax.plot(tj, ti, "o", ms=4.5, color=c, clip_on=False)
        for c, (i, j) in zip(COLORS, pixels):  # on top of every dot
            ax.plot(j, i, "s", ms=6, mfc=c, mec="black", mew=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"What each branch reads on a {size}x{size} map (squares: output pixels, dots: the other taps "
                 "inside the map)", fontsize=10)
    return fig
