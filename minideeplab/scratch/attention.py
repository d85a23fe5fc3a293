"""The layers of a vision transformer from scratch, forward and backward, in NumPy: what ViT and SegFormer are
made of, and dilated neighbourhood attention, atrous convolution's idea inside attention.

Tokens are (B, N, D) arrays (batch, tokens, channels), float32 or float64; every output has the input's dtype.
Each forward returns (y, cache) and each backward takes (dy, cache); the twins are in
``minideeplab.reference.attention``.

* ``layer_norm``: over the channels of each token (eps 1e-6 as timm's ViT, 1e-5 as torch's default).
* ``gelu``: x * Phi(x), "erf" (exact, ViT's) or "tanh" (the approximation).
* ``linear``: x @ W^T + b, W (out, in) as torch stores it, as one 2-D matrix product (BLAS) over all tokens.
* ``attention``: softmax(q k^T / sqrt(d)) v over (B, heads, tokens, d), the softmax shifted by its row's
  maximum so that no exp overflows.
* ``self_attention``: ViT's multi-head self-attention (one ``qkv`` linear, heads, ``proj``), or SegFormer's
  efficient attention (``q`` from every token, ``kv`` from the token map reduced by a strided conv ``sr`` of
  ratio R and a LayerNorm: R^2 times fewer keys).
* ``neighbourhood_attention``: each query on an (H, W) grid attends only to the k x k keys around it whose
  taps are ``rate`` apart (DiNAT's dilated neighbourhood attention); taps outside the grid are left out. NATTEN,
  DiNAT's library, instead shifts a border pixel's window to stay inside the grid: the same in the interior.

LayerNorm and GELU are written twice: ``layer_norm_naive``, ``gelu_naive`` (and their backwards) in NumPy, for
reading, and ``layer_norm``, ``gelu``, the ones every model calls, which fuse their passes in numba
(``minideeplab.scratch.attention_fast``; float32 GELU evaluates erf by Abramowitz and Stegun's 7.1.26, |error|
<= 1.5e-7, as torch's CPU kernel does). The tests run both against torch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from minideeplab.scratch import attention_fast as _fast
from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.specs.checks import check_float_array, check_int
from minideeplab.specs.conv import shifted_overlap

__all__ = ["layer_norm", "layer_norm_backward", "gelu", "gelu_backward", "layer_norm_naive", "layer_norm_backward_naive",
           "gelu_naive", "gelu_backward_naive", "linear", "linear_backward", "softmax",
           "attention", "attention_backward", "self_attention", "self_attention_backward",
           "neighbourhood_offsets", "neighbourhood_attention", "neighbourhood_attention_backward"]

GELU_FORMS = ("erf", "tanh")


def _check_tokens(fn, name, x, ndim=3):
    check_float_array(fn, name, x)
    if x.ndim != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} dimensions "
                         f"({'(B, N, D)' if ndim == 3 else '(B, heads, N, d)'}), got shape {x.shape}")


def _check_param(fn, name, a, shape, dtype):
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
        got = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{fn}: {name} must be a {np.dtype(dtype).name} array of shape {tuple(shape)}, got {got}")


# ---------------------------------------------------------------------------------------------
# elementwise and per-token layers


def _check_layer_norm(x, gamma, beta):
    check_float_array("layer_norm", "x", x)
    for name, a in (("gamma", gamma), ("beta", beta)):
        _check_param("layer_norm", name, a, (x.shape[-1],), x.dtype)


def layer_norm(x, gamma, beta, eps=1e-6):
    """(..., D) -> (y, cache): (x - mean) / sqrt(var + eps) * gamma + beta over the last axis (biased var).
    One fused pass a token (``layer_norm_naive``: the same in NumPy)."""
    _check_layer_norm(x, gamma, beta)
    D = x.shape[-1]
    y, xhat, inv = _fast.layer_norm_rows(np.ascontiguousarray(x).reshape(-1, D), gamma, beta, eps)
    return y.reshape(x.shape), (xhat.reshape(x.shape), inv.reshape(*x.shape[:-1], 1), gamma)


def layer_norm_backward(dy, cache):
    """-> (dx, dgamma, dbeta)."""
    xhat, inv, gamma = cache
    D = dy.shape[-1]
    d2, xhat2 = np.ascontiguousarray(dy).reshape(-1, D), np.ascontiguousarray(xhat).reshape(-1, D)
    dx = _fast.layer_norm_rows_backward(d2, xhat2, np.ascontiguousarray(inv).reshape(-1), gamma)
    return dx.reshape(dy.shape), (d2 * xhat2).sum(axis=0), d2.sum(axis=0)


def layer_norm_naive(x, gamma, beta, eps=1e-6):
    """``layer_norm`` in NumPy, for reading: (..., D) -> (y, cache (xhat, 1 / sqrt(var + eps), gamma))."""
    _check_layer_norm(x, gamma, beta)
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + x.dtype.type(eps))
    xhat = xc * inv
    return xhat * gamma + beta, (xhat, inv, gamma)


def layer_norm_backward_naive(dy, cache):
    """-> (dx, dgamma, dbeta)."""
    xhat, inv, gamma = cache
    axes = tuple(range(dy.ndim - 1))
    dgamma, dbeta = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    g = dy * gamma
    dx = inv * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dgamma, dbeta


@numba.njit(cache=True)
def _erf_flat(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])


def _erf(x):
    """erf elementwise (NumPy has none; math.erf in one numba loop), in x's dtype."""
    out = np.empty(x.size, x.dtype)
    _erf_flat(np.ascontiguousarray(x).reshape(-1), out)
    return out.reshape(x.shape)


