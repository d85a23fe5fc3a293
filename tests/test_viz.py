"""Figures build, and the widgets (dilation, dense CRF) really redraw when a slider moves."""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minideeplab.viz.dilation import dilation_explorer, plot_dilation  # noqa: E402
from minideeplab.viz.segmentation import plot_resolution_vs_context, plot_scene, toy_scene  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


def test_static_dilation_figures_build():
    for kwargs in (dict(), dict(kernel=3, rate=2, layers=3), dict(kernel=3, rates=(1, 2, 5)),
                   dict(kernel=7, rate=8, layers=4), dict(kernel=1, rate=1, layers=1)):
        fig = plot_dilation(**kwargs)
        fig.canvas.draw()
        assert len(fig.axes) >= 2


def test_scene_figures_build():
    image, labels = toy_scene(64)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and set(np.unique(labels)) == {0, 1, 2, 3}
    plot_scene(image, labels).canvas.draw()
    stacks = {"no stride": [(3, 1, 1)] * 2, "stride 8": [(3, 2, 1)] * 3}
    plot_resolution_vs_context(image, labels, stacks, point=(30, 20)).canvas.draw()


def _sliders(widget):
    found, todo = {}, [widget]
    while todo:
        w = todo.pop()
        todo.extend(getattr(w, "children", ()))
        if type(w).__name__ == "IntSlider":
            found[w.description] = w
    return found


def test_widget_has_named_sliders_and_redraws_on_rate_change():
    n_open = len(plt.get_fignums())
    box = dilation_explorer(kernel=3, rate=2, layers=2)
    sliders = _sliders(box)
    assert set(sliders) == {"kernel", "rate", "layers"}
    before = _pixels(box.image.value)
    sliders["rate"].value = 4
    after = _pixels(box.image.value)
    assert before.shape == after.shape and before.ndim == 3
    assert np.abs(before - after).sum() > 100, "moving the rate slider did not change the picture"
    sliders["rate"].value = 2
    np.testing.assert_array_equal(_pixels(box.image.value), before)  # same settings, same picture
    sliders["layers"].value = 3
    sliders["kernel"].value = 5
    assert not np.array_equal(_pixels(box.image.value), before)
    assert len(plt.get_fignums()) == n_open, "the widget must not leave pyplot figures open"


# ------------------------------------------------------------------ notebook 08: the dense CRF

@pytest.fixture(scope="module")
def crf_scene():
    from minideeplab.data.photos import coarse_probs, photograph, region_labels

    image = photograph("coffee", size=(48, 64))
    labels = region_labels(image, 6)
    return image, labels, coarse_probs(labels, 6)


def test_crf_figures_build(crf_scene):
    from minideeplab.scratch.crf import dense_crf
    from minideeplab.viz.crf import plot_crf, plot_crf_settings, plot_kernel_rows, plot_lattice_steps, plot_trimap

    image, labels, probs = crf_scene
    q = dense_crf(probs, image)
    for args, n_axes in (((image, probs), 2), ((image, probs, None, labels), 3), ((image, probs, q), 3),
                         ((image, probs, q, labels), 5)):
        fig = plot_crf(*args)
        fig.canvas.draw()
        assert len(fig.axes) == n_axes
    plot_kernel_rows(image, (20, 30)).canvas.draw()
    plot_lattice_steps(shape=(10, 12), xy_std=2.0, pixels=((3, 3), (6, 8))).canvas.draw()
    widths = np.arange(1, 5)
    plot_trimap(image, labels, widths, {"a": np.linspace(0.7, 0.9, 4), "b": np.linspace(0.8, 0.95, 4)}).canvas.draw()
    fig = plot_crf_settings(image, probs, {"defaults": {}, "w1 0": dict(bi_w=0)}, labels)
    fig.canvas.draw()
    assert len(fig.axes) == 2


