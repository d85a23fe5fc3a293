"""The Vision Transformer from scratch, forward and backward, in timm's layout and names (see
``minideeplab.specs.vit``), built from ``minideeplab.scratch.attention``'s layers. The twin is
``minideeplab.reference.vit.ViTBackbone``; ``minideeplab.interop.from_timm`` loads timm's weights.

``forward`` returns the features a segmentation head reads: ``tokens`` (B, 1 + N, D), timm's
``forward_features`` (the class token first), ``out``, the patch tokens as a map (B, D, H/p, W/p), stride p,
and with a ``low_level_stem`` ``low_level``, the stride-4 conv stem's map beside the patch embedding (the
spec's docstring says why). Its steps (the stem's two units, the patch embedding, each block, the last norm, the
map) each have a cache; ``step_backward`` runs one of them backwards, as the other backbones' steps. The stem is
a branch beside the transformer, not a link of its chain, so the ViT has a backward of its own (``backward``),
which ``scratch.backbone`` calls instead of chaining the steps.

Other input sizes: with ``resize_pos_embed`` the position embeddings are resized bilinearly to the input's grid
(and the gradient resized back); without, an input of another size than ``img_size`` is a ValueError.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.scratch.attention import (gelu, gelu_backward, layer_norm, layer_norm_backward, linear,
                                           linear_backward, self_attention, self_attention_backward)
from minideeplab.scratch.layers import relu, relu_backward, resize_bilinear, resize_bilinear_backward
from minideeplab.scratch.params import bn_shapes, sub
from minideeplab.scratch.units import conv_bn_backward, conv_bn_forward, conv_bn_infer
from minideeplab.specs.vit import VIT_LN_EPS, ViT

__all__ = ["parameter_shapes", "forward", "step_backward", "backward", "infer", "forward_features", "ViTModel",
           "STEM_UNITS"]

STEM_UNITS = 2  # the stride-4 stem: two 3x3 conv + BN + ReLU units of stride 2


def parameter_shapes(spec: ViT) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in timm's state_dict order (the stem, ours, last). Without a stem a ViT
    has no buffers."""
    D, p, M = spec.embed_dim, spec.patch_size, spec.mlp_hidden
    gh, gw = spec.grid
    params = {"cls_token": (1, 1, D)} if spec.class_token else {}
    params |= {"pos_embed": (1, spec.prefix_tokens + gh * gw, D),
               "patch_embed.proj.weight": (D, 3, p, p), "patch_embed.proj.bias": (D,)}
    for i in range(spec.depth):
        b = f"blocks.{i}"
        params |= {f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,),
                   f"{b}.attn.qkv.weight": (3 * D, D), f"{b}.attn.qkv.bias": (3 * D,),
                   f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
                   f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,),
                   f"{b}.mlp.fc1.weight": (M, D), f"{b}.mlp.fc1.bias": (M,),
                   f"{b}.mlp.fc2.weight": (D, M), f"{b}.mlp.fc2.bias": (D,)}
    params |= {"norm.weight": (D,), "norm.bias": (D,)}
    buffers = {}
    cin, C = 3, spec.low_level_stem
    for u in range(STEM_UNITS if C else 0):
        params[f"stem.{u}.0.weight"] = (C, cin, 3, 3)
        bn_shapes(params, buffers, f"stem.{u}.1", C)
        cin = C
    return params, buffers


class StepCache(NamedTuple):
    backward: Callable   # (dy, data) -> (dx, grads)
    data: tuple


def input_grid(spec, x) -> tuple[int, int]:
    """The token grid of x: the spec's for img_size; with resize_pos_embed, that of any size whose sides are
    multiples of the patch. Anything else: ValueError naming x's shape."""
    H, W = x.shape[2:]
    p = spec.patch_size
    if (H, W) == tuple(spec.img_size):
        return spec.grid
    if not spec.resize_pos_embed:
        raise ValueError(f"ViT: x has shape {x.shape}, but the position embeddings are for {spec.img_size[0]}x"
                         f"{spec.img_size[1]} inputs ({spec.grid[0]}x{spec.grid[1]} tokens of {p}x{p} pixels); "
                         f"build the model with that img_size (or resize_pos_embed=True)")
    if H % p or W % p:
        raise ValueError(f"ViT: x has shape {x.shape}, but {spec.label} needs H and W multiples of its "
                         f"patch_size={p} (pad the image: H in {H - H % p or p}, {H - H % p + p})")
    return H // p, W // p


def _pos_embed(spec, pos, grid):
    """The position embeddings for a token grid: the spec's own, or their patch part resized bilinearly."""
    if grid == spec.grid:
        return pos
    k, D = spec.prefix_tokens, pos.shape[-1]
    own = np.ascontiguousarray(pos[:, k:].transpose(0, 2, 1)).reshape(1, D, *spec.grid)
    resized = resize_bilinear(own, grid, False).reshape(1, D, -1).transpose(0, 2, 1)
    return np.concatenate([pos[:, :k], resized], axis=1)


