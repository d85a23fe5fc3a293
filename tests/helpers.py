"""Helpers shared by the tests."""

from pathlib import Path

import numpy as np

# the course's notebooks, by file name (solutions/ and course/ hold the same ones): test_course.py and the
# graders that tests/conftest.py starts
NOTEBOOKS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "solutions").glob("*.ipynb"))


def rel(a, b):
    """max |a - b| relative to max |b| (shapes must match)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.max(np.abs(b))
    return np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0)


def nontrivial_model(name, dtype=np.float64, seed=0, **kw):
    """``scratch.build_model`` with BN affine parameters, running statistics and biases moved away from
    their initial 1 / 0, so that eval mode and every gradient are non-trivial."""
    from minideeplab import scratch

    m = scratch.build_model(name, rng=np.random.default_rng(seed), dtype=np.float64, **kw)
    nontrivial_params(m.params, m.buffers, np.random.default_rng(seed + 100))
    return cast_model(m, dtype)


def nontrivial_params(params, buffers, rng):
    """In place: BN gammas U(0.5, 1.5), BN betas and biases N(0, 0.1), running means N(0, 0.1), running
    variances U(0.5, 2)."""
    for k, v in params.items():
        if v.ndim == 1:
            bn = k.endswith(".weight") and k[:-7] + ".running_mean" in buffers
            params[k] = rng.uniform(0.5, 1.5, v.shape) if bn else 0.1 * rng.standard_normal(v.shape)
    for k, v in buffers.items():
        if k.endswith("running_mean"):
            buffers[k] = 0.1 * rng.standard_normal(v.shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2, v.shape)


def nontrivial_module(module, seed=0):
    """A torch module with BN affine parameters and running statistics away from 1 / 0 and conv biases
    non-zero (in place), in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return module.eval()


def backbone_matches_autograd(spec, params, buffers, x, training, seed=1):
    """Run the scratch backbone of ``spec`` (forward, then backward with random feature gradients) and its
    twin with autograd on float64 ``x``; assert features equal to 1e-12, dx and every parameter's gradient
    to 1e-10 (``grads_match``), and the running statistics updated alike. -> (features, BackboneCache)."""
    import torch

    from minideeplab.reference import backbone as ref
    from minideeplab.scratch import backbone as sb

    module = ref.params_to_torch(ref.build_backbone(spec), params, {k: v.copy() for k, v in buffers.items()})
    module.train(training)
    feats, cache = sb.backbone_forward(spec, params, buffers, x, training)
    xt = torch.from_numpy(x).requires_grad_()
    ft = module(xt)
    for k in feats:
        assert rel(feats[k], ft[k].detach().numpy()) < 1e-12, k
    rng = np.random.default_rng(seed)
    d = {k: rng.standard_normal(v.shape) for k, v in feats.items()}
    sum((ft[k] * torch.from_numpy(d[k])).sum() for k in ft).backward()
    dx, grads = sb.backbone_backward(spec, d, cache)
    assert rel(dx, xt.grad.numpy()) < 1e-10
    grads_match(grads, module, 1e-10)
    state = module.state_dict()
    for k, v in buffers.items():
        assert np.allclose(v, state[k].numpy(), rtol=1e-12, atol=1e-12), k
    return feats, cache


def grads_match(grads, module, tol):
    """Every parameter's gradient (``grads``, keyed by name) within ``tol`` of the autograd one in
    ``module``, relative to its largest |value| or, for one that is zero up to rounding (a BN bias right
    before a training BN: the batch mean takes it out), to a thousandth of the module's largest gradient."""
    floor = 1e-3 * max(p.grad.abs().max().item() for p in module.parameters())
    for name, p in module.named_parameters():
        expected = p.grad.numpy()
        assert np.abs(grads[name] - expected).max() <= tol * max(np.abs(expected).max(), floor), name


def cast_model(m, dtype):
    """A copy of DeepLab ``m`` with floating parameters and buffers in ``dtype``."""
    from minideeplab import scratch

    return scratch.DeepLab(m.config, {k: v.astype(dtype) for k, v in m.params.items()},
                           {k: v.astype(dtype) if v.dtype.kind == "f" else v.copy() for k, v in m.buffers.items()},
                           m.training, np.random.default_rng(7))


def interrupt_at(monkeypatch, trainer, iteration):
    """Make `trainer` (the module minideeplab.training.loop: both trainers run it) stop with KeyboardInterrupt
    when it is about to run `iteration` (0-based): its poly_lr, asked first in every iteration, raises."""
    poly = trainer.poly_lr

    def interrupted(base, it, max_it, power=0.9):
        if it == iteration:
            raise KeyboardInterrupt
        return poly(base, it, max_it, power)

    monkeypatch.setattr(trainer, "poly_lr", interrupted)
