"""Notebook 11's cost table and footprint figure: mixing_macs against torch's own count of the twins' work."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minideeplab.reference.receptive import attention_map_layer, conv_map_layer, neighbourhood_map_layer
from minideeplab.viz.attention import mixing_macs, plot_token_footprints, segformer_stages


def counted_macs(layer, C, hw, monkeypatch):
    """torch's count of the matmuls and convs of layer on a (1, C, H, W) map; attention written as two matmuls
    (torch does not count scaled_dot_product_attention on the CPU)."""
    def sdpa(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    x = torch.zeros(1, C, *hw, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops() // 2  # torch counts a multiply-add as 2 flops


@pytest.mark.parametrize("kind, make, kw", [
    ("attention", lambda C, rng: attention_map_layer(C, 2, rng), {}),
    ("efficient", lambda C, rng: attention_map_layer(C, 2, rng, sr_ratio=2), {"sr_ratio": 2}),
    ("neighbourhood", lambda C, rng: neighbourhood_map_layer(C, 2, 3, 2, rng), {"kernel": 3}),
    ("conv", lambda C, rng: conv_map_layer(C, 3, 2, rng), {"kernel": 3}),
])
def test_mixing_macs_is_what_torch_counts(kind, make, kw, monkeypatch):
    C, hw = 8, (6, 10)
    assert mixing_macs(kind, hw, C, **kw) == counted_macs(make(C, np.random.default_rng(0)), C, hw, monkeypatch)


def test_mixing_macs_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="kind must be one of"):
        mixing_macs("pool", (4, 4), 8)
    with pytest.raises(ValueError, match=r"hw=\(5, 4\) must be divisible by sr_ratio=2"):
        mixing_macs("efficient", (5, 4), 8, sr_ratio=2)


def test_segformer_stages_of_mit_b0():
    lines = segformer_stages(size=512).splitlines()
    assert len(lines) == 6
    assert lines[2].split()[:2] == ["1", "4"] and "7x7 conv, stride 4 (overlapping)" in lines[2]
    assert "128x128" in lines[2] and lines[2].split()[-3] == str(128 * 128 // 64)  # keys per query after R = 8
    assert "16x16" in lines[5] and lines[5].split()[-4] == "1"


def test_footprint_figure_counts_the_pixels_read():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 4, 9, 9)))
    fig = plot_token_footprints({"global": attention_map_layer(4, 1, rng),
                                 "na": neighbourhood_map_layer(4, 1, 3, 2, rng)}, x, (4, 4))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["global\n81 of 81 pixels", "na\n9 of 81 pixels"]