def _check_gelu(x, approximate):
    check_float_array("gelu", "x", x)
    if approximate not in GELU_FORMS:
        raise ValueError(f"gelu: approximate must be one of {GELU_FORMS}, got {approximate!r}")


def gelu(x, approximate="erf"):
    """x * Phi(x): "erf", x/2 (1 + erf(x / sqrt 2)); "tanh", x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    float32 "erf": one fused pass (``attention_fast.gelu_erf32``); otherwise ``gelu_naive``."""
    _check_gelu(x, approximate)
    if approximate == "erf" and x.dtype == np.float32:
        return _fast.gelu_erf32(x)
    return gelu_naive(x, approximate)


def gelu_backward(dy, x, approximate="erf"):
    """-> dx = dy * GELU'(x)."""
    if approximate == "erf" and x.dtype == np.float32 and dy.dtype == np.float32:
        return _fast.gelu_erf32_backward(dy, x)
    return gelu_backward_naive(dy, x, approximate)


def gelu_naive(x, approximate="erf"):
    """``gelu`` in NumPy, for reading (the exact erf in any dtype)."""
    _check_gelu(x, approximate)
    if approximate == "erf":
        return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype)))
    c = x.dtype.type(np.sqrt(2.0 / np.pi))
    return 0.5 * x * (1.0 + np.tanh(c * (x + x.dtype.type(0.044715) * x ** 3)))


def gelu_backward_naive(dy, x, approximate="erf"):
    if approximate == "erf":
        cdf = 0.5 * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype)))
        pdf = np.exp(-0.5 * x * x) / x.dtype.type(np.sqrt(2.0 * np.pi))
        return dy * (cdf + x * pdf)
    c, a = x.dtype.type(np.sqrt(2.0 / np.pi)), x.dtype.type(0.044715)
    t = np.tanh(c * (x + a * x ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x))


