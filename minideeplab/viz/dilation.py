"""What a stack of dilated kernels samples: a static figure and a widget that redraws it.

``plot_dilation`` draws with pyplot (shown inline by Jupyter); ``dilation_explorer`` renders the
same drawing into a PNG shown by an ``ipywidgets.Image``, so every slider move replaces real
image bytes and no figure is left open.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from minideeplab.scratch.receptive import receptive_field, sampled_pixels


def _stack(kernel: int, rate: int, layers: int, rates=None) -> list[tuple[int, int, int]]:
    rates = tuple(rates) if rates is not None else (rate,) * layers
    return [(kernel, 1, r) for r in rates]


def draw_dilation(fig, kernel: int = 3, rate: int = 2, layers: int = 1, rates=None):
    """Draw into ``fig``: left, the input pixels one output pixel samples through ``layers`` stacked
    kernel x kernel convs at ``rate`` (or per-layer ``rates``), coloured by number of paths;
    right, receptive-field size against depth. Returns the two axes."""
    stack = _stack(kernel, rate, layers, rates)
    rates = [r for _, _, r in stack]
    rf = receptive_field(stack)
    grid = max(rf.size + 4, 11)
    grid += 1 - grid % 2  # odd, so the output pixel sits in the middle
    counts = sampled_pixels(stack, grid)
    c = grid // 2
    sampled = int((counts > 0).sum())

    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    shown = np.ma.masked_equal(counts, 0)
    ax.imshow(np.zeros_like(counts), cmap="Greys", vmin=0, vmax=1, extent=(-.5, grid - .5, grid - .5, -.5))
    im = ax.imshow(shown, cmap="viridis", vmin=1, vmax=max(2, counts.max()), interpolation="nearest")
    if grid <= 61:  # pixel grid lines while they are still visible
        ax.set_xticks(np.arange(-.5, grid, 1), minor=True)
        ax.set_yticks(np.arange(-.5, grid, 1), minor=True)
        ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    lo = c - (rf.size - 1) // 2
    ax.add_patch(Rectangle((lo - .5, lo - .5), rf.size, rf.size, fill=False, ec="tab:orange", lw=2,
                           label=f"field {rf.size}x{rf.size}"))
    ax.add_patch(Rectangle((c - .5, c - .5), 1, 1, fill=False, ec="red", lw=2, label="output pixel"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    rate_txt = f"rate {rates[0]}" if len(set(rates)) == 1 else f"rates {tuple(rates)}"
    ax.set_title(f"{len(stack)} x ({kernel}x{kernel}, {rate_txt}): samples {sampled} of {rf.size ** 2} "
                 f"({sampled / rf.size ** 2:.0%})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="paths to the output pixel",
                 ticks=MaxNLocator(integer=True))

    depth = np.arange(1, max(len(stack), 6) + 1)
    curves = [([1] * depth[-1], "o-", "rate 1")]
    if len(set(rates)) == 1 and rates[0] > 1:
        curves.append(([rates[0]] * depth[-1], "s-", f"rate {rates[0]} every layer"))
    elif len(set(rates)) > 1:
        curves.append((rates, "s-", f"rates {tuple(rates)}"))
    curves.append(([2 ** i for i in range(depth[-1])], "^--", "rates 1, 2, 4, ... (doubling)"))
    for rs, style, name in curves:
        d = depth[:len(rs)]
        ax2.plot(d, [receptive_field([(kernel, 1, r) for r in rs[:n]]).size for n in d], style, ms=4, label=name)
    ax2.plot([len(stack)], [rf.size], "o", ms=12, mfc="none", mec="red", mew=2, label="this stack")
    ax2.set_yscale("log", base=2)
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.set_xlabel("layers")
    ax2.set_ylabel("receptive field size (pixels)")
    ax2.set_title(f"field grows linearly with a fixed rate,\nexponentially with doubling rates ({kernel}x{kernel})",
                  fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    return ax, ax2


def plot_dilation(kernel: int = 3, rate: int = 2, layers: int = 1, rates=None, figsize=(10, 4.2)):
    """Static figure of ``draw_dilation`` (pyplot, so Jupyter shows it inline). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, layout="constrained")
    draw_dilation(fig, kernel, rate, layers, rates)
    return fig


def render_png(kernel: int, rate: int, layers: int, figsize=(10, 4.2), dpi: int = 80) -> bytes:
    """``draw_dilation`` rendered off-screen to PNG bytes (no pyplot, nothing left open)."""
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    draw_dilation(fig, kernel, rate, layers)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def dilation_explorer(kernel: int = 3, rate: int = 2, layers: int = 2):
    """A widget: sliders ``kernel``, ``rate``, ``layers`` above an image that is redrawn on every change.

    Returns an ``ipywidgets.VBox``; its ``.sliders`` attribute maps each name to its IntSlider
    and ``.image`` is the ``ipywidgets.Image`` holding the current PNG.
    """
    import ipywidgets as w

    style = {"description_width": "55px"}
    sliders = {
        "kernel": w.IntSlider(value=kernel, min=1, max=7, step=2, description="kernel",
                              continuous_update=False, style=style),
        "rate": w.IntSlider(value=rate, min=1, max=8, description="rate", continuous_update=False, style=style),
        "layers": w.IntSlider(value=layers, min=1, max=4, description="layers",
                              continuous_update=False, style=style),
    }
    image = w.Image(format="png", layout=w.Layout(max_width="100%"))

    def redraw(_=None):
        image.value = render_png(**{name: s.value for name, s in sliders.items()})

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    box = w.VBox([w.HBox(list(sliders.values())), image])
    box.sliders, box.image = sliders, image
    return box


def plot_footprints(footprints: dict, figsize=None):
    """One panel per named 2-D footprint (e.g. input gradients of one output pixel): white where the
    gradient is zero, coloured by its value elsewhere, with the sampled fraction in the title.
    Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(footprints)
    fig, axes = plt.subplots(1, n, figsize=figsize or (3.2 * n, 3.6), layout="constrained", squeeze=False)
    for ax, (name, grad) in zip(axes[0], footprints.items()):
        grad = np.asarray(grad)
        ax.imshow(np.ma.masked_equal(grad, 0), cmap="viridis", interpolation="nearest")
        ax.set_facecolor("white")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color("0.6")
        ax.set_title(f"{name}\n{grad.shape[0]}x{grad.shape[1]} field, {np.mean(grad != 0):.0%} sampled",
                     fontsize=10)
    return fig
