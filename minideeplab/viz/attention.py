"""Figures and tables for notebook 11, atrous convolution in the attention era.

* ``plot_token_footprints``: which input pixels one output token reads, through attention layers and atrous
  convs, measured by input gradients (``reference.receptive``), side by side.
* ``mixing_macs``: the multiply-adds of one token-mixing layer on an H x W map (global attention, SegFormer's
  efficient attention, neighbourhood attention, a k x k conv).
* ``segformer_stages``: SegFormer's four stages read as a dilated backbone's: strides, patch embeddings, tokens,
  keys per query, and the cost of attention with and without spatial reduction.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_token_footprints", "mixing_macs", "segformer_stages"]

MIXERS = ("attention", "efficient", "neighbourhood", "conv")


def plot_token_footprints(layers: dict, x, token, footprint=None, figsize=None):
    """One panel per named layer (a torch function of x (1, C, H, W)): the input pixels that output token (row,
    column) reads, per ``footprint(layer, x, token)`` (default: ``reference.receptive.input_footprint``), coloured
    by the log of the gradient's size (``token_gradient``), white where not read; the token marked. Returns the
    Figure."""
    import matplotlib.pyplot as plt

    from minideeplab.reference.receptive import input_footprint, token_gradient

    footprint = footprint or input_footprint
    n = len(layers)
    fig, axes = plt.subplots(1, n, figsize=figsize or (2.3 * n, 2.9), layout="constrained", squeeze=False)
    for ax, (name, layer) in zip(axes[0], layers.items()):
        read = np.asarray(footprint(layer, x, token), dtype=bool)
        g = token_gradient(layer, x, token)
        shown = np.zeros_like(g)
        if read.any():
            low = g[read & (g > 0)].min() if (read & (g > 0)).any() else 1.0
            shown[read] = np.log10(np.maximum(g[read], low) / low) + 1  # log scale from 1; not read stays white
        ax.imshow(np.ma.masked_equal(shown, 0), cmap="viridis", interpolation="nearest")
        ax.plot(token[1], token[0], "x", color="red", ms=7, mew=2)
        ax.set_facecolor("white")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color("0.6")
        ax.set_title(f"{name}\n{int(read.sum())} of {read.size} pixels", fontsize=9)
    return fig


def mixing_macs(kind, hw, channels, kernel=3, sr_ratio=1) -> int:
    """Multiply-adds of one token-mixing layer on an hw = (H, W) map of D = channels, batch 1, no biases or norms:

    * "attention": q, k, v and the output projection (4 N D^2) and the scores and weighted sum (2 N^2 D);
    * "efficient" (SegFormer, ratio R): q and the projection (2 N D^2), the R x R stride-R conv (N D^2), keys and
      values of the N / R^2 reduced tokens (2 N D^2 / R^2), scores and sum against them (2 N^2 D / R^2);
    * "neighbourhood" (kernel k): the projections (4 N D^2) and k^2 keys per query (2 N k^2 D);
    * "conv": a k x k conv from D to D channels (N k^2 D^2), at any rate.
    """
    H, W = hw
    N, D = H * W, channels
    if kind == "attention":
        return 4 * N * D * D + 2 * N * N * D
    if kind == "efficient":
        if H % sr_ratio or W % sr_ratio:
            raise ValueError(f"mixing_macs: hw={hw} must be divisible by sr_ratio={sr_ratio}")
        M = N // (sr_ratio * sr_ratio)
        return 2 * N * D * D + M * sr_ratio * sr_ratio * D * D + 2 * M * D * D + 2 * N * M * D
    if kind == "neighbourhood":
        return 4 * N * D * D + 2 * N * kernel * kernel * D
    if kind == "conv":
        return N * kernel * kernel * D * D
    raise ValueError(f"mixing_macs: kind must be one of {MIXERS}, got {kind!r}")


def segformer_stages(mit=None, size=512) -> str:
    """SegFormer's encoder (a ``specs.segformer.MiT``, default MiT-B0) on a size x size image, one line per stage:
    its output stride, the patch embedding (a k x k conv of stride s, overlapping where k > s), the token map,
    the keys each query sees after the R x R spatial reduction, and the attention layer's multiply-adds with that
    reduction and without it (``mixing_macs``)."""
    from minideeplab.specs.segformer import MiT

    mit = mit or MiT()
    head = ["stage", "stride", "patch embedding", "tokens", "R", "keys/query", "attention MACs", "without R"]
    lines, stride, side = [], 1, size
    for i in range(4):
        k, s = mit.patch_kernels[i], mit.patch_strides[i]
        stride *= s
        side = (side + 2 * (k // 2) - k) // s + 1
        R, D = mit.sr_ratios[i], mit.widths[i]
        hw = (side, side)
        lines.append([str(i + 1), str(stride), f"{k}x{k} conv, stride {s}" + (" (overlapping)" if k > s else ""),
                      f"{side}x{side}", str(R), str(side * side // (R * R)),
                      f"{mixing_macs('efficient', hw, D, sr_ratio=R) / 1e9:.2f}G",
                      f"{mixing_macs('attention', hw, D) / 1e9:.2f}G"])
    size_ = [max(len(c) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(n) if j == 2 else c.rjust(n)  # noqa: E731
                                  for j, (c, n) in enumerate(zip(cells, size_))).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size_])] + [fmt(line) for line in lines])