def test_crf_layer_figures_build():
    from minideeplab.viz.crf import plot_compat, plot_tangent

    mu = np.array([[0.0, 1.2, -0.4], [0.9, 0.0, 0.3], [1.1, 0.2, 0.0]])
    fig = plot_compat(mu, ["bg", "disc", "square"])
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bg", "disc", "square"]
    assert len(ax.texts) == 9 and ax.texts[1].get_text() == "1.20"
    assert ax.images[0].get_clim() == (-1.2, 1.2)  # centred at 0: a reward shows blue, a penalty red
    with pytest.raises(ValueError, match=r"C x C matrix, got shape \(2, 3\)"):
        plot_compat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 class names for a 3 x 3 matrix"):
        plot_compat(mu, ["a", "b"])
    xs = np.linspace(0, 10, 11)
    fig = plot_tangent(xs, (xs - 3) ** 2, 4.0, 1.0, 2.0, "w")
    fig.canvas.draw()
    tangent = fig.axes[0].lines[1].get_xydata()
    np.testing.assert_allclose(tangent[:, 1], 1.0 + 2.0 * (tangent[:, 0] - 4.0))


def test_lattice_points_are_the_simplex_corners():
    from minideeplab.scratch import crf
    from minideeplab.viz.crf import lattice_points_2d

    features = crf.pixel_features(np.zeros((9, 11, 3), np.uint8), 2.0)
    lattice = crf.build_lattice(features)
    points = lattice_points_2d(lattice, features)
    # every pixel is the barycentric combination of its simplex's corners (splat weights are float32)
    rebuilt = np.einsum("nr,nrk->nk", lattice.weights, points[lattice.offsets])
    np.testing.assert_allclose(rebuilt, features, atol=1e-5)
    # neighbours along a lattice direction are one lattice step apart, the same step everywhere
    right = lattice.neighbours[0, :, 1]
    has = np.flatnonzero(right[1:]) + 1
    steps = np.linalg.norm(points[right[has]] - points[has], axis=1)
    assert has.size and np.ptp(steps) < 1e-6 * steps.max()
    with pytest.raises(ValueError, match="only 2-D"):
        lattice_points_2d(crf.build_lattice(crf.pixel_features(np.zeros((4, 4, 3), np.uint8), 2.0, 5.0)),
                          np.zeros((16, 5)))


def test_crf_explorer_has_named_sliders_and_reruns_the_crf(crf_scene):
    from minideeplab.viz.crf import crf_explorer

    image, labels, probs = crf_scene
    n_open = len(plt.get_fignums())
    box = crf_explorer(image, probs, labels)
    sliders = _sliders(box)
    assert list(box.sliders) == ["theta_alpha", "theta_beta", "w1", "w2"]
    assert set(sliders) == set(box.sliders) and all(not s.continuous_update for s in sliders.values())
    assert [sliders[n].value for n in box.sliders] == [67, 3, 4, 3]  # DeepLab v2's parameters
    before = _pixels(box.image.value)
    sliders["w1"].value = 0                          # smoothness only: the labels change
    after = _pixels(box.image.value)
    assert before.shape == after.shape and before.ndim == 3
    assert np.abs(before - after).sum() > 100, "moving w1 did not change the picture"
    sliders["w1"].value = 4
    np.testing.assert_array_equal(_pixels(box.image.value), before)  # same settings, same picture
    for name in ("theta_alpha", "theta_beta", "w2"):
        sliders[name].value = sliders[name].max
    assert not np.array_equal(_pixels(box.image.value), before)
    assert len(plt.get_fignums()) == n_open, "the widget must not leave pyplot figures open"


def test_aspp_figures_build():
    from minideeplab.viz.aspp import plot_branch_taps, plot_fields_of_view, plot_valid_weights, valid_weight_stats

    s = valid_weight_stats(33, [1, 33, 36])
    assert list(s["exactly_1"][1:]) == [1.0, 1.0] and s["exactly_9"][0] > 0.8
    plot_fields_of_view(np.zeros((129, 129, 3), np.uint8), output_stride=8).canvas.draw()
    plot_valid_weights((17,), max_rate=20).canvas.draw()
    plot_branch_taps(17, (2, 4, 18), pixels=((8, 8), (2, 2))).canvas.draw()


