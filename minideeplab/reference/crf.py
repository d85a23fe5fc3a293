"""The dense CRF in PyTorch, exact (explicit N x N kernels), for small images: the twin of
``minideeplab.scratch.crf`` that the course's checks compare against. Same conventions: self term
included, features (x, y[, r, g, b]) / std, Potts as the reward +w K~Q, probabilities floored at 1e-5.
Computed in float64."""

from __future__ import annotations

import numpy as np
import torch

PROB_FLOOR = 1e-5


def pixel_features(image, xy_std: float, rgb_std: float | None = None) -> torch.Tensor:
    """(H, W, 3) image -> (H*W, 2 or 5) float64 features (x/xy_std, y/xy_std[, rgb/rgb_std])."""
    image = torch.as_tensor(np.asarray(image))
    H, W = image.shape[:2]
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    cols = [x.reshape(-1) / xy_std, y.reshape(-1) / xy_std]
    if rgb_std is not None:
        cols.append(image.reshape(H * W, 3).to(torch.float64) / rgb_std)
    return torch.cat([c.reshape(H * W, -1) for c in cols], dim=1)


def gaussian_kernel(features: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, N): exp(-|f_i - f_j|^2 / 2)."""
    return torch.exp(-0.5 * torch.cdist(features, features).square())


def normalize_kernel(kernel: torch.Tensor, normalization: str = "symmetric") -> torch.Tensor:
    """D^-1/2 K D^-1/2 ("symmetric") or D^-1 K ("after"), D = diag(K 1)."""
    norm = kernel.sum(dim=1)
    if normalization == "symmetric":
        s = norm.rsqrt()
        return s[:, None] * kernel * s[None, :]
    if normalization == "after":
        return kernel / norm[:, None]
    raise ValueError(f"normalize_kernel: normalization must be 'symmetric' or 'after', got {normalization!r}")


def mean_field_update(q, unary, kernels, weights, compat=None) -> torch.Tensor:
    """q, unary (C, N); kernels normalised (N, N); compat (C, C) penalty or None (Potts) -> new q (C, N)."""
    message = sum(w * (q @ k.T) for w, k in zip(weights, kernels))
    energy = -unary + message if compat is None else -unary - compat @ message
    return torch.softmax(energy, dim=0)


def lattice_blur(lattice, values) -> torch.Tensor:
    """The permutohedral lattice's blur: along each direction j, v[m] + (v[left] + v[right]) / 2, from the
    previous pass's values. `lattice` is a ``minideeplab.scratch.crf.Lattice``; values (M+1, C), row 0 = 0."""
    values = torch.as_tensor(np.asarray(values))
    nb = torch.as_tensor(np.asarray(lattice.neighbours, dtype=np.int64))
    for j in range(nb.shape[0]):
        values = values + 0.5 * (values[nb[j, :, 0]] + values[nb[j, :, 1]])
        values[0] = 0
    return values


def mean_field(logits, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
               compat=None, normalization="symmetric") -> torch.Tensor:
    """Exact mean field started from logits (the unary is -logits), differentiable by autograd in each argument
    given as a tensor (logits, pos_w, bi_w, compat). logits (C, H, W) or (N, C, H, W); image (H, W, 3) or
    (N, H, W, 3) uint8. -> Q, logits' shape, float64."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.dim() == 4:
        return torch.stack([mean_field(lg, im, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, compat,
                                       normalization) for lg, im in zip(logits, image)])
    C, H, W = logits.shape
    unary = -logits.reshape(C, H * W)
    kernels = [normalize_kernel(gaussian_kernel(f), normalization)
               for f in (pixel_features(image, pos_xy_std), pixel_features(image, bi_xy_std, bi_rgb_std))]
    mu = None if compat is None else torch.as_tensor(compat, dtype=torch.float64)
    q = torch.softmax(-unary, dim=0)
    for _ in range(n_iters):
        q = mean_field_update(q, unary, kernels, (pos_w, bi_w), mu)
    return q.reshape(C, H, W)


def dense_crf(probs, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
              compat=None, normalization="symmetric") -> np.ndarray:
    """Exact mean-field inference. probs (C, H, W), image (H, W, 3) uint8 -> Q (C, H, W) float32."""
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    q = mean_field(torch.log(p.clamp_min(PROB_FLOOR)), image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std,
                   bi_rgb_std, compat, normalization)
    return q.to(torch.float32).numpy()
