"""SegFormer from scratch, eval: the Mix Transformer encoder and the all-MLP decoder (see
``minideeplab.specs.segformer``; smp's layout and names), built from ``minideeplab.scratch.attention``'s
layers. ``minideeplab.interop.from_smp`` loads smp's ``Segformer`` into a ``SegFormer``. Training: SegFormer is
also a member of the DeepLab family, ``build_model("segformer", backbone="mit_mini" | "mit_b0" | "mit_b1")``: the
MiT encoder as a backbone (``scratch.mit``, forward and backward) and the all-MLP decoder as a head
(``scratch.heads.SEGFORMER_HEAD``), trained by both trainers (there the logits are upsampled with
align_corners=False, as every DeepLab here).
"""

from __future__ import annotations

import numpy as np

from minideeplab.scratch.atrous import atrous_conv2d, conv2d_fused
from minideeplab.scratch.attention import gelu, layer_norm, linear, self_attention
from minideeplab.scratch.layers import resize_bilinear_infer
from minideeplab.scratch.params import check_subset, sub
from minideeplab.scratch.units import bn_scale_shift
from minideeplab.specs.segformer import MIT_BLOCK_EPS, MIT_EMBED_EPS, MiT, SegFormerConfig

__all__ = ["parameter_shapes", "encoder_infer", "mix_ffn", "segformer_infer", "SegFormer"]


def parameter_shapes(config: SegFormerConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, smp's names and order."""
    mit, params, buffers = config.encoder, {}, {}
    cin = 3
    for i, (D, k) in enumerate(zip(mit.widths, mit.patch_kernels), start=1):
        params |= {f"encoder.patch_embed{i}.proj.weight": (D, cin, k, k), f"encoder.patch_embed{i}.proj.bias": (D,),
                   f"encoder.patch_embed{i}.norm.weight": (D,), f"encoder.patch_embed{i}.norm.bias": (D,)}
        cin = D
    for i, (D, depth, R) in enumerate(zip(mit.widths, mit.depths, mit.sr_ratios), start=1):
        M = D * mit.mlp_ratio
        for j in range(depth):
            b = f"encoder.block{i}.{j}"
            params |= {f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,), f"{b}.attn.q.weight": (D, D),
                       f"{b}.attn.q.bias": (D,), f"{b}.attn.kv.weight": (2 * D, D), f"{b}.attn.kv.bias": (2 * D,),
                       f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,)}
            if R > 1:
                params |= {f"{b}.attn.sr.weight": (D, D, R, R), f"{b}.attn.sr.bias": (D,),
                           f"{b}.attn.norm.weight": (D,), f"{b}.attn.norm.bias": (D,)}
            params |= {f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,), f"{b}.mlp.fc1.weight": (M, D),
                       f"{b}.mlp.fc1.bias": (M,), f"{b}.mlp.dwconv.dwconv.weight": (M, 1, 3, 3),
                       f"{b}.mlp.dwconv.dwconv.bias": (M,), f"{b}.mlp.fc2.weight": (D, M), f"{b}.mlp.fc2.bias": (D,)}
        params |= {f"encoder.norm{i}.weight": (D,), f"encoder.norm{i}.bias": (D,)}
    E = config.decoder_channels
    for j, D in enumerate(reversed(mit.widths)):
        params |= {f"decoder.mlp_stage.{j}.linear.weight": (E, D), f"decoder.mlp_stage.{j}.linear.bias": (E,)}
    params |= {"decoder.fuse_stage.0.weight": (E, 4 * E, 1, 1), "decoder.fuse_stage.1.weight": (E,),
               "decoder.fuse_stage.1.bias": (E,)}
    buffers |= {"decoder.fuse_stage.1.running_mean": (E,), "decoder.fuse_stage.1.running_var": (E,),
                "decoder.fuse_stage.1.num_batches_tracked": ()}
    params |= {"segmentation_head.0.weight": (config.num_classes, E, 1, 1),
               "segmentation_head.0.bias": (config.num_classes,)}
    return params, buffers


def _tokens(m):
    """(B, C, H, W) map -> (B, H*W, C) tokens."""
    B, C = m.shape[:2]
    return m.reshape(B, C, -1).transpose(0, 2, 1)


def _map(t, hw):
    """(B, H*W, C) tokens -> (B, C, H, W) map, contiguous."""
    B, N, C = t.shape
    return np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(B, C, *hw)