def _pos_embed_backward(spec, dpos, grid):
    if grid == spec.grid:
        return dpos
    k, D = spec.prefix_tokens, dpos.shape[-1]
    dgrid = np.ascontiguousarray(dpos[:, k:].transpose(0, 2, 1)).reshape(1, D, *grid)
    down = resize_bilinear_backward(dgrid, (1, D, *spec.grid), False).reshape(1, D, -1).transpose(0, 2, 1)
    return np.concatenate([dpos[:, :k], down], axis=1)


def patch_embed_forward(spec, params, x):
    """x (B, 3, H, W) -> tokens (B, [1 +] N, D): the patches projected, the class token (if any) in front,
    positions added."""
    grid_hw = input_grid(spec, x)
    p = spec.patch_size
    grid = atrous_conv2d(x, params["patch_embed.proj.weight"], params["patch_embed.proj.bias"], stride=p, padding=0)
    B, D = grid.shape[:2]
    tokens = grid.reshape(B, D, -1).transpose(0, 2, 1)
    if spec.class_token:
        tokens = np.concatenate([np.broadcast_to(params["cls_token"], (B, 1, D)), tokens], axis=1)
    return tokens + _pos_embed(spec, params["pos_embed"], grid_hw), StepCache(
        _patch_embed_backward, (spec, x, params["patch_embed.proj.weight"], p, grid.shape))


def _patch_embed_backward(dy, data):
    spec, x, weight, p, shape = data
    k = spec.prefix_tokens
    dgrid = np.ascontiguousarray(dy[:, k:].transpose(0, 2, 1).reshape(shape))
    dx, dw, db = atrous_conv2d_backward(dgrid, x, weight, stride=p, padding=0)
    grads = {"cls_token": dy[:, :1].sum(axis=0, keepdims=True)} if spec.class_token else {}
    grads["pos_embed"] = _pos_embed_backward(spec, dy.sum(axis=0, keepdims=True), shape[2:])
    return dx, grads | {"patch_embed.proj.weight": dw, "patch_embed.proj.bias": db}


