"""Figures and a widget for the dense CRF (notebook 08).

* ``plot_crf``: a photograph, its target labels, the coarse argmax and the CRF's argmax side by side;
  ``crf_explorer`` is the same drawing as a widget whose sliders rerun the CRF (rendered to PNG for an
  ``ipywidgets.Image``, as ``dilation_explorer`` does), ``plot_crf_settings`` its static stand-in.
* ``plot_kernel_rows``: which pixels one pixel listens to, under each of the two kernels.
* ``plot_lattice_steps``: splat, blur and slice of the permutohedral lattice on 2-D (position) features.
* ``plot_trimap``: the boundary band and the accuracy inside it before and after the CRF.
* ``plot_tangent`` and ``plot_compat`` (notebook 12, the CRF as a layer): a loss against one CRF parameter with
  the tangent its backward pass gives, and a learned C x C label compatibility.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from minideeplab.metrics import boundary_band, trimap_accuracy
from minideeplab.scratch import crf

BAND_WIDTH = 4  # pixels: the band around label borders whose accuracy the titles report


# ---------------------------------------------------------------------------------------------
# label maps over a photograph


def label_colors(n_labels: int) -> np.ndarray:
    """(n_labels, 3) RGB in [0, 1]: tab20 colours, repeated beyond 20 labels."""
    from matplotlib import colormaps

    tab = np.asarray(colormaps["tab20"].colors)
    order = np.r_[0:20:2, 1:20:2]  # the strong colours first
    return tab[order[np.arange(n_labels) % 20]]


def _borders(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, n_labels: int, alpha: float = 0.55) -> np.ndarray:
    """The photograph with each label's colour laid over it and label borders in white, (H, W, 3) float."""
    rgb = (1 - alpha) * image.astype(np.float64) / 255 + alpha * label_colors(n_labels)[labels]
    rgb[_borders(labels)] = 1.0
    return rgb


def _accuracy_text(pred, labels) -> str:
    if labels is None:
        return ""
    band = trimap_accuracy(pred, labels, [BAND_WIDTH])[0]
    return f"\n{np.mean(pred == labels):.1%} right, {band:.1%} within {BAND_WIDTH} px of a border"


def _show(ax, rgb, title):
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def changes(image, before, after, labels) -> tuple[np.ndarray, int, int]:
    """The photo in grey with the pixels the CRF fixed in green and those it broke in red: (rgb, fixed, broken)."""
    grey = image.astype(np.float64).mean(axis=2, keepdims=True) / 255
    rgb = np.repeat(0.25 + 0.5 * grey, 3, axis=2)
    fixed = (before != labels) & (after == labels)
    broken = (before == labels) & (after != labels)
    rgb[fixed] = (0.1, 0.85, 0.2)
    rgb[broken] = (0.95, 0.1, 0.1)
    return rgb, int(fixed.sum()), int(broken.sum())


def draw_crf(fig, image, probs, q=None, labels=None, photo: bool = True, titles: dict | None = None):
    """Draw into ``fig`` one row of panels: the photo (if ``photo``), the target ``labels`` (if given), the
    argmax of ``probs`` and of ``q`` (if given), each label map over the photo, and with both ``q`` and
    ``labels`` the pixels the CRF fixed and broke. Returns the axes."""
    n = probs.shape[0]
    titles = titles or {}
    panels = []
    if photo:
        panels.append((image.astype(np.float64) / 255, titles.get("photo", "photograph")))
    if labels is not None:
        panels.append((overlay(image, labels, n), titles.get("labels", "region labels (the target)")))
    before = probs.argmax(0)
    panels.append((overlay(image, before, n), titles.get("before", "coarse probabilities (OS 8), argmax")
                   + _accuracy_text(before, labels)))
    if q is not None:
        after = q.argmax(0)
        panels.append((overlay(image, after, n), titles.get("after", "after the dense CRF")
                       + _accuracy_text(after, labels)))
        if labels is not None:
            rgb, fixed, broken = changes(image, before, after, labels)
            panels.append((rgb, f"what the CRF changed:\n{fixed} pixels fixed (green), {broken} broken (red)"))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (rgb, title) in zip(axes, panels):
        _show(ax, rgb, title)
    return axes


