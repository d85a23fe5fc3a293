"""The Vision Transformer from scratch, forward and backward, in timm's layout and names (see
``minideeplab.specs.vit``), built from ``minideeplab.scratch.attention``'s layers. The twin is
``minideeplab.reference.vit.ViTBackbone``; ``minideeplab.interop.from_timm`` loads timm's weights.

``forward`` returns the features a segmentation head reads: ``tokens`` (B, 1 + N, D), timm's
``forward_features`` (the class token first), and ``out``, the patch tokens as a map (B, D, H/p, W/p), stride p.
Its steps (patch embedding, each block, the last norm, the map) each have a cache; ``step_backward`` runs one
of them backwards, as the other backbones' steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward
from minideeplab.scratch.attention import (gelu, gelu_backward, layer_norm, layer_norm_backward, linear,
                                           linear_backward, self_attention, self_attention_backward)
from minideeplab.scratch.params import sub
from minideeplab.specs.vit import VIT_LN_EPS, ViT

__all__ = ["parameter_shapes", "forward", "step_backward", "infer", "forward_features", "ViTModel"]


def parameter_shapes(spec: ViT) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, in timm's state_dict order. A ViT has no buffers."""
    D, p, M = spec.embed_dim, spec.patch_size, spec.mlp_hidden
    gh, gw = spec.grid
    params = {"cls_token": (1, 1, D), "pos_embed": (1, 1 + gh * gw, D),
              "patch_embed.proj.weight": (D, 3, p, p), "patch_embed.proj.bias": (D,)}
    for i in range(spec.depth):
        b = f"blocks.{i}"
        params |= {f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,),
                   f"{b}.attn.qkv.weight": (3 * D, D), f"{b}.attn.qkv.bias": (3 * D,),
                   f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
                   f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,),
                   f"{b}.mlp.fc1.weight": (M, D), f"{b}.mlp.fc1.bias": (M,),
                   f"{b}.mlp.fc2.weight": (D, M), f"{b}.mlp.fc2.bias": (D,)}
    return params | {"norm.weight": (D,), "norm.bias": (D,)}, {}


class StepCache(NamedTuple):
    backward: Callable   # (dy, data) -> (dx, grads)
    data: tuple


def _check_grid(spec, x):
    H, W = x.shape[2:]
    if (H, W) != tuple(spec.img_size):
        raise ValueError(f"ViT: x has shape {x.shape}, but the position embeddings are for {spec.img_size[0]}x"
                         f"{spec.img_size[1]} inputs ({spec.grid[0]}x{spec.grid[1]} tokens of {spec.patch_size}x"
                         f"{spec.patch_size} pixels); build the model with that img_size")


def patch_embed_forward(spec, params, x):
    """x (B, 3, H, W) -> tokens (B, 1 + N, D): the patches projected, the class token in front, positions added."""
    _check_grid(spec, x)
    p = spec.patch_size
    grid = atrous_conv2d(x, params["patch_embed.proj.weight"], params["patch_embed.proj.bias"], stride=p, padding=0)
    B, D = grid.shape[:2]
    tokens = np.concatenate([np.broadcast_to(params["cls_token"], (B, 1, D)),
                             grid.reshape(B, D, -1).transpose(0, 2, 1)], axis=1)
    return tokens + params["pos_embed"], StepCache(_patch_embed_backward, (x, params["patch_embed.proj.weight"], p,
                                                                          grid.shape))


def _patch_embed_backward(dy, data):
    x, weight, p, shape = data
    B, D, gh, gw = shape
    dgrid = np.ascontiguousarray(dy[:, 1:].transpose(0, 2, 1).reshape(shape))
    dx, dw, db = atrous_conv2d_backward(dgrid, x, weight, stride=p, padding=0)
    return dx, {"cls_token": dy[:, :1].sum(axis=0, keepdims=True), "pos_embed": dy.sum(axis=0, keepdims=True),
                "patch_embed.proj.weight": dw, "patch_embed.proj.bias": db}


def block_forward(x, params, prefix, heads):
    """One pre-norm block: x + attn(norm1(x)), then + mlp(norm2(.)). x (B, T, D) -> (y, StepCache)."""
    p = sub(params, prefix)
    h1, ln1 = layer_norm(x, p["norm1.weight"], p["norm1.bias"], VIT_LN_EPS)
    attn_params = sub(p, "attn")
    a, attn_cache = self_attention(h1, attn_params, heads)
    x1 = x + a
    h2, ln2 = layer_norm(x1, p["norm2.weight"], p["norm2.bias"], VIT_LN_EPS)
    f1 = linear(h2, p["mlp.fc1.weight"], p["mlp.fc1.bias"])
    g = gelu(f1)
    y = x1 + linear(g, p["mlp.fc2.weight"], p["mlp.fc2.bias"])
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
    B, T, D = data
    dtokens = np.zeros((B, T, D), dy.dtype)
    dtokens[:, 1:] = dy.reshape(B, D, T - 1).transpose(0, 2, 1)
    return dtokens, {}


def to_map(spec, tokens):
    """(B, 1 + N, D) -> the patch tokens as a (B, D, H/p, W/p) map (the class token dropped)."""
    B, T, D = tokens.shape
    return np.ascontiguousarray(tokens[:, 1:].transpose(0, 2, 1)).reshape(B, D, *spec.grid)


def forward(spec: ViT, params, buffers, x, training):
    """x (B, 3, H, W), (H, W) = spec.img_size -> (features {"tokens", "out"}, steps, taps). No dropout and no
    batch norm: training changes nothing."""
    steps = []
    h, c = patch_embed_forward(spec, params, x)
    steps.append(("patch_embed", c))
    for i in range(spec.depth):
        h, c = block_forward(h, params, f"blocks.{i}", spec.num_heads)
        steps.append((f"blocks.{i}", c))
    tokens, c = layer_norm(h, params["norm.weight"], params["norm.bias"], VIT_LN_EPS)
    steps += [("norm", StepCache(_norm_backward, c)), ("map", StepCache(_map_backward, tokens.shape))]
    return {"tokens": tokens, "out": to_map(spec, tokens)}, steps, {"tokens": "norm", "out": "map"}


def step_backward(dy, cache):
    """One step of ``forward`` backwards: (dx, grads)."""
    return cache.backward(dy, cache.data)


def infer(spec: ViT, params, buffers, x):
    """Eval ``forward``: x -> features {"tokens", "out"} (the caches are dropped as it goes)."""
    h, _ = patch_embed_forward(spec, params, x)
    for i in range(spec.depth):
        h, _ = block_forward(h, params, f"blocks.{i}", spec.num_heads)
    tokens, _ = layer_norm(h, params["norm.weight"], params["norm.bias"], VIT_LN_EPS)
    return {"tokens": tokens, "out": to_map(spec, tokens)}


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