def test_stride_ceiling_is_exact_on_cell_aligned_labels_and_loses_borders_otherwise():
    from minideeplab.viz.deeplab import stride_ceiling

    labels = np.zeros((64, 64), dtype=np.int64)
    labels[:, 32:] = 1                          # a border on a multiple of 16: every cell is pure
    assert np.array_equal(stride_ceiling(labels, 2, 16), labels)
    labels[:, 21:] = 1                          # mid-cell border: stride 16 blurs it, stride 4 keeps it
    assert np.mean(stride_ceiling(labels, 2, 4) == labels) > np.mean(stride_ceiling(labels, 2, 16) == labels)


def test_deeplab_figures_build():
    from minideeplab.viz.deeplab import plot_align_corners, plot_stride_ceiling

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    labels = np.zeros((48, 64), dtype=np.int64)
    labels[20:, 30:] = 1
    fig = plot_stride_ceiling(image, labels, 2, strides=(16, 8, 4), zoom=(10, 20, 16))
    assert len(fig.axes) == 9
    fig = plot_align_corners(size=33, strides=(16, 8, 4))
    assert len(fig.axes) == 3


# ------------------------------------------------------------------ notebook 07: training and evaluation

@pytest.fixture(scope="module")
def scenes():
    """Four 64x64 scenes of the synthetic set as (image, label) pairs: a data set in memory."""
    from minideeplab.data.synthetic import scene

    return [(s.image, s.label) for s in (scene(0, i, size=64) for i in range(4))]


def test_label_colours_are_voc_and_255_is_cream():
    from minideeplab.data.voc import voc_palette
    from minideeplab.viz.training import label_rgb

    rgb = label_rgb(np.array([[0, 1], [6, 255]], np.uint8))
    np.testing.assert_array_equal(rgb * 255, voc_palette()[[[0, 1], [6, 255]]])
    assert rgb[1, 1].tolist() == [224 / 255, 224 / 255, 192 / 255]


def test_windows_lie_wholly_inside_their_class():
    from minideeplab.data.voc import VOCSegmentation
    from minideeplab.viz.training import find_windows, plot_windows

    val = VOCSegmentation(Path(__file__).resolve().parents[1] / "data" / "synthetic", "val")
    windows = find_windows(val, val.classes, window=9)
    names = [w[0] for w in windows]
    assert names == ["background (grey)", "background (clutter)", *val.classes[1:]]
    for name, i, y, x in windows:
        image, label = val[i]
        box = label[y:y + 9, x:x + 9]
        cls = val.classes.index(name) if name in val.classes else 0
        assert box.shape == (9, 9) and np.all(box == cls), f"{name}: the window is not inside its class"
        colour = np.ptp(image[y:y + 9, x:x + 9].astype(int), axis=-1) > 40
        if name == "background (clutter)":
            assert colour.mean() > 0.4
        if name == "background (grey)":
            assert not colour.any()
    assert find_windows(val, val.classes, window=9) == windows                # seeded
    assert len(plot_windows(val, windows).axes) == 2 * len(windows)


def test_running_mean_is_the_mean_of_the_last_n():
    from minideeplab.viz.training import running_mean

    v = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    np.testing.assert_allclose(running_mean(v, 2), [4, 3, 4, 3, 4])
    np.testing.assert_allclose(running_mean(v, 10), np.cumsum(v) / np.arange(1, 6))
    np.testing.assert_allclose(running_mean(v, 1), v)