def _n_panels(photo, q, labels):
    return int(photo) + 1 + (labels is not None) + (q is not None) + (q is not None and labels is not None)


def _figsize(image, n_panels, width=3.2):
    H, W = image.shape[:2]
    return (width * n_panels, width * H / W + 0.6)


def plot_crf(image, probs, q=None, labels=None, figsize=None):
    """Static figure of ``draw_crf`` (pyplot, shown inline by Jupyter). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize or _figsize(image, _n_panels(True, q, labels)), layout="constrained")
    draw_crf(fig, image, probs, q, labels)
    return fig


# ---------------------------------------------------------------------------------------------
# the parameter explorer

# slider name -> (dense_crf argument, min, max, step, what it is)
EXPLORER_SLIDERS = {
    "theta_alpha": ("bi_xy_std", 1, 160, 1, "appearance kernel: reach in pixels"),
    "theta_beta": ("bi_rgb_std", 1, 40, 1, "appearance kernel: colour tolerance (0..255 levels)"),
    "w1": ("bi_w", 0, 15, 1, "weight of the appearance kernel"),
    "w2": ("pos_w", 0, 15, 1, "weight of the smoothness kernel"),
}


def _crf_params(values: dict) -> dict:
    return {EXPLORER_SLIDERS[name][0]: float(v) for name, v in values.items()}


def render_crf_png(image, probs, labels=None, figsize=None, dpi: int = 80, **params) -> bytes:
    """Run ``dense_crf(probs, image, **params)`` and draw labels, before and after into PNG bytes (no pyplot)."""
    q = crf.dense_crf(probs, image, **params)
    fig = Figure(figsize=figsize or _figsize(image, _n_panels(False, q, labels)), dpi=dpi, layout="constrained")
    names = {"bi_xy_std": r"$\theta_\alpha$", "bi_rgb_std": r"$\theta_\beta$", "bi_w": "$w_1$", "pos_w": "$w_2$"}
    setting = ", ".join(f"{names[k]} {v:g}" for k, v in params.items() if k in names)
    draw_crf(fig, image, probs, q, labels, photo=False, titles={"after": f"after the CRF: {setting}"})
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def crf_explorer(image, probs, labels=None, theta_alpha: int = 67, theta_beta: int = 3, w1: int = 4, w2: int = 3,
                 pos_xy_std: float = 3.0, n_iters: int = 10):
    """A widget: sliders ``theta_alpha`` (bi_xy_std), ``theta_beta`` (bi_rgb_std), ``w1`` (bi_w) and ``w2``
    (pos_w) above an image of the coarse and the CRF labels that is redrawn on every change (the CRF reruns:
    keep the image small, about 120x160).

    Returns an ``ipywidgets.VBox``; its ``.sliders`` attribute maps each name to its IntSlider and ``.image``
    is the ``ipywidgets.Image`` holding the current PNG.
    """
    import ipywidgets as w

    style = {"description_width": "90px"}
    start = {"theta_alpha": theta_alpha, "theta_beta": theta_beta, "w1": w1, "w2": w2}
    sliders = {name: w.IntSlider(value=start[name], min=lo, max=hi, step=step, description=name,
                                 tooltip=f"{arg}: {what}", continuous_update=False, style=style)
               for name, (arg, lo, hi, step, what) in EXPLORER_SLIDERS.items()}
    image_widget = w.Image(format="png", layout=w.Layout(max_width="100%"))

    def redraw(_=None):
        params = _crf_params({name: s.value for name, s in sliders.items()})
        image_widget.value = render_crf_png(image, probs, labels, pos_xy_std=pos_xy_std, n_iters=n_iters, **params)

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    names = list(sliders)
    box = w.VBox([w.HBox([sliders[n] for n in names[:2]]), w.HBox([sliders[n] for n in names[2:]]), image_widget])
    box.sliders, box.image = sliders, image_widget
    return box


def plot_crf_settings(image, probs, settings: dict, labels=None, figsize=None):
    """The static stand-in for the explorer: one panel per named setting (keyword arguments of ``dense_crf``),
    the CRF's labels over the photo with their accuracy. Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(settings)
    fig, axes = plt.subplots(1, n, figsize=figsize or _figsize(image, n), layout="constrained", squeeze=False)
    for ax, (name, params) in zip(axes[0], settings.items()):
        after = crf.dense_crf(probs, image, **params).argmax(0)
        _show(ax, overlay(image, after, probs.shape[0]), name + _accuracy_text(after, labels))
    return fig


