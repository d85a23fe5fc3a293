"""Measuring dilated backbones (bench.cost, reference.receptive.stage_footprint) and notebook 03's tables and figures (viz.backbone)."""

import numpy as np
import pytest
import torch

from minideeplab.reference.backbone import build_backbone, params_to_torch
from minideeplab.bench.cost import conv_macs, forward_cost
from minideeplab.reference.receptive import stage_footprint
from minideeplab.scratch import receptive as rfm
from minideeplab.scratch.backbone import ResNet, init_backbone
from minideeplab.viz.backbone import plan_table, plot_stage_footprints, resnet_layers


def test_conv_macs_match_torchvision_published_costs():
    """torchvision's weight metadata (_ops, 224x224) counts multiply-accumulates, fc included (2048 x 1000)."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights, ResNet101_Weights

    for depth, weights, fc in ((18, ResNet18_Weights, 512), (50, ResNet50_Weights, 2048), (101, ResNet101_Weights, 2048)):
        total = sum(conv_macs(ResNet(depth, 32), 224).values()) + fc * 1000
        assert round(total / 1e9, 3) == weights.IMAGENET1K_V1.meta["_ops"]


def test_dilation_is_free_and_a_removed_stride_costs_the_larger_map():
    m32, m16 = conv_macs(ResNet(50, 32), 513), conv_macs(ResNet(50, 16), 513)
    assert list(m32) == list(m16) == list(ResNet(50, 32).conv_table())
    assert all(m32[k] == m16[k] for k in m32 if not k.startswith("layer4"))
    assert m16["layer4.1.conv2"] == 33 * 33 * 512 * 512 * 9 and m32["layer4.1.conv2"] == 17 * 17 * 512 * 512 * 9
    assert conv_macs(ResNet(50, 16, "smp"), 513) == m16  # the conventions differ in rates only


def test_forward_cost_runs_one_forward_and_restores_threads():
    threads = torch.get_num_threads()
    cost = forward_cost(ResNet("mini", 8), 65)
    assert torch.get_num_threads() == threads
    assert cost["out"] == (1, 512, 9, 9) and cost["seconds"] > 0
    assert cost["gmacs"] == pytest.approx(sum(conv_macs(ResNet("mini", 8), 65).values()) / 1e9)
    assert cost["conv_mb"] > 0


@pytest.mark.parametrize("spec, stages", [(ResNet("mini", 16), ("layer4",)), (ResNet("mini", 8, "smp"), ("layer3", "layer4")),
                                          (ResNet("mini", 32), ("layer2", "layer3")),
                                          (ResNet(18, 16, "smp"), ("layer4",))])
def test_stage_footprint_is_the_outer_product_of_the_stacks_footprint(spec, stages):
    g = stage_footprint(spec, stages)
    blocks = [b for s in stages for b in spec.stages[int(s[-1]) - 1]]
    per_block = 2 if spec.block == "basic" else 1
    layers = [(3, b.stride if k == 0 else 1, b.dilation) for b in blocks for k in range(per_block)]
    f = rfm.footprint(layers) > 0
    assert np.array_equal(g > 0, np.outer(f, f))
    assert (g >= 0).all()


def test_stage_footprint_returns_a_copy_and_rejects_bad_stages():
    a = stage_footprint(ResNet("mini", 16), ("layer4",))
    a[:] = 0
    assert stage_footprint(ResNet("mini", 16), ("layer4",)).max() > 0
    with pytest.raises(ValueError, match="consecutive"):
        stage_footprint(ResNet("mini", 16), ("layer2", "layer4"))
    with pytest.raises(ValueError, match="spec must be a ResNet"):
        stage_footprint({"depth": 50})
    with pytest.raises(ValueError, match="size must be an int >= the output stride 32"):
        conv_macs(ResNet(50, 32), 16)


def test_torchvision_convention_is_the_original_network_on_a_denser_grid():
    """The dilated network (torchvision's convention) equals the undilated one at the original units; smp's does not."""
    params, buffers = init_backbone(ResNet("mini", 32), np.random.default_rng(0))
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 97, 97)).astype(np.float32))

    def out(spec):
        with torch.no_grad():
            return params_to_torch(build_backbone(spec), params, buffers).eval()(x)["out"]

    ref = out(ResNet("mini", 32))
    for os_ in (16, 8):
        k = 32 // os_
        assert torch.allclose(out(ResNet("mini", os_))[..., ::k, ::k], ref, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out(ResNet("mini", os_, "smp"))[..., ::k, ::k], ref, rtol=1e-2, atol=1e-2)


def test_resnet_layers_field_is_kept_by_the_torchvision_convention():
    for os_ in (32, 16, 8):
        assert rfm.receptive_field(resnet_layers(ResNet(50, os_))).size == 427
    assert rfm.receptive_field(resnet_layers(ResNet(50, 16, "smp"))).size == 459
    assert len(resnet_layers(ResNet(18, 32))) == 2 + 2 * 8


def test_plan_table_and_figure():
    text = plan_table({"OS 8 smp": ResNet(50, 8, "smp")})
    assert "2 2 2 2 2 2  4 4 4" in text and "65x65" in text
    with pytest.raises(ValueError, match="name -> ResNet"):
        plan_table({"x": 3})
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_stage_footprints({"a": (ResNet("mini", 16), ("layer4",)), "b": (ResNet("mini", 16, "smp"), ("layer4",))})
    assert len(fig.axes) == 2 and "29% sampled" in fig.axes[1].get_title()


def test_costs_of_any_registered_backbone():
    """conv_macs and forward_cost take any backbone of the registry, VGG-16 LargeFOV too."""
    from minideeplab.specs.backbone import VGG

    macs = conv_macs(VGG(), 321)  # output stride 8: 41 x 41
    assert macs["fc7"] == 41 * 41 * 1024 * 1024 and macs["fc6"] == 41 * 41 * 1024 * 512 * 9
    assert macs["features.0"] == 321 * 321 * 64 * 3 * 9
    cost = forward_cost(VGG(widths=(4, 4, 8, 8, 8), fc_channels=16), 33)
    assert cost["out"] == (1, 16, 5, 5)
    with pytest.raises(ValueError, match="spec must be a ResNet or a VGG or .*, got dict"):
        conv_macs({"depth": 50}, 65)
