"""Multiply-adds counted from shapes on the meta device (minideeplab.bench.cost)."""

import pytest
import torch

from minideeplab.bench.cost import model_mult_adds, mult_adds


def test_mult_adds_counts_a_conv_and_groups_by_child():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2,
                                                                               groups=8)).to("meta")
    assert mult_adds(m, (2, 3, 5, 7)) == {"0": 2 * 8 * 5 * 7 * 3 * 9, "1": 2 * 8 * 5 * 7 * 9}
    with pytest.raises(ValueError, match="must be a torch nn.Module"):
        mult_adds("not a module", (1, 3, 5, 5))


def test_model_mult_adds_orders_the_family():
    v3 = sum(model_mult_adds("v3", "mini", size=(65, 65)).values())
    v3_os8 = sum(model_mult_adds("v3", "mini", 8, size=(65, 65)).values())
    plus = model_mult_adds("v3plus", "mini", size=(65, 65))
    sep = model_mult_adds("v3plus", "mini", size=(65, 65), aspp_separable=True, decoder_separable=True)
    assert set(plus) == {"backbone", "aspp", "decoder", "classifier"}
    assert v3 < v3_os8 and sep["decoder"] < plus["decoder"] and sep["backbone"] == plus["backbone"]
    # at 17x17 (ceil(65 / 4)), the mini's quarter-width decoder: low_level 64 -> 12 (1x1), then 3x3 convs
    # (64 + 12) -> 64 and 64 -> 64; the paper's widths when asked for: 64 -> 48, (256 + 48) -> 256, 256 -> 256
    assert plus["decoder"] == 17 * 17 * (64 * 12 + 76 * 64 * 9 + 64 * 64 * 9)
    full = model_mult_adds("v3plus", "mini", size=(65, 65), aspp_channels=256, low_level_channels=48,
                           decoder_channels=256)
    assert full["decoder"] == 17 * 17 * (64 * 48 + 304 * 256 * 9 + 256 * 256 * 9)
