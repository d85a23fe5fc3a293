"""The transformer layers from scratch against their torch twins: forwards, and float64 gradients vs autograd."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minideeplab.reference import attention as ref
from minideeplab.scratch import attention as att
from minideeplab.scratch import attention_fast as fast

RNG = np.random.default_rng(0)


def _t(a):
    return torch.tensor(a, requires_grad=True)


# the fast layers (numba, what the models call) and the readable NumPy ones: one suite over both
FAST = dict(layer_norm=att.layer_norm, layer_norm_backward=att.layer_norm_backward, gelu=att.gelu,
            gelu_backward=att.gelu_backward)
NAIVE = dict(layer_norm=att.layer_norm_naive, layer_norm_backward=att.layer_norm_backward_naive, gelu=att.gelu_naive,
             gelu_backward=att.gelu_backward_naive)


@pytest.mark.parametrize("impl", [FAST, NAIVE], ids=["fast", "naive"])
def test_layer_norm_gelu_linear_match_torch(impl):
    x, dy = RNG.standard_normal((2, 5, 8)), RNG.standard_normal((2, 5, 8))
    gamma, beta = RNG.standard_normal(8), RNG.standard_normal(8)
    y, cache = impl["layer_norm"](x, gamma, beta, 1e-6)
    tx, tg, tb = _t(x), _t(gamma), _t(beta)
    ty = F.layer_norm(tx, (8,), tg, tb, 1e-6)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    for got, want in zip(impl["layer_norm_backward"](dy, cache), (tx.grad, tg.grad, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-10)

    for form, torch_form in (("erf", "none"), ("tanh", "tanh")):
        tx = _t(x)
        ty = F.gelu(tx, approximate=torch_form)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(impl["gelu"](x, form), ty.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(impl["gelu_backward"](dy, x, form), tx.grad.numpy(), atol=1e-10)
    assert np.abs(impl["gelu"](x, "erf") - impl["gelu"](x, "tanh")).max() > 1e-5  # the two forms are not the same
    assert impl["gelu"](x.astype(np.float32)).dtype == np.float32

    w, b, dz = RNG.standard_normal((3, 8)), RNG.standard_normal(3), RNG.standard_normal((2, 5, 3))
    tx, tw, tb = _t(x), _t(w), _t(b)
    tz = F.linear(tx, tw, tb)
    tz.backward(torch.tensor(dz))
    np.testing.assert_allclose(att.linear(x, w, b), tz.detach().numpy(), atol=1e-12)
    for got, want in zip(att.linear_backward(dz, x, w), (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-10)


@pytest.mark.parametrize("impl", [FAST, NAIVE], ids=["fast", "naive"])
def test_float32_layers_match_torch_float32(impl):
    """float32, ViT's sizes of values: the fast GELU's erf (A&S 7.1.26) and the fused LayerNorm, against torch's
    float32 kernels, over the range GELU sees (|x| up to 10, where Phi is 0 or 1 in float32)."""
    x = np.concatenate([np.linspace(-10, 10, 2001), RNG.standard_normal(63) * 3]).astype(np.float32).reshape(4, 12, 43)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = F.gelu(tx)
    ty.backward(torch.tensor(dy))
    y, dx = impl["gelu"](x), impl["gelu_backward"](dy, x)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(impl["gelu"](np.float32([-10, 0, 10])), [0, 0, 10], atol=1e-12, rtol=0)

    gamma, beta = (1 + 0.1 * RNG.standard_normal(43)).astype(np.float32), RNG.standard_normal(43).astype(np.float32)
    x = (2 * RNG.standard_normal(x.shape) + 0.5).astype(np.float32)  # tokens: rows of spread-out values
    y, cache = impl["layer_norm"](x, gamma, beta, 1e-6)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    ty = F.layer_norm(tx, (43,), tg, tb, 1e-6)
    ty.backward(torch.tensor(dy))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-5)
    for got, want in zip(impl["layer_norm_backward"](dy, cache), (tx.grad, tg.grad, tb.grad)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4 * np.abs(want.numpy()).max())


def test_fast_layers_run_without_numba():
    """Students step through the kernels with NUMBA_DISABLE_JIT=1: the fused layers give the readable ones' numbers."""
    script = textwrap.dedent("""
        import numba
        import numpy as np
        assert numba.config.DISABLE_JIT
        from minideeplab.scratch import attention as att
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            x, dy = (rng.standard_normal((2, 3, 5)).astype(dtype) for _ in range(2))
            g, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            (y, c), (y0, c0) = att.layer_norm(x, g, b), att.layer_norm_naive(x, g, b)
            assert np.abs(y - y0).max() < tol
            for u, v in zip(att.layer_norm_backward(dy, c), att.layer_norm_backward_naive(dy, c0)):
                assert np.abs(u - v).max() < tol
            assert np.abs(att.gelu(x) - att.gelu_naive(x)).max() < tol
            assert np.abs(att.gelu_backward(dy, x) - att.gelu_backward_naive(dy, x)).max() < tol
            q = x.reshape(1, 2, 3, 5)
            out, cache = att.attention(q, q, q)
            dq, dk, dv = att.attention_backward(out, cache)
            assert dq.shape == q.shape and np.isfinite(dq).all()
        from minideeplab.scratch import attention_fast as fast
        x = np.float32([-np.inf, -100, -87, -20.5, -1, 0, 1, 30.25])
        assert np.abs(fast.exp32_array(x) / np.exp(x.astype(np.float64)).clip(1e-300) - 1)[2:].max() < 2e-7
        assert fast.exp32_array(x)[0] == fast.exp32_array(x)[1] == 0
        s = rng.standard_normal((3, 7)).astype(np.float32)
        want = np.exp(0.5 * (s - s.max(1, keepdims=True)))
        assert np.abs(fast.softmax_rows(s.copy(), 0.5) - want / want.sum(1, keepdims=True)).max() < 1e-6
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, NUMBA_DISABLE_JIT="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attention_softmax_is_safe_from_overflow(dtype):
    q = np.full((1, 1, 2, 4), 400.0, dtype)
    out, _ = att.attention(q, q * np.array([1, -1], dtype)[None, None, :, None], np.ones((1, 1, 2, 4), dtype))
    assert np.all(np.isfinite(out))  # scores of 80,000: a naive exp overflows
    np.testing.assert_allclose(out, 1.0)


def test_exp32_is_as_accurate_as_numpys():
    """The fused kernels' exp (2^n 2^f, a fitted polynomial) against float64 exp, over every float32 exponent it
    serves: relative error <= 1.5e-7 (NumPy's float32 exp: about 2e-7); 0 below -87.3 and at -inf, inf above 88."""
    x = np.concatenate([np.linspace(-87.3, 88.0, 400_001), RNG.uniform(-20, 0, 10_000)]).astype(np.float32)
    got, want = fast.exp32_array(x), np.exp(x.astype(np.float64))
    assert got.dtype == np.float32 and got.shape == x.shape
    rel = np.abs(got / want - 1)[want > 1.2e-38]
    assert rel.max() <= 1.5e-7, f"worst relative error {rel.max():.3g} at x = {x[want > 1.2e-38][rel.argmax()]}"
    edge = fast.exp32_array(np.float32([-np.inf, -1e30, -88.0, 0.0, 88.5, np.inf]))
    np.testing.assert_array_equal(edge, [0, 0, 0, 1, np.inf, np.inf])


def test_softmax_rows_matches_torch():
    """The fused float32 softmax (in place, scale inside, -inf keys masked to 0) against torch's."""
    s = (4 * RNG.standard_normal((50, 197))).astype(np.float32)
    s[3, 10:] = -np.inf  # a row with few keys left
    want = torch.softmax(0.125 * torch.from_numpy(s), dim=-1).numpy()
    got = s.copy()
    assert fast.softmax_rows(got, 0.125) is got
    np.testing.assert_allclose(got, want, atol=2e-7, rtol=2e-6)
    assert (got[3, 10:] == 0).all() and np.isclose(got[3].sum(), 1)


def _vit_params(D, seed=1):
    rng = np.random.default_rng(seed)
    return {"qkv.weight": 0.3 * rng.standard_normal((3 * D, D)), "qkv.bias": rng.standard_normal(3 * D),
            "proj.weight": 0.3 * rng.standard_normal((D, D)), "proj.bias": rng.standard_normal(D)}


def _segformer_params(D, R, seed=2):
    rng = np.random.default_rng(seed)
    p = {"q.weight": 0.3 * rng.standard_normal((D, D)), "q.bias": rng.standard_normal(D),
         "kv.weight": 0.3 * rng.standard_normal((2 * D, D)), "kv.bias": rng.standard_normal(2 * D),
         "proj.weight": 0.3 * rng.standard_normal((D, D)), "proj.bias": rng.standard_normal(D)}
    if R > 1:
        p |= {"sr.weight": 0.3 * rng.standard_normal((D, D, R, R)), "sr.bias": rng.standard_normal(D),
              "norm.weight": 1 + 0.1 * rng.standard_normal(D), "norm.bias": 0.1 * rng.standard_normal(D)}
    return p


@pytest.mark.parametrize("layout", ["vit", "segformer-r1", "segformer-r2"])
def test_self_attention_matches_autograd(layout):
    D, heads, hw = 8, 2, (4, 6)
    x, dy = RNG.standard_normal((2, 24, D)), RNG.standard_normal((2, 24, D))
    R = 2 if layout == "segformer-r2" else 1
    params = _vit_params(D) if layout == "vit" else _segformer_params(D, R)
    y, cache = att.self_attention(x, params, heads, hw=hw, sr_ratio=R)
    dx, grads = att.self_attention_backward(dy, cache, params)
    tx, tp = _t(x), {k: _t(v) for k, v in params.items()}
    ty = ref.self_attention(tx, tp, heads, hw=hw, sr_ratio=R)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-10)
    assert set(grads) == set(params)
    for k in params:
        np.testing.assert_allclose(grads[k], tp[k].grad.numpy(), atol=1e-10, err_msg=k)


@pytest.mark.parametrize("kernel, rate", [(3, 1), (3, 2), (5, 3), (3, 7)])
def test_neighbourhood_attention_matches_autograd(kernel, rate):
    hw = (5, 7)
    q, k, v, dout = (RNG.standard_normal((2, 2, 35, 4)) for _ in range(4))
    out, cache = att.neighbourhood_attention(q, k, v, hw, kernel, rate)
    tq, tk, tv = _t(q), _t(k), _t(v)
    tout = ref.neighbourhood_attention(tq, tk, tv, hw, kernel, rate)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), atol=1e-12)
    for got, want in zip(att.neighbourhood_attention_backward(dout, cache), (tq.grad, tk.grad, tv.grad)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-10)