def test_error_map_marks_wrong_pixels_red_and_ignored_cream():
    from minideeplab.viz.training import WRONG_COLOR, error_rgb

    image = np.full((2, 3, 3), 100, np.uint8)
    label = np.array([[0, 1, 255], [2, 2, 2]], np.uint8)
    pred = np.array([[0, 2, 0], [2, 2, 1]])
    rgb = error_rgb(image, label, pred)
    wrong = np.all(rgb == WRONG_COLOR, axis=-1)
    assert wrong.tolist() == [[False, True, False], [False, False, True]]
    np.testing.assert_allclose(rgb[0, 2] * 255, [224, 224, 192])
    assert np.ptp(rgb[0, 0]) == 0 and rgb[0, 0, 0] < 1                        # right pixels: faded grey


def test_predict_labels_is_the_argmax_of_predict(scenes):
    import torch

    from minideeplab.train import TrainConfig, build, predict
    from minideeplab.viz.training import predict_labels

    torch.manual_seed(0)
    model = build(TrainConfig(), 7).eval()
    preds = predict_labels(model, scenes, [1, 3])
    assert preds.shape == (2, 64, 64) and preds.dtype == np.int64
    for p, i in zip(preds, (1, 3)):
        np.testing.assert_array_equal(p, predict(model, scenes[i][0]).argmax(0).numpy())


def test_training_figures_build(scenes):
    from minideeplab.data.synthetic import CLASSES
    from minideeplab.metrics import confusion_matrix
    from minideeplab.viz.training import plot_confusions, plot_failures, plot_ignored, plot_losses, plot_samples

    images, labels = [s[0] for s in scenes], np.stack([s[1] for s in scenes])
    preds = np.where(labels == 255, 0, labels)
    preds[:, :10] = 3
    assert len(plot_samples(images, labels, CLASSES).axes) == 8
    assert len(plot_ignored(images[0], labels[0], CLASSES, zoom=16).axes) == 4
    rng = np.random.default_rng(0)
    fig = plot_losses({"a": 1.9 - 0.01 * np.arange(30) + 0.1 * rng.random(30), "b": np.linspace(1.9, 0.5, 200)},
                      num_classes=7)
    fig.canvas.draw()
    cm = confusion_matrix(preds, labels, 7)
    fig = plot_confusions({"one": cm, "two": cm.T.copy()}, CLASSES)
    fig.canvas.draw()
    assert len(fig.axes) == 2 and fig.axes[0].images[0].get_array().max() <= 1
    fig = plot_failures(images[:3], labels[:3], preds[:3], CLASSES, titles=["a", "b", "c"])
    fig.canvas.draw()
    assert len(fig.axes) == 12 and fig.axes[3].get_title().startswith("wrong: ")


def test_trimap_curve_figure_draws_each_model_and_its_overall_line():
    from minideeplab.viz.training import plot_trimap_curves

    fig = plot_trimap_curves((1, 2, 4), {"a": [0.5, 0.6, 0.7], "b": [0.6, 0.7, 0.8]}, overall={"a": 0.9})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [list(line.get_ydata()) for line in ax.lines[:1]] == [[50.0, 60.0, 70.0]]
    assert sum(1 for line in ax.lines if line.get_linestyle() == "--") == 1
    plt.close(fig)


def test_ablation_figures_build():
    from minideeplab.viz.ablation import plot_cost_front, plot_intervals

    fig = plot_intervals(["a vs b", "c vs d"], [0.05, -0.01], [(0.02, 0.08), (-0.03, 0.01)])
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a vs b", "c vs d"]
    rows = [{"name": "x", "mult_adds": 1e8, "miou": 0.3}, {"name": "y", "mult_adds": 3e8, "miou": 0.5},
            {"name": "z", "mult_adds": 5e8, "miou": 0.4}]
    fig = plot_cost_front(rows, [True, True, False], scale=1e-9, cost_label="G multiply-adds")
    fig.canvas.draw()
    front_line = fig.axes[0].lines[0]
    assert list(front_line.get_xdata()) == pytest.approx([0.1, 0.3]) and list(front_line.get_ydata()) == [30.0, 50.0]
    plt.close("all")


