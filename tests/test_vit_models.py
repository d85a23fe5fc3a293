"""The ViT as a DeepLab backbone (issue 14, section 2): the linear head (SETR-naive), v3 and v3+ on a ViT, the
stride-4 stem, resized position embeddings and dilated neighbourhood attention, scratch against the twin in
float64 (forward, every parameter's gradient, dx), the named ViTs' configs, bad input, and both trainers."""

from pathlib import Path

import numpy as np
import pytest
import torch

from minideeplab import train as T
from minideeplab.reference.deeplab import DeepLabModule, to_scratch
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch.deeplab import model_backward
from minideeplab.specs.deeplab import make_config
from minideeplab.specs.segformer import MiT
from minideeplab.specs.vit import ViT
from minideeplab.training import loop as L
from minideeplab.training import numpy_backend as S

from helpers import interrupt_at

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"

# small ViTs built for 16x16 inputs (a 4x4 grid of 4x4 patches); the tests run them on 20x12 (5x3 tokens), and a
# small MiT (SegFormer) run on 40x36 (stages 10x9, 5x5, 3x3, 2x2; spatial reduction in the first three)
SMALL = dict(embed_dim=16, depth=2, num_heads=2, patch_size=4, mlp_ratio=2.0, img_size=(16, 16),
             resize_pos_embed=True)
CASES = {
    "linear-cls": ("linear", ViT(**SMALL)),  # the class token, dropped from the map
    "linear-na": ("linear", ViT(**SMALL, class_token=False, neighbourhood=((0, 3, 2),))),
    "v3-na": ("v3", ViT(**SMALL, class_token=False, neighbourhood=((1, 3, 1),))),
    "v3plus-stem": ("v3plus", ViT(**SMALL, low_level_stem=4)),
    "segformer": ("segformer", MiT((4, 8, 8, 12), (1, 2, 1, 1), (1, 2, 2, 3), sr_ratios=(4, 2, 2, 1))),
}


OPTIONS = {"linear": {}, "v3": {"dropout": 0.0, "aspp_channels": 8},
           "v3plus": {"dropout": 0.0, "aspp_channels": 8, "decoder_channels": 8, "low_level_channels": 4},
           "segformer": {"decoder_channels": 8}}


def _pair(name, spec, seed=0):
    """(twin in float64, train mode, scratch copy): LayerNorms, biases and position embeddings off their init."""
    options = OPTIONS[name]
    torch.manual_seed(seed)
    twin = DeepLabModule(make_config(name, spec, num_classes=3, **options)).double().train()
    with torch.no_grad():
        for k, p in twin.named_parameters():
            if "norm" in k or "pos_embed" in k or "cls_token" in k or "bias" in k:
                p.add_(0.1 * torch.randn_like(p))
    return twin, to_scratch(twin).train()


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_twin_in_float64(case):
    name, spec = CASES[case]
    twin, model = _pair(name, spec)
    x = np.random.default_rng(1).standard_normal((2, 3, *((40, 36) if name == "segformer" else (20, 12))))
    logits, cache = model.forward(x)
    tx = torch.tensor(x, requires_grad=True)
    out = twin(tx)["out"]
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=0, atol=1e-12)
    d = np.random.default_rng(2).standard_normal(logits.shape)
    out.backward(torch.from_numpy(d))
    dx, grads = model_backward(d, cache)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    assert list(grads) == [k for k, _ in twin.named_parameters()]
    for k, p in twin.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=0, atol=1e-10, err_msg=k)
    # eval: the same logits as the twin's, running statistics in the stem
    twin.eval(), model.eval()
    with torch.no_grad():
        want = twin(torch.from_numpy(x))["out"].numpy()
    np.testing.assert_allclose(model(x), want, rtol=0, atol=1e-12)


def test_named_vits():
    shapes = {n: scratch.model_parameter_shapes(make_config(n, "vit_mini", num_classes=7))[0]
              for n in ("linear", "v3", "v3plus")}
    assert list(shapes["linear"])[-2:] == ["classifier.weight", "classifier.bias"]
    assert shapes["linear"]["classifier.weight"] == (7, 192, 1, 1)
    # the stride-4 stem only where the model reads low_level
    assert "backbone.stem.0.0.weight" in shapes["v3plus"]
    assert not any(k.startswith("backbone.stem") for k in shapes["v3"])
    v3 = make_config("v3", "vit_mini", num_classes=7)
    assert v3.atrous_rates == (2, 4, 6) and v3.aspp_channels == 64 and v3.output_stride == 16  # the ablation's /3
    assert make_config("v3plus", "vit_mini").decoder.low_level_in == 32
    tiny = make_config("v3", "vit_tiny")
    assert tiny.backbone.embed_dim == 192 and tiny.backbone.depth == 12 and tiny.backbone.class_token
    assert tiny.atrous_rates == (4, 7, 10) and tiny.aspp_channels == 256  # 14x14 grid: round(r * 14 / 24)
    assert make_config("linear").backbone.name == "vit_mini"
    na = make_config("linear", "vit_mini_na").backbone
    assert na.windows == {0: (3, 1), 1: (3, 2), 2: (3, 1), 3: (3, 2)} and not na.class_token


