"""The CRF as a model's last layer (``build_model(..., crf=...)``): the config option, the colours recovered from
the normalised input, the scratch model against its twin (forward and gradients, float64; the exact method
against torch's autograd, the lattice against the MeanField Function around the same scratch lattice), centred
differences of a tiny model, eval, init and names."""

import numpy as np
import pytest
import torch

from minideeplab.gradcheck import numerical_gradient
from minideeplab.reference import deeplab as ref
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch.heads import input_rgb
from minideeplab.specs.heads import INPUT_MEAN, INPUT_STD, CRFHead
from minideeplab.training.data import MEAN, STD, to_tensor

from helpers import rel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# small bandwidths, so that a 32x32 input has structure at their scale
SMALL = dict(n_iters=3, bi_xy_std=8.0, bi_rgb_std=20.0, pos_xy_std=2.0)


def _model(method="lattice", name="v3plus", C=4, seed=0, **crf):
    """A float64 mini model with the CRF layer, no dropout (the twin has no masks to replay), in train mode."""
    m = scratch.build_model(name, "mini", num_classes=C, rng=np.random.default_rng(seed), dtype=np.float64,
                            **({"dropout": 0.0} if name != "v2" else {}), crf=dict(SMALL, method=method, **crf))
    return m.train()


def _input(n=2, size=(32, 32), seed=1):
    """A normalised batch of real colours (x as to_tensor makes it), float64."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    images[:, : size[0] // 2] //= 4  # a dark half: an edge for the bilateral kernel
    return np.stack([to_tensor(im).numpy() for im in images]).astype(np.float64), images


# --------------------------------------------------------------------------- the option


def test_crf_option_resolves_to_a_head():
    c = scratch.make_config("v3plus", "mini", num_classes=5, crf=True)
    assert c.crf == CRFHead(5)
    assert c.steps[-1].name == "crf" and c.steps[-1].inputs == ("scores", "input") and c.steps[-1].output == "scores"
    d = scratch.make_config("v3plus", "mini", num_classes=5, align_corners=True, crf={"n_iters": 2, "bi_w": 6})
    assert (d.crf.n_iters, d.crf.bi_w, d.crf.align_corners, d.crf.num_classes) == (2, 6.0, True, 5)
    assert scratch.make_config("v3plus", "mini", crf=d.crf.__class__(21, n_iters=2)).crf.n_iters == 2
    for off in (None, False):
        assert scratch.make_config("v3", "mini", crf=off).crf is None
        assert [s.name for s in scratch.make_config("v3", "mini", crf=off).steps] == ["classifier"]
    assert "CRF layer (5 iterations)" in scratch.make_config("v2", "mini", crf=True).describe()


@pytest.mark.parametrize("crf, message", [
    ({"n_iter": 5}, "crf: unknown argument 'n_iter'"),
    ({"num_classes": 3}, "crf: num_classes=3 differs from the model's num_classes=21"),
    ({"pos_w": 0}, "pos_w must be a finite number > 0 (learned as its log), got 0"),
    ({"method": "fast"}, "method must be one of 'lattice', 'exact', 'window', got 'fast'"),
    ({"n_iters": -1}, "n_iters must be an int >= 0, got -1"),
    ("yes", "crf must be None, False, True, a dict"),
])
def test_crf_option_errors(crf, message):
    with pytest.raises(ValueError, match="^build_model: .*" + __import__("re").escape(message)):
        scratch.build_model("v3plus", "mini", crf=crf)


# --------------------------------------------------------------------------- the image the head sees


def test_input_rgb_recovers_every_colour_and_the_padding():
    assert (INPUT_MEAN, INPUT_STD) == (MEAN, STD)  # one normalisation: the data's is the spec's
    spec = CRFHead(3)
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 77)], axis=-1).reshape(16, 16, 3)
    for dtype in (np.float32, np.float64):  # the trainers' x: to_tensor's float32, cast for float64 runs
        x = to_tensor(image).numpy().astype(dtype)[None]
        np.testing.assert_array_equal(input_rgb(spec, x)[0], image)
    # predict pads with 0 after normalisation: the mean colour; a training crop's padding (black) stays black
    np.testing.assert_array_equal(input_rgb(spec, np.zeros((1, 3, 2, 2), np.float32))[0, 0, 0], [124, 116, 104])
    black = to_tensor(np.zeros((2, 2, 3), np.uint8)).numpy()[None]
    np.testing.assert_array_equal(input_rgb(spec, black), 0)
    # the twin recovers the same colours: its CRF on a model input matches the scratch head on the image
    x, images = _input()
    np.testing.assert_array_equal(input_rgb(spec, x), images)


# --------------------------------------------------------------------------- scratch against the twin


@pytest.mark.parametrize("method", ["exact", "lattice"])
@pytest.mark.parametrize("name", ["v3plus", "v2"])
def test_forward_and_gradients_match_the_twin(method, name):
    """exact: the twin's CRF is torch's own mean field under autograd; lattice: MeanField, the same scratch
    lattice (torch has none), so the model around it is what is compared."""
    m = _model(method, name)
    x, _ = _input()
    t = ref.to_torch(m)
    assert set(t.state_dict()) == set(m.params) | set(m.buffers)  # the names move the weights
    logits, cache = m.forward(x)
    tx = torch.tensor(x, requires_grad=True)
    out = t(tx)["out"]
    assert rel(logits, out.detach().numpy()) < 1e-12
    q = np.exp(logits)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-12)  # log-probabilities: the loss's softmax is Q itself
    dl = np.random.default_rng(2).standard_normal(logits.shape)
    dx, grads = scratch.model_backward(dl, cache)
    (out * torch.tensor(dl)).sum().backward()
    named = dict(t.named_parameters())
    for k, g in grads.items():
        assert rel(g, named[k].grad.numpy()) < 1e-9, k
    assert rel(dx, tx.grad.numpy()) < 1e-9
    assert all(np.abs(grads[k]).max() > 1e-3 for k in ("crf.log_pos_w", "crf.log_bi_w", "crf.compat"))


def test_centred_differences_of_a_tiny_model():
    """The CRF's parameters and the classifier's bias before it, through the float64 lattice."""
    m = _model("lattice", C=3, seed=4)
    x, _ = _input(size=(24, 24), seed=5)
    dl = np.random.default_rng(6).standard_normal((2, 3, 24, 24))
    _, grads = scratch.model_backward(dl, m.forward(x)[1])
    for k in ("crf.log_pos_w", "crf.log_bi_w", "crf.compat", "classifier.bias"):
        num = numerical_gradient(lambda _: float(np.sum(m.forward(x)[0] * dl)), m.params[k], h=1e-6)
        assert rel(grads[k], num) < 1e-6, k


def test_eval_infer_and_init():
    m = _model("lattice", C=3)
    x, _ = _input()
    m.eval()
    logits = m(x)
    assert rel(logits, m.forward(x)[0]) < 1e-12 and logits.shape == (2, 3, 32, 32)
    assert m.params["crf.log_pos_w"] == pytest.approx(np.log(3.0)) and m.params["crf.log_bi_w"].shape == ()
    np.testing.assert_array_equal(m.params["crf.compat"], 1 - np.eye(3))
    init, _ = scratch.init_model(m.config, np.random.default_rng(0))
    np.testing.assert_array_equal(init["crf.compat"], 1 - np.eye(3))
    torch.manual_seed(0)
    t = ref.build_model("v3plus", "mini", num_classes=3, crf=True).state_dict()
    assert t["crf.log_bi_w"].item() == pytest.approx(np.log(4.0)) and torch.equal(t["crf.compat"], 1 - torch.eye(3))
    torch.manual_seed(0)
    plain = ref.build_model("v3plus", "mini", num_classes=3).state_dict()
    # the CRF draws nothing: the same seed gives the model without it the same weights
    assert all(torch.equal(plain[k], t[k]) for k in plain)