def test_loss_curves_one_line_per_row_one_colour_per_configuration():
    from minideeplab.ablate.measured import configuration
    from minideeplab.viz.ablation import plot_loss_curves

    curves = {"cnn-s0": [0.6, 0.3, 0.2], "cnn-s1": [0.6, 0.4, 0.2], "vit-s0": [0.7, 0.7]}
    fig = plot_loss_curves(curves, configuration)
    lines = fig.axes[0].lines
    assert [list(line.get_ydata()) for line in lines] == list(curves.values())
    assert list(lines[2].get_xdata()) == [1, 2]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["cnn", "vit"]
    plt.close(fig)


def test_ablation_figures_tell_the_rows_apart(tmp_path):
    """The shipped table: the six v3 rows differ in colour, line style and marker in the trimap figure, and no two
    names overlap in the cost plot (three rows at 0.156 G and two at 0.553 G sit within a point of each other)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from minideeplab import ablate
    from minideeplab.data import data_path
    from minideeplab.viz.ablation import _line_styles, plot_cost_front, plot_trimap

    rows = [r for r in ablate.read_csv(data_path("ablation", "ablation.csv")) if r["crf"] is None]
    assert plot_trimap(rows, tmp_path / "trimap.png").exists()
    looks = _line_styles([r["name"] for r in rows])
    v3 = [look for r, look in zip(rows, looks) if r["name"].split("-")[0] == "v3"]
    assert len(v3) == 6 and all(len({look[j] for look in v3}) == 6 for j in (0, 2))  # colours, markers

    # a study over seeds: one line per configuration, at its seeds' mean
    from minideeplab.ablate.measured import configuration
    from minideeplab.viz.ablation import trimap_figure

    seeded = ablate.read_csv(data_path("ablation", "attention.csv"))
    ax = trimap_figure(seeded, configuration).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:3] == ["cnn-v3plus (3 seeds)", "vit-linear (3 seeds)", "vit-aspp (3 seeds)"]
    assert "segformer (1 seed)" in labels and len(labels) == len({configuration(r["name"]) for r in seeded})
    vit_aspp = [r for r in seeded if configuration(r["name"]) == "vit-aspp"]
    assert ax.lines[2].get_ydata()[1] == pytest.approx(100 * np.mean([r["trimap_2"] for r in vit_aspp]))

    front = ablate.pareto_front(np.array([r["mult_adds"] for r in rows], float), np.array([r["miou"] for r in rows]))
    fig = plot_cost_front(rows, front, scale=1e-9)
    FigureCanvasAgg(fig).draw()
    assert len(fig.axes[0].texts) == len(rows)
    overlaps = [(a.get_text(), b.get_text()) for i, a in enumerate(fig.axes[0].texts)
                for b in fig.axes[0].texts[i + 1:] if a.get_window_extent().overlaps(b.get_window_extent())]
    assert not overlaps
    plt.close("all")


def test_dilation_summary_names_the_strided_and_dilated_units():
    from minideeplab.specs.backbone import ResNet
    from minideeplab.specs.mobilenet import MobileNetV3
    from minideeplab.specs.xception import Xception
    from minideeplab.viz.backbone import dilation_summary

    assert dilation_summary(ResNet(50, 16)) == "stride 2: conv1, layer2.0, layer3.0; rate 2: layer4.1-2"
    assert dilation_summary(ResNet(50, 8, "smp")) == "stride 2: conv1, layer2.0; rate 2: layer3.0-5; rate 4: layer4.0-2"
    assert dilation_summary(Xception(65, 8)) == ("stride 2: stem.0, blocks.0-1; rate 2: blocks.3-19; "
                                                 "rate 4: blocks.20")
    assert dilation_summary(MobileNetV3()) == "stride 2: 0, 2, 4, 7; rate 2: 13-15"
    assert dilation_summary(ResNet(18, 32)) == "stride 2: conv1, layer2.0, layer3.0, layer4.0; no dilation"
    with pytest.raises(ValueError, match="spec must be a backbone spec with conv_table\\(\\), got str"):
        dilation_summary("resnet50")
