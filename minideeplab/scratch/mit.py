"""SegFormer's Mix Transformer encoder (MiT) as a DeepLab backbone, forward and backward (see
``minideeplab.specs.segformer``; smp's encoder names without ``encoder.``), built from
``minideeplab.scratch.attention``'s layers. ``scratch.backbone`` runs it through its registry; the twin is
``minideeplab.reference.mit.MiTBackbone``; ``scratch.segformer`` is smp's whole SegFormer, eval.

Four stages, each: ``patch_embed{i}`` (an overlapping strided conv with bias, then a LayerNorm: a map in, tokens
out), ``block{i}.{j}`` (x + efficient attention(norm1(x)), then + Mix-FFN(norm2(.)): fc1, a depthwise 3x3 conv on
the token map, GELU, fc2) and ``norm{i}`` (a LayerNorm, tokens back to a map). Each is a step with a cache, one
chain; the stages' maps are the features ``STAGES`` ("low_level" at stride 4 ... "out" at stride 32).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.scratch.attention import (gelu, gelu_backward, layer_norm, layer_norm_backward, linear,
                                           linear_backward, self_attention, self_attention_backward)
from minideeplab.scratch.params import sub
from minideeplab.specs.segformer import MIT_BLOCK_EPS, MIT_EMBED_EPS, STAGES, MiT

__all__ = ["parameter_shapes", "forward", "step_backward", "infer", "mix_ffn_forward", "mix_ffn_backward"]


def parameter_shapes(spec: MiT) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, smp's encoder names and order (no buffers)."""
    params, cin = {}, 3
    for i, (D, k) in enumerate(zip(spec.widths, spec.patch_kernels), start=1):
        params |= {f"patch_embed{i}.proj.weight": (D, cin, k, k), f"patch_embed{i}.proj.bias": (D,),
                   f"patch_embed{i}.norm.weight": (D,), f"patch_embed{i}.norm.bias": (D,)}
        cin = D
    for i, (D, depth, R) in enumerate(zip(spec.widths, spec.depths, spec.sr_ratios), start=1):
        M = D * spec.mlp_ratio
        for j in range(depth):
            b = f"block{i}.{j}"
            params |= {f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,), f"{b}.attn.q.weight": (D, D),
                       f"{b}.attn.q.bias": (D,), f"{b}.attn.kv.weight": (2 * D, D), f"{b}.attn.kv.bias": (2 * D,),
                       f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,)}
            if R > 1:
                params |= {f"{b}.attn.sr.weight": (D, D, R, R), f"{b}.attn.sr.bias": (D,),
                           f"{b}.attn.norm.weight": (D,), f"{b}.attn.norm.bias": (D,)}
            params |= {f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,), f"{b}.mlp.fc1.weight": (M, D),
                       f"{b}.mlp.fc1.bias": (M,), f"{b}.mlp.dwconv.dwconv.weight": (M, 1, 3, 3),
                       f"{b}.mlp.dwconv.dwconv.bias": (M,), f"{b}.mlp.fc2.weight": (D, M), f"{b}.mlp.fc2.bias": (D,)}
        params |= {f"norm{i}.weight": (D,), f"norm{i}.bias": (D,)}
    return params, {}


class StepCache(NamedTuple):
    backward: Callable   # (dy, data) -> (dx, grads)
    data: tuple


def _tokens(m):
    """(B, C, H, W) map -> (B, H*W, C) tokens."""
    B, C = m.shape[:2]
    return m.reshape(B, C, -1).transpose(0, 2, 1)


def _map(t, hw):
    """(B, H*W, C) tokens -> (B, C, H, W) map, contiguous."""
    B, N, C = t.shape
    return np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(B, C, *hw)