def linear(x, weight, bias=None):
    """(..., in) -> (..., out): x @ weight^T + bias; weight (out, in)."""
    check_float_array("linear", "x", x)
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or weight.shape[1] != x.shape[-1] \
            or weight.dtype != x.dtype:
        got = f"{weight.shape} {weight.dtype}" if isinstance(weight, np.ndarray) else type(weight).__name__
        raise ValueError(f"linear: weight must be a {x.dtype} array of shape (out, {x.shape[-1]}) for x {x.shape}, "
                         f"got {got}")
    if bias is not None:
        _check_param("linear", "bias", bias, (weight.shape[0],), x.dtype)
    # One 2-D product over all tokens (NumPy hands a stack of matrices times a transposed view to a slow loop), with
    # W^T copied contiguous first: the copy costs out x in, OpenBLAS then runs 5-30% faster on (tokens x in) x (in x
    # out) products (measured at ViT-tiny's shapes).
    y = np.ascontiguousarray(x).reshape(-1, x.shape[-1]) @ np.ascontiguousarray(weight.T)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear_backward(dy, x, weight):
    """-> (dx, dweight, dbias)."""
    d2, x2 = np.ascontiguousarray(dy).reshape(-1, dy.shape[-1]), np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    dx = (d2 @ weight).reshape(x.shape)
    return dx, d2.T @ x2, d2.sum(axis=0)


# ---------------------------------------------------------------------------------------------
# attention