# ---------------------------------------------------------------------------------------------
# the two kernels


def plot_kernel_rows(image, pixel, bi_xy_std=67.0, bi_rgb_std=3.0, pos_xy_std=3.0, figsize=None):
    """Which pixels one pixel (row, col) listens to: its row of the smoothness and of the appearance kernel,
    shown as images over the photograph. Returns the Figure."""
    import matplotlib.pyplot as plt

    H, W = image.shape[:2]
    i = pixel[0] * W + pixel[1]
    rows = {}
    for name, f in ((rf"smoothness kernel, $\theta_\gamma$ {pos_xy_std:g}", crf.pixel_features(image, pos_xy_std)),
                    (rf"appearance kernel, $\theta_\alpha$ {bi_xy_std:g}, $\theta_\beta$ {bi_rgb_std:g}",
                     crf.pixel_features(image, bi_xy_std, bi_rgb_std))):
        rows[name] = np.exp(-0.5 * np.sum((f - f[i]) ** 2, axis=1)).reshape(H, W)
    fig, axes = plt.subplots(1, 3, figsize=figsize or _figsize(image, 3, width=3.4), layout="constrained")
    _show(axes[0], image, f"photograph, pixel {tuple(pixel)}")
    axes[0].plot(pixel[1], pixel[0], "o", ms=9, mfc="none", mec="red", mew=2)
    for ax, (name, row) in zip(axes[1:], rows.items()):
        ax.imshow(image.mean(axis=2), cmap="gray", alpha=0.35)
        im = ax.imshow(np.ma.masked_less(row, 1e-3), cmap="magma", vmin=0, vmax=1, alpha=0.9)
        ax.plot(pixel[1], pixel[0], "o", ms=9, mfc="none", mec="cyan", mew=2)
        ax.set_title(f"{name}\nk(f_i, f_j) > 0.01 at {np.mean(row > 0.01):.1%} of the pixels", fontsize=9)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[1:], fraction=0.03, label="k(f_i, f_j)")
    return fig


# ---------------------------------------------------------------------------------------------
# the permutohedral lattice, drawn for 2-D features (pixel positions)


def lattice_points_2d(lattice, features) -> np.ndarray:
    """(M+1, 2) positions of the lattice points in the 2-D feature space of ``features`` (N, 2).

    The points live on the plane x + y + z = 0 of R^3 (``keys`` are x and y). Every pixel's feature vector is
    the barycentric combination of its simplex's vertices, so the linear map from the plane back to feature
    space is the least-squares solution of ``features = (sum_r weights * vertices) @ A``."""
    if lattice.dim != 2:
        raise ValueError(f"lattice_points_2d: only 2-D lattices can be drawn, got d = {lattice.dim}")
    keys = lattice.keys.astype(np.float64)
    plane = np.concatenate([keys, -keys.sum(axis=1, keepdims=True)], axis=1)       # (M+1, 3)
    bary = np.einsum("nr,nrk->nk", lattice.weights.astype(np.float64), plane[lattice.offsets])
    A, *_ = np.linalg.lstsq(bary, features, rcond=None)                              # (3, 2)
    return plane @ A


def _lattice_edges(lattice, points):
    segments = []
    for j in range(lattice.neighbours.shape[0]):
        right = lattice.neighbours[j, :, 1]
        for m in np.flatnonzero(right):
            if m:
                segments.append([points[m], points[right[m]]])
    return np.array(segments)


