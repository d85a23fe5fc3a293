"""The Vision Transformer spec (Dosovitskiy et al. 2021), in timm's ``VisionTransformer`` layout and names.

An image is cut into patch_size x patch_size patches, each projected to ``embed_dim`` channels (a conv with the
patch as kernel and stride, ``patch_embed.proj``); a learned class token is put in front and learned position
embeddings (``pos_embed``, one per token of the grid the model was built for, ``img_size``) are added. Then
``depth`` pre-norm blocks, each x + attn(norm1(x)) and x + mlp(norm2(x)) (multi-head self-attention with one
``qkv`` linear; an MLP fc1 -> GELU (erf) -> fc2 of mlp_ratio x the width), and a last LayerNorm (``norm``).
Every LayerNorm has eps 1e-6 (timm's ViT). The output stride is the patch size.

timm's names: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + H/p * W/p, D), ``patch_embed.proj.{weight,bias}``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.{weight,bias}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from minideeplab.specs.checks import check_int, is_int

__all__ = ["ViT", "VIT_LN_EPS", "VIT_SIZES"]

VIT_LN_EPS = 1e-6
# timm's names -> (embed_dim, depth, num_heads), patch 16, mlp_ratio 4
VIT_SIZES = {"vit_tiny_patch16_224": (192, 12, 3), "vit_small_patch16_224": (384, 12, 6)}


@dataclass(frozen=True)
class ViT:
    """embed_dim D, depth (blocks), num_heads (D must split into them), patch_size p, mlp_ratio (the MLP's
    hidden width = int(D * mlp_ratio)), img_size (H, W): the input size the position embeddings are for (each a
    multiple of p)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    patch_size: int = 16
    mlp_ratio: float = 4.0
    img_size: tuple[int, int] = (224, 224)

    def __post_init__(self):
        for f in ("embed_dim", "depth", "num_heads", "patch_size"):
            check_int("ViT", f, getattr(self, f))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViT: embed_dim={self.embed_dim} does not split into num_heads={self.num_heads}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"ViT: mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        size = self.img_size
        if not (isinstance(size, tuple) and len(size) == 2 and all(is_int(s) and s > 0 and s % self.patch_size == 0
                                                                 for s in size)):
            raise ValueError(f"ViT: img_size must be (H, W), each a multiple of patch_size={self.patch_size}, "
                             f"got {size!r}")

    @property
    def output_stride(self) -> int:
        return self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid of img_size: (H / p, W / p)."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)
