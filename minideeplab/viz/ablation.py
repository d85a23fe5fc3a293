"""Figures for notebook 09, the ablations.

* ``plot_intervals``: differences in mIoU between pairs of rows with their bootstrap intervals.
* ``plot_cost_front``: mIoU against a cost (multiply-adds, milliseconds), the Pareto front joined.
* ``plot_miou``, ``plot_trimap``: the table's two figures, written to files (``ablate.write_results``);
  for a study over seeds ``plot_seeds`` in place of ``plot_miou``, and ``plot_trimap`` a line per configuration.
* ``plot_loss_curves``: each row's training loss per epoch (a study's <study>_losses.json): did it fit?
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
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


def plot_loss_curves(curves, configuration=None, figsize=(7.5, 4.0), title="Did each row fit its training data?"):
    """One line per row: its mean training loss per epoch (curves: {row name: [loss, ...]}); the rows of one
    configuration (``configuration(name)``; None: each row its own) share a colour. Returns the Figure."""
    import matplotlib.pyplot as plt

    configuration = configuration or (lambda name: name)
    configs = list(dict.fromkeys(configuration(n) for n in curves))
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    labelled = set()
    for name, curve in curves.items():
        c = configuration(name)
        ax.plot(range(1, len(curve) + 1), curve, color=f"C{configs.index(c) % 10}", lw=1.5,
                label=None if c in labelled else c)
        labelled.add(c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
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
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))   # 0.01, 0.02, 0.05, 0.1, ...
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(cost_label or cost_key)
    ax.set_ylabel("mIoU (%), val")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.canvas.draw()  # the final layout, so that the labels can be spaced in points
    lift = _label_lifts(ax, [r["name"] for r in rows], cost, miou, fontsize=7)
    for r, c, m, dy in zip(rows, cost, miou, lift):
        ax.annotate(r["name"], (c, m), xytext=(3, 3 + dy), textcoords="offset points", fontsize=7, va="bottom")
    return fig


def _label_lifts(ax, names, x, y, fontsize):
    """Points to lift each point's label by so that no two labels overlap: rows of nearly the same cost and score
    (the v3 variants) would otherwise print their names on top of each other. Labels are placed from the
    lowest up; one that overlaps a placed label moves above it."""
    to_points = 72.0 / ax.figure.dpi
    px = ax.transData.transform(np.column_stack([x, y])) * to_points     # points from the figure's corner
    height, placed, lift = 1.5 * fontsize, [], np.zeros(len(names))   # a line, descenders included
    for i in np.argsort(px[:, 1], kind="stable"):
        left, right = px[i, 0] + 3, px[i, 0] + 3 + 0.6 * fontsize * len(names[i])
        bottom = px[i, 1] + 3
        for other_left, other_right, other_bottom in sorted(placed, key=lambda b: b[2]):
            if left < other_right and other_left < right and bottom < other_bottom + height \
                    and other_bottom < bottom + height:
                bottom = other_bottom + height
        placed.append((left, right, bottom))
        lift[i] = bottom - (px[i, 1] + 3)
    return lift


FAMILIES = ("shallow", "fcn", "v1", "v2", "v3", "v3plus")  # the row names' first part: one colour each


def _label_colour(name):
    base = name.split("-")[0]
    return matplotlib.colormaps["tab10"](FAMILIES.index(base) if base in FAMILIES else 9)


def _line_styles(names):
    """(colour, line style, marker) per row: the family's colour, from lighter to darker along the family's rows
    (v3 has six), each row of a family with its own marker (and line style, in turn)."""
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D", "v", "P", "X", "*"]
    counts = {}
    for name in names:
        counts[name.split("-")[0]] = counts.get(name.split("-")[0], 0) + 1
    seen, out = {}, []
    for name in names:
        base = name.split("-")[0]
        k = seen[base] = seen.get(base, -1) + 1
        t = k / max(counts[base] - 1, 1) if counts[base] > 1 else 0.5   # 0 .. 1 within the family
        base_rgb = _label_colour(name)[:3]
        if t < 0.5:  # lighter: mixed with white, up to 40 %
            colour = tuple(c + (1 - c) * 0.8 * (0.5 - t) for c in base_rgb)
        else:        # darker: mixed with black, up to 50 %
            colour = tuple(c * (1 - (t - 0.5)) for c in base_rgb)
        out.append((colour, styles[k % len(styles)], markers[k % len(markers)]))
    return out


def plot_miou(rows, path, title="DeepLab ablations on the synthetic set") -> Path:
    """A horizontal bar per row (records with "name", "miou", and "epochs" in the first): mIoU (%), coloured by
    model family, written to path as a PNG, titled ``title`` and the epochs. No pyplot: the global backend and
    figure list are left alone."""
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.2))
    ax = fig.subplots()
    names = [r["name"] for r in rows]
    values = [100 * r["miou"] for r in rows]
    ax.barh(range(len(rows)), values, color=[_label_colour(n) for n in names])
    for i, v in enumerate(values):
        ax.text(v + 0.5, i, f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%), val")
    ax.set_xlim(0, max(100.0, max(values) + 8))
    ax.set_title(f"{title} ({rows[0]['epochs']} epochs each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_seeds(rows, path, configuration, title) -> Path:
    """Two panels, mIoU and trimap accuracy at 2 px (%), one line per configuration (``configuration(name)``):
    each seed's value as a dot, their mean as a bar; titled ``title``, written to path as a PNG (a study over
    seeds: crf_miou.png, attention_miou.png)."""
    configs = list(dict.fromkeys(configuration(r["name"]) for r in rows))
    fig = Figure(figsize=(9, 0.45 * len(configs) + 1.4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in zip(axes, ("miou", "trimap_2"), ("mIoU (%), val", "trimap accuracy at 2 px (%), val")):
        for i, c in enumerate(configs):
            v = [100 * r[key] for r in rows if configuration(r["name"]) == c]
            ax.barh(i, np.mean(v), color=_label_colour(c), alpha=0.5)
            ax.plot(v, [i] * len(v), "k.", ms=6)
            ax.text(max(v) + 0.5, i, f"{np.mean(v):.1f}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.set_xlim(0, 100)
    axes[0].set_yticks(range(len(configs)), configs)
    axes[0].invert_yaxis()
    fig.suptitle(f"{title} (dots: seeds; bars: their mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_trimap(rows, path, configuration=None) -> Path:
    """Trimap accuracy (%) against the band width around the boundaries (the records' trimap_<width> keys), one
    line per row, or, for a study over seeds (``configuration``: row name -> its configuration), one per
    configuration at its seeds' mean; written to path as a PNG."""
    trimap_figure(rows, configuration).savefig(path, dpi=110)
    return Path(path)


def trimap_figure(rows, configuration=None) -> Figure:
    """``plot_trimap``'s figure."""
    keys = sorted((k for k in rows[0] if k.startswith("trimap_")), key=lambda k: float(k[len("trimap_"):]))
    widths = [float(k[len("trimap_"):]) for k in keys]
    if configuration is None:
        looks = _line_styles([r["name"] for r in rows])
    else:  # a line per configuration at its seeds' mean; not model families: a colour and a marker each
        groups = {}
        for r in rows:
            groups.setdefault(configuration(r["name"]), []).append(r)
        rows = [{"name": f"{c} ({len(g)} seed{'s' * (len(g) > 1)})", **{k: np.mean([r[k] for r in g]) for k in keys}}
                for c, g in groups.items()]
        looks = [(matplotlib.colormaps["tab10"](i % 10), "-", "osD^v<>Px*"[i % 10]) for i in range(len(rows))]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for r, (colour, style, marker) in zip(rows, looks):
        ax.plot(widths, [100 * r[k] for k in keys], style, marker=marker, ms=5, color=colour, label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.set_xlabel("band width around the object boundaries (pixels)")
    ax.set_ylabel("pixel accuracy in the band (%)")
    ax.set_title("Trimap accuracy: how well each row places the boundaries" if configuration is None else
                 "Trimap accuracy per configuration (its seeds' mean)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