def test_scratch_build_model_initialises_the_transformer():
    """init_params: LayerNorm weights 1, linear weights N(0, 0.02), position embeddings N(0, 0.02)."""
    m = scratch.build_model("linear", "vit_mini", num_classes=3, rng=np.random.default_rng(0))
    p = m.params
    assert np.all(p["backbone.blocks.0.norm1.weight"] == 1) and np.all(p["backbone.norm.bias"] == 0)
    assert 0.015 < p["backbone.blocks.0.attn.qkv.weight"].std() < 0.025
    assert 0.015 < p["backbone.pos_embed"].std() < 0.025
    assert m(np.zeros((1, 3, 32, 48), np.float32)).shape == (1, 3, 32, 48)


BAD = [
    (lambda: scratch.build_model("linear", "vit_mini").forward(np.zeros((2, 1, 32, 32), np.float32)),
     r"x has shape \(2, 1, 32, 32\), expected 3 channels"),
    (lambda: scratch.build_model("linear", "vit_mini")(np.zeros((1, 3, 40, 32), np.float32)),
     r"x has shape \(1, 3, 40, 32\), but vit_mini needs H and W multiples of its patch_size=16"),
    (lambda: scratch.build_model("linear", ViT(embed_dim=16, depth=1, num_heads=2, img_size=(32, 32)))(
        np.zeros((1, 3, 48, 32), np.float32)),
     r"x has shape \(1, 3, 48, 32\), but the position embeddings are for 32x32 inputs .*resize_pos_embed=True"),
    (lambda: make_config("v3plus", ViT(embed_dim=16, depth=1, num_heads=2)),
     r"v3plus reads stride-4 'low_level' features, which vit has none of"),
    (lambda: make_config("v3", "vit_mini", output_stride=8), r"vit_mini has output stride 16 .* got output_stride=8"),
    (lambda: make_config("linear", "mini"), r"linear \(SETR-naive\) needs a ViT backbone"),
    (lambda: make_config("linear", "vit_mini", atrous_rates=(1, 2)), r"linear \(SETR-naive\) has no atrous"),
    (lambda: ViT(neighbourhood=((0, 3, 2),)), r"neighbourhood attention needs class_token=False"),
    (lambda: ViT(class_token=False, neighbourhood=((12, 3, 2),)), r"must name a block in 0..11"),
    (lambda: ViT(class_token=False, neighbourhood=((0, 4, 2),)), r"an odd kernel"),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------- trainers


def _tiny(out, **kw):
    base = dict(model="v3", backbone="vit_mini", data_root=str(DATA), out=str(out), epochs=2, batch_size=2,
                crop_size=32, train_images=4, eval_every=0, seed=0)
    return T.TrainConfig(**{**base, **kw})


def _quiet(*_):
    pass


@pytest.mark.usefixtures("one_torch_thread")
def test_torch_trainer_loss_falls_on_a_repeated_batch(tmp_path):
    """Two whole images (scaled to the 32x32 crop: only the flip changes) for 12 iterations of ViT + linear head:
    the loss falls well under its start."""
    config = _tiny(tmp_path, model="linear", epochs=12, train_images=2, scale_range=(0.25, 0.25), lr=0.05)
    losses = T.train(config, quiet=True, log=_quiet)["losses"]
    assert len(losses) == 12 and min(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("model, backbone", [("v3plus", "vit_mini_na"),  # stem, ASPP, decoder, both attentions
                                             ("segformer", "mit_mini")])
def test_numpy_trainer_matches_the_torch_trainer_and_checkpoints_roundtrip(tmp_path, monkeypatch, model, backbone):
    """float64, no dropout: the NumPy trainer's losses are the torch trainer's from the same weights and batches,
    and its checkpoint loads into the twin with exactly its weights; a NumPy run interrupted after its first
    epoch and resumed reaches the uninterrupted one's weights."""
    options = {"dropout": 0.0} if model == "v3plus" else {}
    kw = dict(model=model, backbone=backbone, dtype="float64", model_options=options)
    a = T.train(_tiny(tmp_path / "torch", **kw), quiet=True, log=_quiet)
    b = S.train(_tiny(tmp_path / "numpy", **kw), quiet=True, log=_quiet)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-9)
    assert b["losses"][-1] != b["losses"][0]
    twin, _ = T.load_model(tmp_path / "numpy" / "last.pt")
    saved = torch.load(tmp_path / "numpy" / "last.pt", weights_only=True)["model"]
    assert twin.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in twin.state_dict().items())
    config = _tiny(tmp_path / "resumed", **kw)
    with monkeypatch.context() as m:
        interrupt_at(m, L, 2)
        with pytest.raises(KeyboardInterrupt):
            S.train(config, quiet=True, log=_quiet)
    c = S.train(config, resume=True, quiet=True, log=_quiet)
    assert c["losses"] == b["losses"]
    for k, v in b["model"].items():
        assert torch.equal(c["model"][k], v), k