def test_a_window_over_the_whole_grid_is_full_attention():
    q, k, v = (RNG.standard_normal((1, 2, 12, 4)) for _ in range(3))
    full, _ = att.attention(q, k, v)
    np.testing.assert_allclose(att.neighbourhood_attention(q, k, v, (3, 4), kernel=7)[0], full, atol=1e-12)
    assert np.abs(att.neighbourhood_attention(q, k, v, (3, 4), kernel=3)[0] - full).max() > 1e-3


@pytest.mark.parametrize("call, match", [
    (lambda x: att.layer_norm(x, np.ones(7), np.zeros(8)), r"layer_norm: gamma must be a float64 array of shape \(8,\)"),
    (lambda x: att.gelu(x, "fast"), r"gelu: approximate must be one of"),
    (lambda x: att.linear(x, np.ones((3, 7))), r"linear: weight must be a float64 array of shape \(out, 8\)"),
    (lambda x: att.self_attention(x, _vit_params(8), heads=3), r"the 8 channels do not split into heads=3"),
    (lambda x: att.self_attention(x, _segformer_params(8, 2), 2, hw=(5, 5), sr_ratio=2), r"hw=\(H, W\) with H\*W = 24"),
    (lambda x: att.neighbourhood_attention(x[None], x[None], x[None], (4, 5)), r"with H\*W tokens for hw=\(4, 5\)"),
    (lambda x: att.neighbourhood_attention(x[None], x[None], x[None], (4, 6), kernel=4), r"kernel must be odd"),
    (lambda x: att.attention(x, x, x), r"q must have 4 dimensions"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(RNG.standard_normal((2, 24, 8)))
