"""The vision transformer's layers in PyTorch, the twins of ``minideeplab.scratch.attention``: plain functions
of tensors (autograd gives their gradients), written independently of the scratch code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minideeplab.scratch.attention import neighbourhood_offsets


def self_attention(x, params, heads, hw=None, sr_ratio=1, ln_eps=1e-5):
    """ViT's (``qkv``) or SegFormer's (``q``, ``kv``, ``sr``, ``norm``) multi-head self-attention; x (B, N, D)."""
    B, N, D = x.shape

    def split(t):
        return t.reshape(B, -1, heads, D // heads).transpose(1, 2)

    if "qkv.weight" in params:
        q, k, v = F.linear(x, params["qkv.weight"], params["qkv.bias"]).chunk(3, dim=-1)
    else:
        q = F.linear(x, params["q.weight"], params["q.bias"])
        kv_in = x
        if sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(B, D, *hw)
            red = F.conv2d(grid, params["sr.weight"], params["sr.bias"], stride=sr_ratio).flatten(2).transpose(1, 2)
            kv_in = F.layer_norm(red, (D,), params["norm.weight"], params["norm.bias"], ln_eps)
        k, v = F.linear(kv_in, params["kv.weight"], params["kv.bias"]).chunk(2, dim=-1)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return F.linear(out.transpose(1, 2).reshape(B, N, D), params["proj.weight"], params["proj.bias"])


def neighbourhood_attention(q, k, v, hw, kernel=3, rate=1):
    """Dilated neighbourhood attention by unfold: q, k, v (B, heads, H*W, d); taps outside the grid masked."""
    B, h, N, d = q.shape
    H, W = hw

    def neighbours(t):  # (B, h, N, d) -> (B, h, N, k*k, d)
        grid = t.transpose(2, 3).reshape(B * h, d, H, W)
        cols = F.unfold(grid, kernel, dilation=rate, padding=rate * (kernel // 2))  # (B*h, d*k*k, N)
        return cols.reshape(B, h, d, kernel * kernel, N).permute(0, 1, 4, 3, 2)

    inside = F.unfold(torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device), kernel, dilation=rate,
                      padding=rate * (kernel // 2))[0].T > 0  # (N, k*k)
    assert len(neighbourhood_offsets(kernel, rate)) == inside.shape[1]
    s = torch.einsum("bhnd,bhnkd->bhnk", q / d ** 0.5, neighbours(k)).masked_fill(~inside, float("-inf"))
    return torch.einsum("bhnk,bhnkd->bhnd", s.softmax(-1), neighbours(v))


def neighbourhood_mask(hw, kernel, rate, device=None) -> torch.Tensor:
    """(H*W, H*W) bool: query n may attend to key m, m one of the kernel x kernel taps `rate` apart around n
    (inside the grid). Global attention under this mask is dilated neighbourhood attention (the same softmax
    over the same keys), in one dense product: faster in torch than gathering the windows on small grids."""
    H, W = hw
    inside = F.unfold(torch.ones(1, 1, H, W, device=device), kernel, dilation=rate, padding=rate * (kernel // 2))
    index = torch.arange(1, H * W + 1, dtype=torch.float32, device=device).reshape(1, 1, H, W)
    keys = F.unfold(index, kernel, dilation=rate, padding=rate * (kernel // 2))[0].T.long() - 1  # (N, k*k); -1 out
    mask = torch.zeros(H * W, H * W + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, torch.where(inside[0].T > 0, keys, H * W), True)
    return mask[:, :H * W]