def block_forward(x, params, prefix, heads, hw=None, window=None):
    """One pre-norm block: x + attn(norm1(x)), then + mlp(norm2(.)). x (B, T, D) -> (y, StepCache).
    window (kernel, rate): dilated neighbourhood attention on the hw token grid instead of global attention."""
    p = sub(params, prefix)
    h1, ln1 = layer_norm(x, p["norm1.weight"], p["norm1.bias"], VIT_LN_EPS)
    attn_params = sub(p, "attn")
    x1, attn_cache = self_attention(h1, attn_params, heads, hw=hw, window=window)
    x1 += x  # the residuals added in place into the fresh outputs of the linears
    h2, ln2 = layer_norm(x1, p["norm2.weight"], p["norm2.bias"], VIT_LN_EPS)
    f1 = linear(h2, p["mlp.fc1.weight"], p["mlp.fc1.bias"])
    g = gelu(f1)
    y = linear(g, p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    y += x1
    return y, StepCache(_block_backward, (prefix, p, attn_params, ln1, attn_cache, ln2, h2, f1, g))


def _block_backward(dy, data):
    prefix, p, attn_params, ln1, attn_cache, ln2, h2, f1, g = data
    grads = {}
    dg, grads["mlp.fc2.weight"], grads["mlp.fc2.bias"] = linear_backward(dy, g, p["mlp.fc2.weight"])
    dh2, grads["mlp.fc1.weight"], grads["mlp.fc1.bias"] = linear_backward(gelu_backward(dg, f1), h2,
                                                                          p["mlp.fc1.weight"])
    dx1, grads["norm2.weight"], grads["norm2.bias"] = layer_norm_backward(dh2, ln2)
    dx1 += dy
    dh1, attn_grads = self_attention_backward(dx1, attn_cache, attn_params)
    dx, grads["norm1.weight"], grads["norm1.bias"] = layer_norm_backward(dh1, ln1)
    grads |= {f"attn.{k}": v for k, v in attn_grads.items()}
    order = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    return dx + dx1, {f"{prefix}.{k}": grads[k] for k in order}


def _norm_backward(dy, data):
    dx, dw, db = layer_norm_backward(dy, data)
    return dx, {"norm.weight": dw, "norm.bias": db}


def _map_backward(dy, data):
    (B, T, D), k = data
    dtokens = np.zeros((B, T, D), dy.dtype)
    dtokens[:, k:] = dy.reshape(B, D, T - k).transpose(0, 2, 1)
    return dtokens, {}


def to_map(spec, tokens, grid=None):
    """(B, [1 +] N, D) -> the patch tokens as a (B, D, gh, gw) map (the class token dropped); grid (gh, gw):
    the input's token grid (default: img_size's)."""
    B, T, D = tokens.shape
    return np.ascontiguousarray(tokens[:, spec.prefix_tokens:].transpose(0, 2, 1)).reshape(B, D, *(grid or spec.grid))


def _stem_unit_backward(dy, data):
    conv_cache, h = data
    return conv_bn_backward(relu_backward(dy, h), conv_cache)


def _stem_forward(spec, params, buffers, x, training):
    steps, h = [], x
    for u in range(STEM_UNITS):
        pre, c = conv_bn_forward(h, params, buffers, f"stem.{u}.0", f"stem.{u}.1", 2, 1, training)
        h = relu(pre)
        steps.append((f"stem.{u}", StepCache(_stem_unit_backward, (c, pre))))
    return h, steps


def forward(spec: ViT, params, buffers, x, training):
    """x (B, 3, H, W) (img_size, or any multiple of the patch with resize_pos_embed) -> (features {"tokens",
    "out"[, "low_level"]}, steps, taps). No dropout; batch norm only in the stem (training: batch statistics,
    running ones updated in ``buffers``)."""
    steps, features, taps = [], {}, {}
    if spec.low_level_stem:
        features["low_level"], steps = _stem_forward(spec, params, buffers, x, training)
        taps["low_level"] = steps[-1][0]
    grid = input_grid(spec, x)
    h, c = patch_embed_forward(spec, params, x)
    steps.append(("patch_embed", c))
    windows = spec.windows
    for i in range(spec.depth):
        h, c = block_forward(h, params, f"blocks.{i}", spec.num_heads, grid, windows.get(i))
        steps.append((f"blocks.{i}", c))
    tokens, c = layer_norm(h, params["norm.weight"], params["norm.bias"], VIT_LN_EPS)
    steps += [("norm", StepCache(_norm_backward, c)),
              ("map", StepCache(_map_backward, (tokens.shape, spec.prefix_tokens)))]
    features |= {"tokens": tokens, "out": to_map(spec, tokens, grid)}
    return features, steps, taps | {"tokens": "norm", "out": "map"}


def step_backward(dy, cache):
    """One step of ``forward`` backwards: (dx, grads)."""
    return cache.backward(dy, cache.data)


def backward(d, steps, taps):
    """The whole ViT backwards: d {"out" (required), "tokens", "low_level" (optional)} -> (dx, grads). The
    transformer's steps as a chain from "out" (the tokens' gradient joining after "norm"), the stem's from
    "low_level" (its parameters get zero gradients without one), their dx summed."""
    joins = {taps[k]: k for k in d if k not in ("out", "low_level")}
    chain = [(n, c) for n, c in steps if not n.startswith("stem.")]
    stem = [(n, c) for n, c in steps if n.startswith("stem.")]
    grads, dh = {}, d["out"]
    for name, c in reversed(chain):
        if name in joins:
            dh = dh + d[joins[name]]
        dh, g = step_backward(dh, c)
        grads |= g
    if stem:
        ds = d.get("low_level")
        if ds is None:  # nothing flows into the stem: zero gradients of its shape
            last = stem[-1][1].data
            ds = np.zeros_like(last[1])
        for name, c in reversed(stem):
            ds, g = step_backward(ds, c)
            grads |= g
        dh = dh + ds
    return dh, grads


def infer(spec: ViT, params, buffers, x):
    """Eval ``forward``: x -> features {"tokens", "out"[, "low_level"]} (the caches are dropped as it goes)."""
    features = {}
    if spec.low_level_stem:
        h = x
        for u in range(STEM_UNITS):
            h = conv_bn_infer(h, params, buffers, f"stem.{u}.0", f"stem.{u}.1", 2, 1)
        features["low_level"] = h
    grid = input_grid(spec, x)
    h, _ = patch_embed_forward(spec, params, x)
    windows = spec.windows
    for i in range(spec.depth):
        h, _ = block_forward(h, params, f"blocks.{i}", spec.num_heads, grid, windows.get(i))
    tokens, _ = layer_norm(h, params["norm.weight"], params["norm.bias"], VIT_LN_EPS)
    return features | {"tokens": tokens, "out": to_map(spec, tokens, grid)}


def forward_features(spec: ViT, params, x):
    """timm's ``VisionTransformer.forward_features``: x (B, 3, H, W) -> tokens (B, 1 + N, D), class token first."""
    return infer(spec, params, {}, x)["tokens"]


class ViTModel:
    """A scratch ViT holding its weights: ``model(x)`` = ``forward_features(spec, params, x)``."""

    def __init__(self, spec: ViT, params: dict):
        self.spec, self.params = spec, params

    def __call__(self, x):
        return forward_features(self.spec, self.params, x)

    def __repr__(self):
        return f"ViTModel({self.spec!r})"
