"""The ViT backbone in PyTorch, the twin of ``minideeplab.scratch.vit``: timm's layout and parameter names
(so ``load_state_dict`` takes timm's weights), written with torch's own layers."""

from __future__ import annotations

import torch
from torch import nn

from minideeplab.specs.vit import VIT_LN_EPS, ViT


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViT):
        super().__init__()
        D = spec.embed_dim
        self.norm1, self.attn = nn.LayerNorm(D, eps=VIT_LN_EPS), Attention(D, spec.num_heads)
        self.norm2, self.mlp = nn.LayerNorm(D, eps=VIT_LN_EPS), Mlp(D, spec.mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViT):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, spec.patch_size, stride=spec.patch_size)


class ViTBackbone(nn.Module):
    """forward(x (B, 3, H, W)) -> {"tokens": (B, 1 + N, D), "out": (B, D, H/p, W/p)}."""

    def __init__(self, spec: ViT):
        super().__init__()
        self.spec = spec
        gh, gw = spec.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + gh * gw, spec.embed_dim) * 0.02)
        self.patch_embed = PatchEmbed(spec)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.embed_dim, eps=VIT_LN_EPS)

    def forward(self, x):
        grid = self.patch_embed.proj(x)
        B, D = grid.shape[:2]
        h = torch.cat([self.cls_token.expand(B, -1, -1), grid.flatten(2).transpose(1, 2)], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        tokens = self.norm(h)
        return {"tokens": tokens, "out": tokens[:, 1:].transpose(1, 2).reshape(B, D, *grid.shape[2:])}