def softmax(s, axis=-1):
    """exp(s - max) / sum: the maximum shifted out so that no exp overflows (a masked -inf entry gives 0)."""
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v):
    """Scaled dot-product attention. q (B, h, Nq, d), k and v (B, h, Nk, d) -> (out (B, h, Nq, d), cache)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _check_tokens("attention", name, a, ndim=4)
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape} and v {v.shape} must share (B, heads) and d, and k "
                         "and v their token count")
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    # softmax(scale s) in place: the (B, h, Nq, Nk) scores are the largest array here, so no temporaries of their
    # size; float32 in one fused kernel a row (attention_fast.softmax_rows), float64 (gradient checks) in NumPy
    s = q @ k.swapaxes(-1, -2)
    if s.dtype == np.float32:
        p = _fast.softmax_rows(s.reshape(-1, s.shape[-1]), scale).reshape(s.shape)
    else:
        s *= scale
        s -= s.max(axis=-1, keepdims=True)
        p = np.exp(s, out=s)
        p /= p.sum(axis=-1, keepdims=True)
    return p @ v, (q, k, v, p, scale)


def attention_backward(dout, cache):
    """-> (dq, dk, dv)."""
    q, k, v, p, scale = cache
    dv = p.swapaxes(-1, -2) @ dout
    dp = dout @ v.swapaxes(-1, -2)
    # the softmax's backward and the scale, ds = scale p (dp - sum(dp p)), in one pass in place of dp
    Nk = p.shape[-1]
    ds = _fast.softmax_backward_rows(np.ascontiguousarray(p).reshape(-1, Nk), dp.reshape(-1, Nk), scale)
    ds = ds.reshape(dp.shape)
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


class SelfAttentionCache(NamedTuple):
    x: np.ndarray
    heads: int
    q_in: np.ndarray
    kv_in: np.ndarray
    sr: tuple | None   # (the conv's input (B, D, H, W), LayerNorm cache, ratio)
    attn: tuple
    merged: np.ndarray
    window: tuple | None = None  # (kernel, rate): neighbourhood attention's


def _split(t, heads):
    B, N, D = t.shape
    return t.reshape(B, N, heads, D // heads).transpose(0, 2, 1, 3)


def _merge(t):
    B, h, N, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, N, h * d)


def self_attention(x, params, heads, hw=None, sr_ratio=1, ln_eps=1e-5, window=None):
    """Multi-head self-attention. x (B, N, D) -> (y (B, N, D), cache).

    window: (kernel, rate): each query attends only to its dilated neighbourhood on the hw = (H, W) grid
    (``neighbourhood_attention``) instead of to every token.

    params, ViT (timm): ``qkv.weight`` (3D, D), ``qkv.bias``, ``proj.weight`` (D, D), ``proj.bias``.
    SegFormer (sr_ratio R, tokens on an hw = (H, W) grid): ``q.weight``/``q.bias`` (D, D), ``kv.weight``/``kv.bias``
    (2D, D), ``proj.*``, and for R > 1 ``sr.weight`` (D, D, R, R), ``sr.bias``, ``norm.weight``/``norm.bias``: the
    keys and values come from the token map reduced by the R x R stride-R conv and a LayerNorm.
    """
    _check_tokens("self_attention", "x", x)
    B, N, D = x.shape
    check_int("self_attention", "heads", heads, lo=1)
    if D % heads:
        raise ValueError(f"self_attention: the {D} channels do not split into heads={heads}")
    sr = None
    if "qkv.weight" in params:
        qkv = linear(x, params["qkv.weight"], params["qkv.bias"]).reshape(B, N, 3, D)
        q, k, v = (_split(qkv[:, :, i], heads) for i in range(3))
        kv_in = x
    else:
        q = _split(linear(x, params["q.weight"], params["q.bias"]), heads)
        kv_in = x
        if sr_ratio > 1:
            if hw is None or hw[0] * hw[1] != N:
                raise ValueError(f"self_attention: sr_ratio={sr_ratio} needs hw=(H, W) with H*W = {N} tokens, "
                                 f"got hw={hw!r}")
            grid = np.ascontiguousarray(x.transpose(0, 2, 1).reshape(B, D, *hw))
            red = atrous_conv2d(grid, params["sr.weight"], params["sr.bias"], stride=sr_ratio, padding=0)
            red_tokens = red.reshape(B, D, -1).transpose(0, 2, 1)
            kv_in, ln_cache = layer_norm(red_tokens, params["norm.weight"], params["norm.bias"], ln_eps)
            sr = (grid, ln_cache, sr_ratio)
        kv = linear(kv_in, params["kv.weight"], params["kv.bias"]).reshape(B, -1, 2, D)
        k, v = _split(kv[:, :, 0], heads), _split(kv[:, :, 1], heads)
    if window is not None:
        out, attn_cache = neighbourhood_attention(q, k, v, hw, *window)
    else:
        out, attn_cache = attention(q, k, v)
    merged = _merge(out)
    y = linear(merged, params["proj.weight"], params["proj.bias"])
    return y, SelfAttentionCache(x, heads, x, kv_in, sr, attn_cache, merged, window)


def self_attention_backward(dy, cache, params):
    """-> (dx, grads by parameter name)."""
    c, heads = cache, cache.heads
    B, N, D = c.x.shape
    g = {}
    dmerged, g["proj.weight"], g["proj.bias"] = linear_backward(dy, c.merged, params["proj.weight"])
    backward = attention_backward if c.window is None else neighbourhood_attention_backward
    dq, dk, dv = backward(_split(dmerged, heads), c.attn)
    if "qkv.weight" in params:
        dqkv = np.empty((B, N, 3, heads, D // heads), dq.dtype)  # the heads merged straight into one array
        for i, d in enumerate((dq, dk, dv)):
            dqkv[:, :, i] = d.transpose(0, 2, 1, 3)
        dx, g["qkv.weight"], g["qkv.bias"] = linear_backward(dqkv.reshape(B, N, 3 * D), c.x, params["qkv.weight"])
        return dx, g
    dq, dk, dv = _merge(dq), _merge(dk), _merge(dv)
    dx, g["q.weight"], g["q.bias"] = linear_backward(dq, c.x, params["q.weight"])
    dkv_in, g["kv.weight"], g["kv.bias"] = linear_backward(np.concatenate([dk, dv], axis=-1), c.kv_in,
                                                           params["kv.weight"])
    if c.sr is None:
        return dx + dkv_in, g
    grid, ln_cache, R = c.sr
    dred_tokens, g["norm.weight"], g["norm.bias"] = layer_norm_backward(dkv_in, ln_cache)
    Hr, Wr = grid.shape[2] // R, grid.shape[3] // R
    dred = np.ascontiguousarray(dred_tokens.transpose(0, 2, 1).reshape(B, D, Hr, Wr))
    dgrid, g["sr.weight"], g["sr.bias"] = atrous_conv2d_backward(dred, grid, params["sr.weight"], stride=R,
                                                                  padding=0)
    return dx + dgrid.reshape(B, D, N).transpose(0, 2, 1), g


# ---------------------------------------------------------------------------------------------
# dilated neighbourhood attention


def neighbourhood_offsets(k, rate):
    """The k*k (dy, dx) taps of a query's window, rate apart, row-major: (-(k//2)*rate .. (k//2)*rate)."""
    r = k // 2
    return [(i * rate, j * rate) for i in range(-r, r + 1) for j in range(-r, r + 1)]


