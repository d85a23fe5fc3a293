"""The ViT backbone in PyTorch, the twin of ``minideeplab.scratch.vit``: timm's layout and parameter names
(so ``load_state_dict`` takes timm's weights), written with torch's own layers; as a segmentation backbone
also the stride-4 conv stem (``stem``), position embeddings resized for other grids and dilated neighbourhood
attention in the blocks the spec lists (``specs.vit``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minideeplab.reference.attention import neighbourhood_mask
from minideeplab.specs.vit import VIT_LN_EPS, ViT

__all__ = ["Attention", "Mlp", "Block", "PatchEmbed", "ViTBackbone", "AttentionCore"]


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d)) v, global or over each query's dilated neighbourhood (window (kernel, rate):
    global attention under ``neighbourhood_mask``, the same numbers as ``reference.attention``'s gathering
    twin, faster on small grids). A module of its own so that ``bench.cost`` counts its multiply-adds
    (``mult_adds``: the neighbourhood's, k^2 keys per query, what the algorithm needs)."""

    def __init__(self, window=None):
        super().__init__()
        self.window = window

    def forward(self, q, k, v, hw=None):
        if self.window is None:
            return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=neighbourhood_mask(hw, *self.window, q.device))

    def mult_adds(self, inputs, out) -> int:
        """q k^T and p v: 2 x (queries x keys per query x head width) per head and image."""
        q, k = inputs[0], inputs[1]
        B, h, N, d = q.shape
        keys = k.shape[2] if self.window is None else self.window[0] ** 2
        return 2 * B * h * N * keys * d


class Attention(nn.Module):
    def __init__(self, dim, heads, window=None):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.core = AttentionCore(window)

    def forward(self, x, hw=None):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = self.core(q, k, v, hw)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViT, window=None):
        super().__init__()
        D = spec.embed_dim
        self.norm1, self.attn = nn.LayerNorm(D, eps=VIT_LN_EPS), Attention(D, spec.num_heads, window)
        self.norm2, self.mlp = nn.LayerNorm(D, eps=VIT_LN_EPS), Mlp(D, spec.mlp_hidden)

    def forward(self, x, hw=None):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViT):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, spec.patch_size, stride=spec.patch_size)


def _stem_unit(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ViTBackbone(nn.Module):
    """forward(x (B, 3, H, W)) -> {"tokens": (B, [1 +] N, D), "out": (B, D, H/p, W/p)[, "low_level": the stem's
    (B, C, H/4, W/4)]}. Initialised as timm's ViT (truncated normal 0.02 for the linear layers and the position
    embeddings, 1e-6 for the class token, LayerNorms 1 / 0) and the stem as torchvision's convs (Kaiming normal,
    fan-out)."""

    def __init__(self, spec: ViT):
        super().__init__()
        if not isinstance(spec, ViT):
            raise ValueError(f"ViTBackbone: spec must be a ViT, got {type(spec).__name__}")
        self.spec = spec
        gh, gw = spec.grid
        D = spec.embed_dim
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.prefix_tokens + gh * gw, D))
        self.patch_embed = PatchEmbed(spec)
        windows = spec.windows
        self.blocks = nn.ModuleList(Block(spec, windows.get(i)) for i in range(spec.depth))
        self.norm = nn.LayerNorm(D, eps=VIT_LN_EPS)
        if spec.low_level_stem:
            C = spec.low_level_stem
            self.stem = nn.Sequential(_stem_unit(3, C), _stem_unit(C, C))
        self._init()

    def _init(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.spec.class_token:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and m.bias is None:  # the stem's
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _pos_embed(self, grid):
        spec, pos = self.spec, self.pos_embed
        if tuple(grid) == spec.grid:
            return pos
        if not spec.resize_pos_embed:
            raise ValueError(f"ViTBackbone: a {grid[0]}x{grid[1]} token grid, but the position embeddings are for "
                             f"{spec.grid[0]}x{spec.grid[1]} ({spec.img_size[0]}x{spec.img_size[1]} inputs)")
        k, D = spec.prefix_tokens, pos.shape[-1]
        own = pos[:, k:].transpose(1, 2).reshape(1, D, *spec.grid)
        resized = F.interpolate(own, size=tuple(grid), mode="bilinear", align_corners=False)
        return torch.cat([pos[:, :k], resized.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x):
        p = self.spec.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"ViTBackbone: x has shape {tuple(x.shape)}, but H and W must be multiples of the "
                             f"patch_size={p}")
        out = {"low_level": self.stem(x)} if self.spec.low_level_stem else {}
        grid = self.patch_embed.proj(x)
        B, D = grid.shape[:2]
        h = grid.flatten(2).transpose(1, 2)
        if self.spec.class_token:
            h = torch.cat([self.cls_token.expand(B, -1, -1), h], dim=1)
        hw = tuple(grid.shape[2:])
        h = h + self._pos_embed(hw)
        for block in self.blocks:
            h = block(h, hw)
        tokens = self.norm(h)
        k = self.spec.prefix_tokens
        return out | {"tokens": tokens, "out": tokens[:, k:].transpose(1, 2).reshape(B, D, *hw)}
