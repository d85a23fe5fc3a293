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

from minideeplab.scratch import mit
from minideeplab.scratch.atrous import conv2d_fused
from minideeplab.scratch.attention import linear
from minideeplab.scratch.layers import resize_bilinear_infer
from minideeplab.scratch.mit import _map, _tokens
from minideeplab.scratch.params import check_subset, sub
from minideeplab.scratch.units import bn_scale_shift
from minideeplab.specs.segformer import STAGES, MiT, SegFormerConfig

__all__ = ["parameter_shapes", "encoder_infer", "segformer_infer", "SegFormer"]


def parameter_shapes(config: SegFormerConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, buffers) name -> shape, smp's names and order: the MiT's (``scratch.mit``) under "encoder.",
    then the decoder and the segmentation head."""
    params = {f"encoder.{k}": v for k, v in mit.parameter_shapes(config.encoder)[0].items()}
    buffers = {}
    E = config.decoder_channels
    for j, D in enumerate(reversed(config.encoder.widths)):
        params |= {f"decoder.mlp_stage.{j}.linear.weight": (E, D), f"decoder.mlp_stage.{j}.linear.bias": (E,)}
    params |= {"decoder.fuse_stage.0.weight": (E, 4 * E, 1, 1), "decoder.fuse_stage.1.weight": (E,),
               "decoder.fuse_stage.1.bias": (E,)}
    buffers |= {"decoder.fuse_stage.1.running_mean": (E,), "decoder.fuse_stage.1.running_var": (E,),
                "decoder.fuse_stage.1.num_batches_tracked": ()}
    params |= {"segmentation_head.0.weight": (config.num_classes, E, 1, 1),
               "segmentation_head.0.bias": (config.num_classes,)}
    return params, buffers


def encoder_infer(spec: MiT, params, x):
    """x (B, 3, H, W) -> the four stages' maps, (B, widths[i], H / 4 / 2^i, W / 4 / 2^i) (rounded up)."""
    features = mit.infer(spec, sub(params, "encoder"), {}, x)
    return [features[name] for name in STAGES]


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
