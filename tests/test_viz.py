"""Figures build, and the dilation widget really redraws when a slider moves."""

import io

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