def plot_lattice_steps(shape=(14, 20), xy_std: float = 3.0, pixels=((4, 5), (9, 14)), figsize=(11, 7.6)):
    """Splat, blur and slice on the lattice of a ``shape`` = (H, W) pixel grid's positions (d = 2), for values
    that are 1 at ``pixels`` and 0 elsewhere, beside the exact Gaussian filter of the same values. Drawn in
    pixel coordinates, 2 x 2 panels. Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    H, W = shape
    features = crf.pixel_features(np.zeros((H, W, 3), np.uint8), xy_std)
    lattice = crf.build_lattice(features)
    points = lattice_points_2d(lattice, features) * xy_std                           # pixel units (x, y)
    idx = [r * W + c for r, c in pixels]
    values = np.zeros((H * W, 1))
    values[idx] = 1.0
    splat = crf.lattice_splat(lattice, values)[:, 0]
    blurred = crf.lattice_blur(lattice, splat[:, None])[:, 0]
    alpha = 1.0 / (1.0 + 2.0 ** -lattice.dim)
    sliced = (alpha * crf.lattice_slice(lattice, blurred[:, None])[:, 0]).reshape(H, W)
    exact = (crf.gaussian_kernel(features) @ values)[:, 0].reshape(H, W)
    segments = _lattice_edges(lattice, points)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple"]

    fig, axes = plt.subplots(2, 2, figsize=figsize, layout="constrained")
    yy, xx = np.mgrid[0:H, 0:W]
    for ax, lattice_values in ((axes[0, 0], splat), (axes[0, 1], blurred)):
        ax.add_collection(LineCollection(segments, colors="0.8", linewidths=0.7, zorder=1))
        ax.plot(xx.ravel(), yy.ravel(), ".", color="0.6", ms=2.5, zorder=1)
        ax.plot(points[1:, 0], points[1:, 1], "o", mfc="white", mec="0.55", ms=4, zorder=2)
        on = np.flatnonzero(lattice_values[1:] > 1e-9) + 1
        sc = ax.scatter(points[on, 0], points[on, 1], c=lattice_values[on], s=25 + 140 * lattice_values[on] /
                        lattice_values.max(), cmap="viridis", vmin=0, zorder=3, edgecolors="k", linewidths=0.4)
        fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.01, label="value at a lattice point")
        ax.set_xlim(-1.5, W + 0.5)
        ax.set_ylim(H + 0.5, -1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[0, 0]
    ax.add_collection(PolyCollection([points[lattice.offsets[i]] for i in idx], zorder=2, alpha=0.25,
                                     facecolors=[colours[k % 5] for k in range(len(idx))]))
    for k, (i, (r, c)) in enumerate(zip(idx, pixels)):
        for vertex, weight in zip(lattice.offsets[i], lattice.weights[i]):
            px, py = points[vertex]
            ax.plot([c, px], [r, py], "-", color=colours[k % 5], lw=1.2, zorder=2)
            ax.text(px + 0.35 * (px - c), py + 0.35 * (py - r), f"{weight:.2f}", fontsize=8, color=colours[k % 5],
                    ha="center", va="center", zorder=4, bbox=dict(fc="white", ec="none", pad=0.2, alpha=0.85))
        ax.plot(c, r, "s", color=colours[k % 5], ms=6, zorder=4)
    ax.set_title(f"1. splat: a marked pixel (value 1) hands its value to the {lattice.dim + 1} corners\n"
                 "of its triangle, with barycentric weights (they sum to 1)", fontsize=9)
    axes[0, 1].set_title(f"2. blur: along each of the {lattice.dim + 1} lattice directions, v + (left + right)/2\n"
                         f"({lattice.n_points} lattice points for {H * W} pixels)", fontsize=9)
    vmax = max(exact.max(), sliced.max())
    for ax, img, title in ((axes[1, 0], sliced, f"3. slice: each pixel reads its triangle's corners with its\n"
                                                f"splat weights, times alpha = {alpha:.2f}: the lattice's K @ v"),
                           (axes[1, 1], exact, f"exact K @ v, Gaussian kernel: the lattice's is wider and lower\n"
                                               f"(peaks {sliced.max():.2f} vs {exact.max():.2f}, totals "
                                               f"{sliced.sum():.0f} vs {exact.sum():.0f})")):
        im = ax.imshow(img, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for r, c in pixels:
            ax.plot(c, r, "s", mfc="none", mec="white", ms=6)
    fig.colorbar(im, ax=axes[1, :], fraction=0.03, pad=0.01, label="filtered value at a pixel")
    return fig


# ---------------------------------------------------------------------------------------------
# the trimap


def plot_trimap(image, labels, widths, curves: dict, band_width: int = BAND_WIDTH, figsize=(11, 3.6)):
    """Left: the band of ``band_width`` pixels around the borders of ``labels`` over the photo. Right: the
    accuracy inside bands of each width, one curve per name in ``curves`` (name -> accuracies). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=figsize, layout="constrained", gridspec_kw={"width_ratios": [1, 1.3]})
    band = boundary_band(labels, band_width)
    rgb = image.astype(np.float64) / 255 * 0.5
    rgb[band] = 0.4 * rgb[band] + 0.6 * np.array([1.0, 0.85, 0.1])
    _show(a, rgb, f"the trimap band: pixels within {band_width} px of a label border\n"
                  f"({band.mean():.0%} of the image)")
    for (name, acc), style in zip(curves.items(), ("o-", "s-", "^-", "d-")):
        b.plot(widths, 100 * np.asarray(acc), style, ms=4, label=name)
    b.set_xlabel("band width (pixels from a border)")
    b.set_ylabel("pixel accuracy in the band (%)")
    b.set_title("accuracy near borders (DeepLab's trimap experiment)", fontsize=10)
    b.grid(alpha=0.3)
    b.legend(fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# the CRF as a layer (notebook 12)


def plot_tangent(xs, losses, x0, loss0, slope, xlabel, ylabel="loss", figsize=(6.5, 3.4)):
    """A loss measured at each of ``xs`` (dots and line) and the tangent at ``x0`` with the given ``slope`` (the
    gradient a backward pass computes), drawn over the middle part of the range. Returns the Figure."""
    import matplotlib.pyplot as plt

    xs, losses = np.asarray(xs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.plot(xs, losses, "o-", ms=3, label="loss, one CRF run per value")
    half = (xs.max() - xs.min()) / 6
    t = np.array([x0 - half, x0 + half])
    ax.plot(t, loss0 + slope * (t - x0), "--", color="tab:red",
            label=f"tangent from the backward pass, slope {slope:.3g}")
    ax.plot([x0], [loss0], "o", color="tab:red")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_compat(compat, classes=None, title="label compatibility mu (a penalty: row label next to column label)",
                figsize=None):
    """A C x C compatibility matrix as a grid of coloured cells with their values, on a scale centred at 0 (red: a
    penalty for the pair, blue: a reward); ``classes`` names the rows and columns. Returns the Figure."""
    import matplotlib.pyplot as plt

    mu = np.asarray(compat, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] != mu.shape[1]:
        raise ValueError(f"plot_compat: compat must be a C x C matrix, got shape {mu.shape}")
    C = mu.shape[0]
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(C)]
    if len(names) != C:
        raise ValueError(f"plot_compat: {len(names)} class names for a {C} x {C} matrix")
    fig, ax = plt.subplots(figsize=figsize or (1.2 + 0.55 * C, 0.8 + 0.5 * C), layout="constrained")
    top = float(np.abs(mu).max()) or 1.0
    shown = ax.imshow(mu, cmap="RdBu_r", vmin=-top, vmax=top)
    for i in range(C):
        for j in range(C):
            ax.text(j, i, f"{mu[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(mu[i, j]) > 0.6 * top else "black")
    ax.set_xticks(range(C), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(C), names, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    return fig
