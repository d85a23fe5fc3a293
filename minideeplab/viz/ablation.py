"""Figures for notebook 09, the ablations.

* ``plot_intervals``: differences in mIoU between pairs of rows with their bootstrap intervals.
* ``plot_cost_front``: mIoU against a cost (multiply-adds, milliseconds), the Pareto front joined.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter


def plot_intervals(labels, differences, intervals, figsize=None):
    """One horizontal line per comparison: the difference (points) as a dot, its interval as a bar, 0 dashed.
    labels: n strings; differences: n numbers; intervals: n (low, high) pairs. Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=figsize or (7.5, 0.45 * n + 1.0), layout="constrained")
    d = 100 * np.asarray(differences, dtype=np.float64)
    lo, hi = (100 * np.asarray(intervals, dtype=np.float64)).T
    colours = ["C2" if a > 0 else "C3" if b < 0 else "C7" for a, b in zip(lo, hi)]
    ax.hlines(range(n), lo, hi, colors=colours, lw=3)
    ax.scatter(d, range(n), color="black", zorder=3, s=14)
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference in mIoU (points): dot on all val images, bar the 95 % bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_cost_front(rows, front, cost_key="mult_adds", cost_label=None, scale=1.0, figsize=(7.5, 4.2)):
    """Each row's mIoU (%) against rows[i][cost_key] * scale on a log axis, named; the rows where front is True
    joined in order of cost. Returns the Figure."""
    import matplotlib.pyplot as plt

    cost = np.array([r[cost_key] for r in rows], dtype=np.float64) * scale
    miou = 100 * np.array([r["miou"] for r in rows], dtype=np.float64)
    front = np.asarray(front, dtype=bool)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.scatter(cost[~front], miou[~front], color="C7", s=18, label="dominated")
    ax.scatter(cost[front], miou[front], color="C0", s=28, label="on the front")
    order = np.flatnonzero(front)[np.argsort(cost[front])]
    ax.plot(cost[order], miou[order], color="C0", lw=1)
    for r, c, m in zip(rows, cost, miou):
        ax.annotate(r["name"], (c, m), xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))   # 0.01, 0.02, 0.05, 0.1, ...
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(cost_label or cost_key)
    ax.set_ylabel("mIoU (%), val")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
