"""gradcheck (numerical gradients, per-group errors) and the notebook 06 figures."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minideeplab.gradcheck import group_errors, numerical_gradient, parameter_group  # noqa: E402


def test_numerical_gradient_of_a_cubic_restores_x_and_reads_closures():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    before = x.copy()
    g = numerical_gradient(lambda a: float((a ** 3).sum()), x)
    assert g.shape == x.shape and g.dtype == x.dtype and np.array_equal(x, before)
    assert np.abs(g - 3 * x ** 2).max() < 1e-8 * np.abs(3 * x ** 2).max()
    w = rng.standard_normal(5)  # f ignores its argument and reads w itself: perturbed in place
    g = numerical_gradient(lambda _: float(np.sin(w).sum()), w)
    assert np.abs(g - np.cos(w)).max() < 1e-9


@pytest.mark.parametrize("x, h, message", [(np.arange(3), 1e-5, "float numpy array"),
                                           (np.zeros(3), 0, "h must be a number > 0")])
def test_numerical_gradient_bad_input(x, h, message):
    with pytest.raises(ValueError, match=message):
        numerical_gradient(lambda a: 0.0, x, h)


def test_parameter_group_and_group_errors():
    assert parameter_group("backbone.layer3.1.conv2.weight") == "backbone.layer3"
    assert parameter_group("backbone.conv1.weight") == parameter_group("backbone.bn1.bias") == "backbone.stem"
    assert parameter_group("aspp.convs.1.0.weight") == "aspp" and parameter_group("classifier.bias") == "classifier"
    expected = {"backbone.conv1.weight": np.array([1.0, -2.0]), "backbone.bn1.bias": np.zeros(2),
                "classifier.weight": np.array([4.0])}
    got = {"backbone.conv1.weight": np.array([1.0, -2.2]), "backbone.bn1.bias": np.array([0.0, 1e-3]),
           "classifier.weight": np.array([4.0])}
    errors = group_errors(got, expected)
    assert list(errors) == ["backbone.stem", "classifier"]
    assert errors["backbone.stem"] == pytest.approx(0.1) and errors["classifier"] == 0.0
    with pytest.raises(ValueError, match="keys differ"):
        group_errors({"classifier.weight": np.ones(1)}, expected)
    with pytest.raises(ValueError, match=r"has shape \(2,\), expected \(1,\)"):
        group_errors({**got, "classifier.weight": np.ones(2)}, expected)


def test_step_size_errors_show_truncation_and_rounding():
    from minideeplab.viz.backprop import STEPS, step_size_errors

    e = step_size_errors()
    i = int(np.argmin(np.abs(np.log10(STEPS) + 5)))  # h = 1e-5
    assert e[("float64", "centred")][i] < 1e-8 < e[("float64", "one-sided")][i]
    assert e[("float64", "centred")][0] > 1e-6 and e[("float64", "centred")][-1] > 1e-6  # both ends of the V
    assert 1e-5 < e[("float32", "centred")].min() < 1e-3  # float32 cannot do better than about 1e-4


def test_backprop_figures():
    from matplotlib.figure import Figure

    from minideeplab.viz.backprop import plot_gradient_agreement, plot_step_size

    assert isinstance(plot_step_size(), Figure)
    fig = plot_gradient_agreement({"a": {"stem": 1e-13, "aspp": 0.0}, "b": {"stem": 1e-5, "aspp": 2e-5}}, "t")
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 4
