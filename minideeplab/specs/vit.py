"""The Vision Transformer spec (Dosovitskiy et al. 2021), in timm's ``VisionTransformer`` layout and names.

An image is cut into patch_size x patch_size patches, each projected to ``embed_dim`` channels (a conv with the
patch as kernel and stride, ``patch_embed.proj``); a learned class token is put in front and learned position
embeddings (``pos_embed``, one per token of the grid the model was built for, ``img_size``) are added. Then
``depth`` pre-norm blocks, each x + attn(norm1(x)) and x + mlp(norm2(x)) (multi-head self-attention with one
``qkv`` linear; an MLP fc1 -> GELU (erf) -> fc2 of mlp_ratio x the width), and a last LayerNorm (``norm``).
Every LayerNorm has eps 1e-6 (timm's ViT). The output stride is the patch size.

As a DeepLab backbone (``specs.deeplab``: ``vit_mini``, ``vit_tiny``, ``vit_small``, ``vit_mini_na``) the ViT
gives ``out``, the patch tokens as a (D, H/p, W/p) map (stride 16), and, with ``low_level_stem``, ``low_level``:

* Where the stride-4 feature comes from. The patch embedding is one stride-16 conv, so nothing in a plain ViT
  is at stride 4, and upsampling an early block's tokens (SETR-MLA, DPT's reassembly) only interpolates a
  stride-16 map: it adds no detail finer than a patch, which is what v3+'s decoder is for. The hybrids that
  feed a fine decoder take it from convolutions on the image: TransUNet's skip connections come from the CNN
  stem of the R50-ViT hybrid (Dosovitskiy et al.'s "hybrid architecture"), and ViT-Adapter's spatial prior
  module is a conv stem (stride-2 3x3 convs with batch norm) beside the patch embedding. We take the light
  form of the latter: ``stem``, two 3x3 conv + BN + ReLU units of stride 2 on the image, ``low_level_stem``
  channels wide, beside the patch embedding (the transformer does not read it). Built only for models that
  read ``low_level`` (v3+).
* ASPP rates (``default_aspp_rates``): the paper's (6, 12, 18) were chosen for a 33 x 33 map (513 px at
  stride 16); the ablation (``ablate/study.py``) scales them by 1/3 on its 8 x 8 maps (128 px). The same rule
  for any grid: round(r * g / 24), g the smaller side of the token grid of ``img_size``, at least 1: (2, 4, 6)
  at 128 px, (4, 7, 10) at 224 px.
* Other input sizes (``resize_pos_embed``): the position embeddings are learned for ``img_size``'s grid. True:
  for another grid of patches they are resized bilinearly (align_corners False; the class token's kept), as
  Segmenter's ``resize_pos_embed`` does (timm's ``dynamic_img_size`` resizes bicubically); the input's sides
  must then be multiples of the patch size. False (timm's default, and ``from_timm``'s): another size is a
  ValueError naming x's shape and the grid the embeddings are for.
* Dilated neighbourhood attention (``neighbourhood``, DiNAT): the blocks listed attend, per query, only to the
  kernel x kernel tokens around it whose taps are ``rate`` apart (``scratch.attention.neighbourhood_attention``)
  instead of to every token; the others stay global. A class token has no place on the grid: such a ViT has
  ``class_token=False``.

timm's names: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + H/p * W/p, D), ``patch_embed.proj.{weight,bias}``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.{weight,bias}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from minideeplab.specs.checks import check_flag, check_int, is_int

__all__ = ["ViT", "VIT_LN_EPS", "VIT_SIZES", "PAPER_RATES", "PAPER_GRID"]

VIT_LN_EPS = 1e-6
# timm's names -> (embed_dim, depth, num_heads), patch 16, mlp_ratio 4
VIT_SIZES = {"vit_tiny_patch16_224": (192, 12, 3), "vit_small_patch16_224": (384, 12, 6)}
PAPER_RATES, PAPER_GRID = (6, 12, 18), 24  # the ASPP rates, and the grid side at which they stay as they are


@dataclass(frozen=True)
class ViT:
    """embed_dim D, depth (blocks), num_heads (D must split into them), patch_size p, mlp_ratio (the MLP's
    hidden width = int(D * mlp_ratio)), img_size (H, W): the input size the position embeddings are for (each a
    multiple of p). As a segmentation backbone (see the module's docstring): class_token (timm's; False: none,
    and pos_embed (1, N, D)), resize_pos_embed (other grids: the embeddings resized bilinearly; False: refused),
    low_level_stem (channels of the stride-4 conv stem giving ``low_level``; None: no stem), neighbourhood
    ((block, kernel, rate), ...: those blocks use dilated neighbourhood attention), name (in messages)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    patch_size: int = 16
    mlp_ratio: float = 4.0
    img_size: tuple[int, int] = (224, 224)
    class_token: bool = True
    resize_pos_embed: bool = False
    low_level_stem: int | None = None
    neighbourhood: tuple = ()
    name: str = "vit"
    small_heads: bool = False  # make_config: the DeepLab heads a quarter as wide (MINI_HEAD), as the mini ResNet's

    aux_tap = None

    def __post_init__(self):
        for f in ("embed_dim", "depth", "num_heads", "patch_size"):
            check_int("ViT", f, getattr(self, f))
        for f in ("class_token", "resize_pos_embed", "small_heads"):
            check_flag("ViT", f, getattr(self, f))
        if self.low_level_stem is not None:
            check_int("ViT", "low_level_stem", self.low_level_stem)
        na = self.neighbourhood
        if not isinstance(na, tuple) or not all(isinstance(t, tuple) and len(t) == 3 and all(is_int(v) for v in t)
                                                for t in na):
            raise ValueError(f"ViT: neighbourhood must be a tuple of (block, kernel, rate) int triples, got {na!r}")
        for block, kernel, rate in na:
            if not (0 <= block < self.depth) or kernel < 1 or kernel % 2 == 0 or rate < 1:
                raise ValueError(f"ViT: neighbourhood entry {(block, kernel, rate)!r} must name a block in "
                                 f"0..{self.depth - 1}, an odd kernel >= 1 and a rate >= 1")
        if len({t[0] for t in na}) != len(na):
            raise ValueError(f"ViT: neighbourhood names a block twice: {na!r}")
        if na and self.class_token:
            raise ValueError("ViT: neighbourhood attention needs class_token=False (a class token has no place "
                             "on the token grid)")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViT: embed_dim={self.embed_dim} does not split into num_heads={self.num_heads}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"ViT: mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        size = self.img_size
        if not (isinstance(size, tuple) and len(size) == 2 and all(is_int(s) and s > 0 and s % self.patch_size == 0
                                                                 for s in size)):
            raise ValueError(f"ViT: img_size must be (H, W), each a multiple of patch_size={self.patch_size}, "
                             f"got {size!r}")
        object.__setattr__(self, "img_size", tuple(int(s) for s in size))

    @property
    def output_stride(self) -> int:
        return self.patch_size

    @property
    def label(self) -> str:
        return self.name

    @property
    def out_channels(self) -> int:
        return self.embed_dim

    @property
    def low_level_channels(self) -> int | None:
        """The stride-4 stem's channels (None: no stem, no ``low_level``)."""
        return self.low_level_stem

    @property
    def default_aspp_rates(self) -> tuple[int, ...]:
        """The paper's (6, 12, 18) scaled to the token grid as the ablation scales them (see the docstring)."""
        g = min(self.grid)
        return tuple(max(1, round(r * g / PAPER_GRID)) for r in PAPER_RATES)

    @property
    def prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens: 1 with a class token, else 0."""
        return int(self.class_token)

    @property
    def windows(self) -> dict[int, tuple[int, int]]:
        """block -> (kernel, rate) of the blocks with neighbourhood attention."""
        return {b: (k, r) for b, k, r in self.neighbourhood}

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid of img_size: (H / p, W / p)."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)
