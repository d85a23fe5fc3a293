"""One training step of a scratch DeepLab equals one of torch from the same weights and batch: the SGD
update itself against torch.optim.SGD, then forward, loss, backward and update of the mini v3+."""

import numpy as np
import pytest
import torch

from minideeplab.reference import deeplab as ref
from minideeplab.scratch import deeplab as scratch
from minideeplab.scratch.layers import softmax_cross_entropy

from helpers import nontrivial_model, rel

F32, F64 = np.float32, np.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sgd_step_matches_torch():
    """Three steps with momentum and weight decay, float64, against torch.optim.SGD; without momentum
    too; a key missing from grads is left alone (torch skips a parameter whose grad is None)."""
    rng = np.random.default_rng(0)
    for momentum, wd in ((0.9, 1e-4), (0.0, 0.0), (0.5, 0.0)):
        params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5), "c": rng.standard_normal(2)}
        tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
        opt = torch.optim.SGD(tp.values(), lr=0.1, momentum=momentum, weight_decay=wd)
        state = None
        for _ in range(3):
            grads = {k: rng.standard_normal(v.shape) for k, v in params.items() if k != "c"}
            for k, p in tp.items():
                p.grad = torch.from_numpy(grads[k].copy()) if k in grads else None
            opt.step()
            state = scratch.sgd_step(params, grads, 0.1, momentum, wd, state)
        for k in params:
            assert rel(params[k], tp[k].detach().numpy()) < 1e-14, k
        assert set(state) == ({"a", "b"} if momentum else set())


@pytest.mark.parametrize("dtype, lr, tol", [(F64, 0.01, 1e-10), (F32, 1e-4, 1e-5)], ids=["f64", "f32"])
def test_one_training_step_matches_torch(dtype, lr, tol):
    """The mini DeepLab v3+: forward (training: batch statistics, dropout), softmax cross-entropy with
    ignore 255, backward, SGD with momentum 0.9 and weight decay 1e-4, from the same weights and batch;
    every parameter and buffer ends within ``tol`` (relative to its max) of torch's.

    float64 at lr 0.01: exact to rounding. float32 at lr 1e-4, where conv1 moves 4 % and the other
    weights 1e-5 to 0.4 %: within 1e-5. At lr 0.01 conv1 moves 300 % in this one step, the update is the
    weight, and the float32 gradients' own rounding (~2e-5 of conv1's, torch's as ours, against float64)
    shows through; and a ReLU whose input lies within float32 rounding of 0 (about one batch in two at
    this size, on either side) changes the gradients below it by up to 1e-2 of their max. This batch
    (seed 213) has none on this machine."""
    seed = 213
    model = nontrivial_model("v3plus", dtype, seed=seed, backbone="mini", num_classes=4).train()
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((4, 3, 17, 17)).astype(dtype)
    target = rng.integers(0, 4, (4, 17, 17))
    target[:, :5] = 255  # ignored rows
    model.rng = np.random.default_rng(seed + 2)
    t = ref.to_torch(model)
    before = {k: v.copy() for k, v in model.params.items()}
    opt = torch.optim.SGD(t.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)

    logits, cache = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, target, ignore_index=255)
    grads = model.backward(dlogits, cache)
    scratch.sgd_step(model.params, grads, lr, 0.9, 1e-4, None)

    ref.set_dropout_masks(t, cache.masks)
    out = t(torch.from_numpy(x))["out"]
    tloss = torch.nn.functional.cross_entropy(out, torch.from_numpy(target), ignore_index=255)
    opt.zero_grad()
    tloss.backward()
    opt.step()
    assert loss.dtype == dtype and abs(float(loss) - tloss.item()) <= max(tol, 1e-6) * tloss.item()
    state = t.state_dict()
    for k, v in model.params.items():
        assert v.dtype == dtype and rel(v, state[k].numpy()) <= tol, k
        assert not np.array_equal(v, before[k]), k  # every parameter moved
    for k, v in model.buffers.items():
        assert rel(v, state[k].numpy()) <= tol, k


