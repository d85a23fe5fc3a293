"""The ViT from scratch: its twin, float64 gradients vs autograd, and timm's VisionTransformer through from_timm."""

import numpy as np
import pytest
import timm
import torch

from minideeplab.interop import from_timm
from minideeplab.reference.vit import ViTBackbone
from minideeplab.scratch import vit
from minideeplab.specs.vit import ViT

SMALL = ViT(embed_dim=16, depth=2, num_heads=2, patch_size=4, mlp_ratio=2.0, img_size=(12, 8))


def _twin_params(spec, dtype, seed=0):
    torch.manual_seed(seed)
    twin = ViTBackbone(spec).to(dtype)
    with torch.no_grad():
        for p in twin.parameters():  # LayerNorms away from 1 / 0, so that they are tested
            p.add_(0.1 * torch.randn_like(p))
    return twin, {k: v.detach().numpy().copy() for k, v in twin.state_dict().items()}


def test_parameter_names_and_shapes_are_the_twins():
    twin, params = _twin_params(SMALL, torch.float64)
    shapes, buffers = vit.parameter_shapes(SMALL)
    assert buffers == {} and list(shapes) == list(params)
    assert all(shapes[k] == params[k].shape for k in shapes)


def test_forward_and_backward_match_autograd():
    twin, params = _twin_params(SMALL, torch.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 8))
    features, steps, taps = vit.forward(SMALL, params, {}, x, training=True)
    tx = torch.tensor(x, requires_grad=True)
    t = twin(tx)
    for k in ("tokens", "out"):
        np.testing.assert_allclose(features[k], t[k].detach().numpy(), rtol=0, atol=1e-12)
    assert features["out"].shape == (2, 16, 3, 2)
    dout = np.random.default_rng(2).standard_normal(features["out"].shape)
    t["out"].backward(torch.tensor(dout))
    grads, d = {}, dout
    for name, cache in reversed(steps):
        d, g = vit.step_backward(d, cache)
        grads |= g
    np.testing.assert_allclose(d, tx.grad.numpy(), rtol=0, atol=1e-10)
    for k, p in twin.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=0, atol=1e-10, err_msg=k)
    assert taps == {"tokens": "norm", "out": "map"}
    np.testing.assert_allclose(vit.infer(SMALL, params, {}, x)["out"], features["out"], rtol=0, atol=0)


@pytest.mark.parametrize("name, img_size, depth", [("vit_tiny_patch16_224", (64, 48), None),
                                                   ("vit_small_patch16_224", (32, 32), 2)])
def test_from_timm_matches_forward_features(name, img_size, depth):
    torch.manual_seed(0)
    kw = {} if depth is None else {"depth": depth}  # vit_small's width and heads, two of its blocks (time)
    module = timm.create_model(name, pretrained=False, img_size=img_size, **kw).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = from_timm(module)
    x = np.random.default_rng(3).standard_normal((2, 3, *img_size)).astype(np.float32)
    with torch.no_grad():
        want = module.forward_features(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_bad_input_is_named():
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32), depth=1)
    model = from_timm(module)
    with pytest.raises(ValueError, match=r"x has shape \(1, 3, 48, 32\), but the position embeddings are for 32x32"):
        model(np.zeros((1, 3, 48, 32), np.float32))
    with pytest.raises(ValueError, match=r"from_timm: module must be a timm VisionTransformer"):
        from_timm(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"register tokens"):
        from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32), depth=1,
                                    reg_tokens=1))
    with pytest.raises(ValueError, match=r"ViT: embed_dim=10 does not split into num_heads=3"):
        ViT(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match=r"img_size must be \(H, W\), each a multiple of patch_size=16"):
        ViT(img_size=(30, 32))


# ---------------------------------------------------------------------------------------------
# SegFormer (smp's), eval


@pytest.mark.parametrize("encoder, size", [("mit_b0", (64, 96)), ("mit_b1", (32, 32))])
def test_segformer_from_smp_matches_smp(encoder, size):
    import segmentation_models_pytorch as smp

    from minideeplab.interop import from_smp

    torch.manual_seed(0)
    module = smp.Segformer(encoder, encoder_weights=None, classes=5).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
        bn = module.decoder.fuse_stage[1]
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    model = from_smp(module)
    x = np.random.default_rng(4).standard_normal((2, 3, *size)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == want.shape == (2, 5, *size)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
