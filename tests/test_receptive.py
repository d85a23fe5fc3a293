"""Receptive-field arithmetic (minideeplab.scratch.receptive) against torch gradient measurements."""

import numpy as np
import pytest

from minideeplab.reference.receptive import input_footprint, input_gradient, measure_receptive_field
from minideeplab.scratch.receptive import (RF, coverage, effective_kernel_size, footprint,
                                                 receptive_field, sampled_pixels)

STACKS = [
    [(1, 1, 1)],
    [(3, 1, 1)],
    [(3, 1, 2)] * 3,                                   # gridding
    [(3, 1, 1), (3, 1, 2), (3, 1, 5)],                 # hybrid dilated convolution
    [(3, 2, 1), (3, 1, 2), (3, 1, 4)],                 # stride, then multi-grid
    [(7, 2, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2), (3, 1, 2)],
    [(3, 1, 1, "valid"), (3, 2, 1, "valid"), (5, 1, 2, 1)],
    [(2, 2, 1, 0), (3, 1, 2, "valid"), (4, 3, 1, 2)],  # even kernels: start between pixels
    [(5, 3, 2, 0), (3, 2, 3)],
]


@pytest.mark.parametrize("layers", STACKS, ids=[str(s) for s in STACKS])
def test_matches_torch_gradient(layers):
    rf, m = receptive_field(layers), measure_receptive_field(layers)
    assert (rf.size, rf.jump, rf.start) == (m.size, m.jump, m.start)
    f = footprint(layers)
    assert f.shape == (rf.size,)
    np.testing.assert_array_equal(np.outer(f, f), m.grad)  # path counts, not only the mask


def test_start_is_the_centre_of_output_pixel_zero():
    # valid 3x3 then valid 3x3 stride 2: output 0 reads input 0..4, centred on 2
    rf = receptive_field([(3, 1, 1, "valid"), (3, 2, 1, "valid")])
    assert rf == RF(5, 2, 2.0) and rf.first == 0
    g = input_gradient([(3, 1, 1, "valid"), (3, 2, 1, "valid")], 12, (0, 0))
    assert np.nonzero(g.any(axis=0))[0].tolist() == [0, 1, 2, 3, 4]
    # "same" padding with odd kernels keeps every field centred on its output pixel
    assert receptive_field([(3, 2, 1), (5, 2, 3), (3, 1, 6)]).start == 0


def test_effective_kernel_size():
    assert [effective_kernel_size(3, r) for r in (1, 2, 6, 12)] == [3, 5, 13, 25]
    assert effective_kernel_size(1, 24) == 1


def test_gridding_and_its_fixes():
    assert coverage([(3, 1, 2)] * 3) == pytest.approx((7 / 13) ** 2)
    assert coverage([(3, 1, 1), (3, 1, 2), (3, 1, 4)]) == 1.0
    assert coverage([(3, 1, 1), (3, 1, 2), (3, 1, 5)]) == 1.0
    grid = sampled_pixels([(3, 1, 2)] * 3, 17)
    assert grid.shape == (17, 17) and grid[8, 8] == footprint([(3, 1, 2)] * 3)[6] ** 2
    # centred on (8, 8), the 13-pixel field spans rows 2..14 and reads only the even ones
    assert list(np.flatnonzero(grid.any(axis=1))) == list(range(2, 15, 2))


@pytest.mark.parametrize("layers, match", [
    ([(3, 1)], "expected \\(kernel, stride, rate\\)"),
    ([(3, 0, 1)], "stride must be an int >= 1"),
    ([(3, 1, 0)], "rate must be an int >= 1"),
    ([(2.5, 1, 1)], "kernel must be an int >= 1"),
    ([(4, 1, 1)], "odd kernel"),
    ([(3, 1, 1, -1)], "padding must be"),
    ([(3, 1, 1, "full")], "padding must be"),
    (3, "list of"),
])
def test_bad_layers_raise_value_error(layers, match):
    with pytest.raises(ValueError, match=match):
        receptive_field(layers)


def test_effective_kernel_size_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        effective_kernel_size(3, 0)
    with pytest.raises(ValueError, match="kernel"):
        effective_kernel_size(True, 1)


def test_footprints_of_the_check_are_what_torch_measures():
    """The check's expected sets (counted from the taps) equal the package's measurement on each case's layer."""
    from minideeplab.grading.checks.attention import _footprint_cases, _reach

    for desc, layer, taps, x, token in _footprint_cases():
        assert np.array_equal(input_footprint(layer, x, token), _reach(taps, tuple(x.shape[2:]), token)), desc


def test_input_footprint_refuses_a_token_outside_the_output():
    import torch

    with pytest.raises(ValueError, match=r"token \(5, 0\) is outside the output of shape \(1, 2, 4, 4\)"):
        input_footprint(lambda t: t, torch.zeros(1, 2, 4, 4), (5, 0))
