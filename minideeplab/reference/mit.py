"""SegFormer's MiT encoder in PyTorch, the twin of ``minideeplab.scratch.mit``: smp's encoder names (without
``encoder.``), written with torch's layers. forward(x) -> {``STAGES``: the four stages' maps, strides 4 to 32}."""

from __future__ import annotations

from torch import nn

from minideeplab.reference.vit import AttentionCore
from minideeplab.specs.segformer import MIT_BLOCK_EPS, MIT_EMBED_EPS, STAGES, MiT

__all__ = ["MiTBackbone", "EfficientAttention", "MixFFN", "MiTBlock", "OverlapPatchEmbed"]


class EfficientAttention(nn.Module):
    """q from every token; k, v from the map reduced by an R x R stride-R conv ``sr`` and a LayerNorm ``norm``."""

    def __init__(self, dim, heads, sr_ratio):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=MIT_EMBED_EPS)
        self.core = AttentionCore()

    def forward(self, x, hw):
        B, N, D = x.shape
        kv_in = x
        if self.sr_ratio > 1:
            kv_in = self.norm(self.sr(x.transpose(1, 2).reshape(B, D, *hw)).flatten(2).transpose(1, 2))
        k, v = self.kv(kv_in).chunk(2, dim=-1)

        def split(t):
            return t.reshape(B, -1, self.heads, D // self.heads).transpose(1, 2)

        out = self.core(split(self.q(x)), split(k), split(v))
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class _DWConv(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)


class MixFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.dwconv, self.act, self.fc2 = nn.Linear(dim, hidden), _DWConv(hidden), nn.GELU(), \
            nn.Linear(hidden, dim)

    def forward(self, x, hw):
        h = self.fc1(x)
        B, N, M = h.shape
        h = self.dwconv.dwconv(h.transpose(1, 2).reshape(B, M, *hw)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(h))


class MiTBlock(nn.Module):
    def __init__(self, dim, heads, sr_ratio, mlp_ratio):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=MIT_BLOCK_EPS), EfficientAttention(dim, heads, sr_ratio)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=MIT_BLOCK_EPS), MixFFN(dim, dim * mlp_ratio)

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin, dim, kernel, stride):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=MIT_EMBED_EPS)

    def forward(self, x):
        m = self.proj(x)
        return self.norm(m.flatten(2).transpose(1, 2)), tuple(m.shape[2:])


class MiTBackbone(nn.Module):
    """smp's MiT encoder (``patch_embed{i}``, ``block{i}``, ``norm{i}``), initialised as SegFormer's (linear
    weights truncated normal 0.02, biases 0; convs normal sqrt(2 / fan-out); LayerNorms 1 / 0)."""

    def __init__(self, spec: MiT):
        super().__init__()
        if not isinstance(spec, MiT):
            raise ValueError(f"MiTBackbone: spec must be a MiT, got {type(spec).__name__}")
        self.spec, cin = spec, 3
        for i in range(4):
            D = spec.widths[i]
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(cin, D, spec.patch_kernels[i],
                                                                    spec.patch_strides[i]))
            cin = D
        for i in range(4):
            D = spec.widths[i]
            self.add_module(f"block{i + 1}", nn.ModuleList(MiTBlock(D, spec.heads[i], spec.sr_ratios[i], spec.mlp_ratio)
                                                           for _ in range(spec.depths[i])))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(D, eps=MIT_BLOCK_EPS))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        features, h = {}, x
        for i in range(4):
            t, hw = getattr(self, f"patch_embed{i + 1}")(h)
            for block in getattr(self, f"block{i + 1}"):
                t = block(t, hw)
            t = getattr(self, f"norm{i + 1}")(t)
            h = t.transpose(1, 2).reshape(t.shape[0], -1, *hw)
            features[STAGES[i]] = h
        return features
