"""SegFormer (Xie et al. 2021): the Mix Transformer encoder (MiT) and the all-MLP decoder, in smp's layout and
names (``segmentation_models_pytorch.Segformer``).

MiT has four stages at strides 4, 8, 16, 32. Stage i embeds its input with an overlapping strided conv
(``patch_embed{i}``: kernel 7 stride 4 for the first, kernel 3 stride 2 after, padding kernel // 2) and a
LayerNorm, then runs ``depths[i]`` blocks and a LayerNorm (``norm{i}``). A block is x + attn(norm1(x)),
x + mlp(norm2(x)): efficient self-attention (keys and values from the token map reduced by an R x R stride-R
conv ``sr`` and a LayerNorm, R = sr_ratios[i]; no position embeddings) and a Mix-FFN (fc1, a depthwise 3x3 conv
on the token map, GELU, fc2). LayerNorm eps: 1e-6 in the blocks and after each stage, 1e-5 in the patch
embeddings and after ``sr`` (smp's).

The decoder: each stage's map through a linear layer to ``decoder_channels`` (``decoder.mlp_stage.{j}``,
j = 0 for the last stage), all resized (bilinear) to stride 4, concatenated (last stage first), fused by a 1x1
conv + BN + ReLU (``decoder.fuse_stage``), classified by a 1x1 conv (``segmentation_head.0``) and upsampled x4
(smp: with align_corners=True there, False for the stages' resizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from minideeplab.specs.checks import check_int

__all__ = ["MiT", "MIT_SIZES", "SegFormerConfig", "MIT_BLOCK_EPS", "MIT_EMBED_EPS", "STAGES"]

STAGES = ("low_level", "stage2", "stage3", "out")  # the backbone's features: the stages' maps, strides 4 to 32

MIT_BLOCK_EPS, MIT_EMBED_EPS = 1e-6, 1e-5
# smp's encoder names -> (widths, depths); heads (1, 2, 5, 8), sr ratios (8, 4, 2, 1), mlp_ratio 4 for all
MIT_SIZES = {"mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)), "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2))}


@dataclass(frozen=True)
class MiT:
    """widths and depths of the four stages, their heads and sr_ratios, mlp_ratio (Mix-FFN's hidden width / D).

    As a DeepLab backbone (``build_model("segformer", backbone="mit_mini")``): features ``STAGES``, the stages'
    maps after their norms at strides 4, 8, 16, 32 ("low_level" the first, "out" the last); name (in messages),
    small_heads (make_config: the heads a quarter as wide, as the mini ResNet's)."""

    widths: tuple[int, int, int, int] = (32, 64, 160, 256)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    name: str = "mit"
    small_heads: bool = False

    aux_tap = None
    default_aspp_rates = None

    @property
    def label(self) -> str:
        return self.name

    @property
    def low_level_channels(self) -> int:
        return self.widths[0]

    @property
    def out_channels(self) -> int:
        return self.widths[3]

    def __post_init__(self):
        for f in ("widths", "depths", "heads", "sr_ratios"):
            v = getattr(self, f)
            if not (isinstance(v, tuple) and len(v) == 4):
                raise ValueError(f"MiT: {f} must be a tuple of 4 (one per stage), got {v!r}")
            for x in v:
                check_int("MiT", f, x)
        for w, h in zip(self.widths, self.heads):
            if w % h:
                raise ValueError(f"MiT: a stage of width {w} does not split into {h} heads")
        check_int("MiT", "mlp_ratio", self.mlp_ratio)

    patch_kernels = (7, 3, 3, 3)
    patch_strides = (4, 2, 2, 2)
    output_stride = 32


@dataclass(frozen=True)
class SegFormerConfig:
    """A SegFormer: its encoder, the number of classes, the decoder's width (smp's default 256)."""

    encoder: MiT
    num_classes: int = 21
    decoder_channels: int = 256

    def __post_init__(self):
        if not isinstance(self.encoder, MiT):
            raise ValueError(f"SegFormerConfig: encoder must be a MiT spec, got {type(self.encoder).__name__}")
        check_int("SegFormerConfig", "num_classes", self.num_classes)
        check_int("SegFormerConfig", "decoder_channels", self.decoder_channels)