def _patch_embed(spec, params, i, x):
    """Stage i's (0-based) overlapping patch embedding: map (B, C, H, W) -> (tokens (B, N, D), hw, StepCache)."""
    s, k, pe = spec.patch_strides[i], spec.patch_kernels[i], f"patch_embed{i + 1}"
    m = atrous_conv2d(x, params[f"{pe}.proj.weight"], params[f"{pe}.proj.bias"], stride=s, padding=k // 2)
    t, ln = layer_norm(_tokens(m), params[f"{pe}.norm.weight"], params[f"{pe}.norm.bias"], MIT_EMBED_EPS)
    return t, m.shape[2:], StepCache(_patch_embed_backward, (pe, x, params[f"{pe}.proj.weight"], s, k, ln,
                                                             m.shape[2:]))


def _patch_embed_backward(dy, data):
    pe, x, w, s, k, ln, hw = data
    dt, dgamma, dbeta = layer_norm_backward(dy, ln)
    dx, dw, db = atrous_conv2d_backward(_map(dt, hw), x, w, stride=s, padding=k // 2)
    return dx, {f"{pe}.proj.weight": dw, f"{pe}.proj.bias": db, f"{pe}.norm.weight": dgamma,
                f"{pe}.norm.bias": dbeta}


def mix_ffn_forward(x, params, hw):
    """Mix-FFN: fc1, the depthwise 3x3 conv on the (H, W) token map, GELU, fc2. x (B, N, D) -> (y, cache)."""
    h = linear(x, params["fc1.weight"], params["fc1.bias"])
    w = params["dwconv.dwconv.weight"]
    hm = _map(h, hw)
    c = _tokens(atrous_conv2d(hm, w, params["dwconv.dwconv.bias"], padding=1, groups=w.shape[0]))
    g = gelu(c)
    return linear(g, params["fc2.weight"], params["fc2.bias"]), (x, hm, c, g, hw)


def mix_ffn_backward(dy, cache, params):
    """-> (dx, grads by parameter name)."""
    x, hm, c, g, hw = cache
    grads = {}
    dg, grads["fc2.weight"], grads["fc2.bias"] = linear_backward(dy, g, params["fc2.weight"])
    w = params["dwconv.dwconv.weight"]
    dhm, grads["dwconv.dwconv.weight"], grads["dwconv.dwconv.bias"] = atrous_conv2d_backward(
        _map(gelu_backward(dg, c), hw), hm, w, padding=1, groups=w.shape[0])
    dx, grads["fc1.weight"], grads["fc1.bias"] = linear_backward(_tokens(dhm), x, params["fc1.weight"])
    return dx, grads


def _block(spec, params, i, j, t, hw):
    """Block j of stage i (0-based): tokens (B, N, D) -> (tokens, StepCache)."""
    prefix = f"block{i + 1}.{j}"
    p = sub(params, prefix)
    h1, ln1 = layer_norm(t, p["norm1.weight"], p["norm1.bias"], MIT_BLOCK_EPS)
    attn_params = sub(p, "attn")
    a, attn_cache = self_attention(h1, attn_params, spec.heads[i], hw=hw, sr_ratio=spec.sr_ratios[i],
                                   ln_eps=MIT_EMBED_EPS)
    t1 = t + a
    h2, ln2 = layer_norm(t1, p["norm2.weight"], p["norm2.bias"], MIT_BLOCK_EPS)
    mlp_params = sub(p, "mlp")
    f, mlp_cache = mix_ffn_forward(h2, mlp_params, hw)
    return t1 + f, StepCache(_block_backward, (prefix, p, attn_params, mlp_params, ln1, attn_cache, ln2, mlp_cache))


def _block_backward(dy, data):
    prefix, p, attn_params, mlp_params, ln1, attn_cache, ln2, mlp_cache = data
    dh2, mlp_grads = mix_ffn_backward(dy, mlp_cache, mlp_params)
    dt1, dn2w, dn2b = layer_norm_backward(dh2, ln2)
    dt1 = dt1 + dy
    dh1, attn_grads = self_attention_backward(dt1, attn_cache, attn_params)
    dt, dn1w, dn1b = layer_norm_backward(dh1, ln1)
    grads = {"norm1.weight": dn1w, "norm1.bias": dn1b} | {f"attn.{k}": v for k, v in attn_grads.items()}
    grads |= {"norm2.weight": dn2w, "norm2.bias": dn2b} | {f"mlp.{k}": v for k, v in mlp_grads.items()}
    return dt + dt1, {f"{prefix}.{k}": v for k, v in grads.items()}


def _norm(params, i, t, hw):
    """Stage i's last LayerNorm, tokens back to a map (B, D, H, W)."""
    y, ln = layer_norm(t, params[f"norm{i + 1}.weight"], params[f"norm{i + 1}.bias"], MIT_BLOCK_EPS)
    return _map(y, hw), StepCache(_norm_backward, (i, ln))


def _norm_backward(dy, data):
    i, ln = data
    dt, dw, db = layer_norm_backward(_tokens(dy), ln)
    return dt, {f"norm{i + 1}.weight": dw, f"norm{i + 1}.bias": db}


def forward(spec: MiT, params, buffers, x, training):
    """x (B, 3, H, W) -> (features {STAGES: (B, widths[i], H / 4 / 2^i, W / 4 / 2^i), rounded up}, steps, taps).
    No dropout, no batch norm: training changes nothing."""
    steps, features, taps, h = [], {}, {}, x
    for i in range(4):
        t, hw, c = _patch_embed(spec, params, i, h)
        steps.append((f"patch_embed{i + 1}", c))
        for j in range(spec.depths[i]):
            t, c = _block(spec, params, i, j, t, hw)
            steps.append((f"block{i + 1}.{j}", c))
        h, c = _norm(params, i, t, hw)
        steps.append((f"norm{i + 1}", c))
        features[STAGES[i]], taps[STAGES[i]] = h, f"norm{i + 1}"
    return features, steps, taps


def step_backward(dy, cache):
    """One step of ``forward`` backwards: (dx, grads)."""
    return cache.backward(dy, cache.data)


def infer(spec: MiT, params, buffers, x):
    """Eval ``forward``: x -> features (the caches dropped as it goes)."""
    return forward(spec, params, buffers, x, False)[0]