def _gather(t, hw, offsets):
    """t (B, h, N, d) on an (H, W) grid -> (B, h, N, k*k, d): each token's neighbours at the offsets (0 outside),
    and the (H*W, k*k) mask of the taps inside the grid."""
    B, h, N, d = t.shape
    H, W = hw
    grid = t.reshape(B, h, H, W, d)
    out = np.zeros((B, h, H, W, len(offsets), d), t.dtype)
    inside = np.zeros((H, W, len(offsets)), bool)
    for o, (dy, dx) in enumerate(offsets):
        (ys, xs), (yt, xt) = shifted_overlap(H, W, dy, dx)
        out[:, :, ys, xs, o] = grid[:, :, yt, xt]
        inside[ys, xs, o] = True
    return out.reshape(B, h, N, len(offsets), d), inside.reshape(N, len(offsets))


def _scatter(g, hw, offsets):
    """The transpose of _gather: (B, h, N, k*k, d) neighbour gradients summed back onto their tokens."""
    B, h, N, K, d = g.shape
    H, W = hw
    g = g.reshape(B, h, H, W, K, d)
    out = np.zeros((B, h, H, W, d), g.dtype)
    for o, (dy, dx) in enumerate(offsets):
        (ys, xs), (yt, xt) = shifted_overlap(H, W, dy, dx)
        out[:, :, yt, xt] += g[:, :, ys, xs, o]
    return out.reshape(B, h, N, d)


def neighbourhood_attention(q, k, v, hw, kernel=3, rate=1):
    """Dilated neighbourhood attention. q, k, v (B, heads, H*W, d) on an hw = (H, W) grid -> (out, cache): each
    query attends to the kernel x kernel keys around it whose taps are `rate` apart (taps outside the grid left
    out). rate = 1 is neighbourhood attention; a rate as large as the grid allows sees the whole map sparsely,
    as an atrous conv does."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _check_tokens("neighbourhood_attention", name, a, ndim=4)
    check_int("neighbourhood_attention", "kernel", kernel, lo=1)
    check_int("neighbourhood_attention", "rate", rate, lo=1)
    if kernel % 2 == 0:
        raise ValueError(f"neighbourhood_attention: kernel must be odd (a window centred on its query), got {kernel}")
    if not (q.shape == k.shape == v.shape) or hw is None or len(hw) != 2 or hw[0] * hw[1] != q.shape[2]:
        raise ValueError(f"neighbourhood_attention: q {q.shape}, k {k.shape}, v {v.shape} must have one shape "
                         f"with H*W tokens for hw={hw!r}")
    offsets = neighbourhood_offsets(kernel, rate)
    kn, inside = _gather(k, hw, offsets)
    vn, _ = _gather(v, hw, offsets)
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    s = np.einsum("bhnd,bhnkd->bhnk", q * scale, kn)
    s = np.where(inside, s, -np.inf)
    p = softmax(s)
    out = np.einsum("bhnk,bhnkd->bhnd", p, vn)
    return out, (q, kn, vn, p, scale, hw, offsets)


def neighbourhood_attention_backward(dout, cache):
    """-> (dq, dk, dv)."""
    q, kn, vn, p, scale, hw, offsets = cache
    dvn = np.einsum("bhnk,bhnd->bhnkd", p, dout)
    dp = np.einsum("bhnd,bhnkd->bhnk", dout, vn)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = np.einsum("bhnk,bhnkd->bhnd", ds, kn) * scale
    dkn = np.einsum("bhnk,bhnd->bhnkd", ds, q * scale)
    return dq, _scatter(dkn, hw, offsets), _scatter(dvn, hw, offsets)