def mix_ffn(x, params, hw):
    """Mix-FFN: fc1, the depthwise 3x3 conv on the (H, W) token map (its position information), GELU, fc2.
    x (B, N, D) -> (B, N, D)."""
    h = linear(x, params["fc1.weight"], params["fc1.bias"])
    w = params["dwconv.dwconv.weight"]
    h = _tokens(atrous_conv2d(_map(h, hw), w, params["dwconv.dwconv.bias"], padding=1, groups=w.shape[0]))
    return linear(gelu(h), params["fc2.weight"], params["fc2.bias"])


def encoder_infer(mit: MiT, params, x):
    """x (B, 3, H, W) -> the four stages' maps, (B, widths[i], H / 4 / 2^i, W / 4 / 2^i) (rounded up)."""
    maps, h = [], x
    for i in range(4):
        s, k, heads, R = mit.patch_strides[i], mit.patch_kernels[i], mit.heads[i], mit.sr_ratios[i]
        pe = f"encoder.patch_embed{i + 1}"
        m = atrous_conv2d(h, params[f"{pe}.proj.weight"], params[f"{pe}.proj.bias"], stride=s, padding=k // 2)
        hw = m.shape[2:]
        t, _ = layer_norm(_tokens(m), params[f"{pe}.norm.weight"], params[f"{pe}.norm.bias"], MIT_EMBED_EPS)
        for j in range(mit.depths[i]):
            p = sub(params, f"encoder.block{i + 1}.{j}")
            a, _ = self_attention(layer_norm(t, p["norm1.weight"], p["norm1.bias"], MIT_BLOCK_EPS)[0],
                                  sub(p, "attn"), heads, hw=hw, sr_ratio=R, ln_eps=MIT_EMBED_EPS)
            t = t + a
            t = t + mix_ffn(layer_norm(t, p["norm2.weight"], p["norm2.bias"], MIT_BLOCK_EPS)[0], sub(p, "mlp"), hw)
        t, _ = layer_norm(t, params[f"encoder.norm{i + 1}.weight"], params[f"encoder.norm{i + 1}.bias"],
                          MIT_BLOCK_EPS)
        h = _map(t, hw)
        maps.append(h)
    return maps


def segformer_infer(config: SegFormerConfig, params, buffers, x):
    """x (B, 3, H, W) -> logits (B, num_classes, H', W'), H' = 4 * ceil(H / 4) (H itself for the multiples of 32
    smp takes): each stage's map through its linear layer, resized to stride 4, concatenated (last stage first),
    fused, classified, upsampled x4. smp resizes the stages with align_corners=False but upsamples the logits
    with align_corners=True (its SegmentationHead's nn.UpsamplingBilinear2d); so do we."""
    maps = encoder_infer(config.encoder, params, x)
    size = maps[0].shape[2:]
    parts = []
    for j, m in enumerate(reversed(maps)):
        lin = f"decoder.mlp_stage.{j}.linear"
        e = _map(linear(_tokens(m), params[f"{lin}.weight"], params[f"{lin}.bias"]), m.shape[2:])
        parts.append(resize_bilinear_infer(e, size, False) if e.shape[2:] != size else e)
    scale, shift = bn_scale_shift(params, buffers, "decoder.fuse_stage.1")
    fused = conv2d_fused(np.concatenate(parts, axis=1), params["decoder.fuse_stage.0.weight"], scale, shift,
                         padding=0, relu=True)
    w, b = params["segmentation_head.0.weight"], params["segmentation_head.0.bias"]
    logits = conv2d_fused(fused, w, np.ones(w.shape[0], w.dtype), b, padding=0)
    return resize_bilinear_infer(logits, (4 * size[0], 4 * size[1]), True)


class SegFormer:
    """A scratch SegFormer holding its weights: ``model(x)`` -> logits at 4x the stride-4 map's size, the
    input's size for the multiples of 32 smp takes. Eval only."""

    def __init__(self, config: SegFormerConfig, params: dict, buffers: dict):
        check_subset("SegFormer", repr(config), *parameter_shapes(config), params, buffers,
                     next(iter(params.values())).dtype)
        self.config, self.params, self.buffers = config, params, buffers

    def __call__(self, x):
        return segformer_infer(self.config, self.params, self.buffers, x)

    def __repr__(self):
        return f"SegFormer({self.config!r})"
