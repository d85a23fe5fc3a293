"""The dense CRF in PyTorch, exact (explicit N x N kernels), for small images: the twin of
``minideeplab.scratch.crf`` that the course's checks compare against. Same conventions: self term
included, features (x, y[, r, g, b]) / std, Potts as the reward +w K~Q, probabilities floored at 1e-5.
Computed in float64, differentiable by autograd (``mean_field``). The trainable layer (``MeanField``, ``CRFLayer``)
is not a twin: it runs the scratch lattice, whose backward torch cannot derive."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minideeplab.scratch import crf as scratch_crf

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


def window_kernel(features, k: int) -> torch.Tensor:
    """(H, W, d) -> (k*k, H, W): exp(-|f[y, x] - f[y + dy, x + dx]|^2 / 2) over the k x k window's offsets
    (row-major), 0 where the window leaves the image; by unfold."""
    f = torch.as_tensor(features, dtype=torch.float64).permute(2, 0, 1)  # (d, H, W)
    d, H, W = f.shape
    cols = F.unfold(f[None], k, padding=k // 2).reshape(d, k * k, H, W)
    inside = F.unfold(torch.ones(1, 1, H, W, dtype=torch.float64), k, padding=k // 2).reshape(k * k, H, W)
    return torch.exp(-0.5 * (cols - f[:, None]).square().sum(0)) * inside


def window_message(values, weights) -> torch.Tensor:
    """(C, H, W) values, (k*k, H, W) weights -> (C, H, W): sum over the window of weight * neighbour (unfold)."""
    C, H, W = values.shape
    k = round(weights.shape[0] ** 0.5)
    return (F.unfold(values[None], k, padding=k // 2).reshape(C, k * k, H, W) * weights[None]).sum(1)


def _window_kernels(shape, window, normalization, features):
    """The two kernels truncated to the window, as functions (C, N) -> (C, N) (normalised like the full ones)."""
    H, W = shape
    kernels = []
    for f in features:
        K = window_kernel(f.reshape(H, W, -1), window)
        norm = K.sum(0)
        before, after = (norm.rsqrt(), norm.rsqrt()) if normalization == "symmetric" else (1.0, 1.0 / norm)
        kernels.append(lambda q, K=K, b=before, a=after: (a * window_message((b * q.reshape(-1, H, W)), K))
                       .reshape(q.shape))
    return kernels


def mean_field(logits, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
               compat=None, normalization="symmetric", window=None) -> torch.Tensor:
    """Exact mean field started from logits (the unary is -logits), differentiable by autograd in each argument
    given as a tensor (logits, pos_w, bi_w, compat). logits (C, H, W) or (N, C, H, W); image (H, W, 3) or
    (N, H, W, 3) uint8. window=k: messages only within k x k neighbourhoods (the scratch method="window").
    -> Q, logits' shape, float64."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.dim() == 4:
        return torch.stack([mean_field(lg, im, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, compat,
                                       normalization, window) for lg, im in zip(logits, image)])
    C, H, W = logits.shape
    unary = -logits.reshape(C, H * W)
    features = (pixel_features(image, pos_xy_std), pixel_features(image, bi_xy_std, bi_rgb_std))
    if window is None:
        matrices = [normalize_kernel(gaussian_kernel(f), normalization) for f in features]
        kernels = [lambda q, k=k: q @ k.T for k in matrices]
    else:
        kernels = _window_kernels((H, W), window, normalization, features)
    mu = None if compat is None else torch.as_tensor(compat, dtype=torch.float64)
    q = torch.softmax(-unary, dim=0)
    for _ in range(n_iters):
        message = pos_w * kernels[0](q) + bi_w * kernels[1](q)
        q = torch.softmax(-unary + message if mu is None else -unary - mu @ message, dim=0)
    return q.reshape(C, H, W)


def dense_crf(probs, image, n_iters=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0,
              compat=None, normalization="symmetric") -> np.ndarray:
    """Exact mean-field inference. probs (C, H, W), image (H, W, 3) uint8 -> Q (C, H, W) float32."""
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    q = mean_field(torch.log(p.clamp_min(PROB_FLOOR)), image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std,
                   bi_rgb_std, compat, normalization)
    return q.to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------------
# the CRF as a trainable layer: torch has no permutohedral lattice, so autograd calls the scratch one


class MeanField(torch.autograd.Function):
    """``minideeplab.scratch.crf.mean_field`` as a torch op, its backward ``mean_field_backward``: gradients for
    logits (N, C, H, W), pos_w, bi_w (0-d tensors) and compat ((C, C) tensor, or None for Potts). Computed on
    the CPU in the logits' dtype (float32 or float64); images (N, H, W, 3) uint8 NumPy; kw: mean_field's other
    keywords (n_iters, the standard deviations, method, normalization, window)."""

    @staticmethod
    def forward(ctx, logits, pos_w, bi_w, compat, images, kw):
        mu = None if compat is None else compat.detach().cpu().numpy().astype(np.float64)
        q, cache = scratch_crf.mean_field(logits.detach().cpu().numpy(), images, pos_w=float(pos_w),
                                          bi_w=float(bi_w), compat=mu, **kw)
        ctx.cache, ctx.has_compat = cache, compat is not None
        return torch.from_numpy(q).to(logits.device)

    @staticmethod
    def backward(ctx, dq):
        g = scratch_crf.mean_field_backward(np.ascontiguousarray(dq.detach().cpu().numpy()), ctx.cache)
        weight = {k: torch.tensor(g[k], dtype=dq.dtype) for k in ("pos_w", "bi_w")}
        dmu = torch.from_numpy(g["compat"]).to(dq.dtype) if ctx.has_compat else None
        return torch.from_numpy(g["logits"]).to(dq.device), weight["pos_w"], weight["bi_w"], dmu, None, None


class CRFLayer(torch.nn.Module):
    """The dense CRF as the last layer of a network, CRF-as-RNN style: mean-field iterations on the network's
    logits and the RGB image, learning the two kernel weights (as log-weights, so they stay positive) and the
    label compatibility (a C x C penalty, from Potts 1 - I); the bandwidths stay fixed.

    forward(logits (N, C, H, W), images (N, H, W, 3) uint8) -> log Q, (N, C, H, W): log-probabilities, for
    ``nll_loss``. Defaults: DeepLab's kernel parameters (crf.PARAMETER_SETS), 5 iterations for training as
    CRF-as-RNN."""

    def __init__(self, num_classes, n_iters=5, pos_w=3.0, bi_w=4.0, pos_xy_std=3.0, bi_xy_std=67.0,
                 bi_rgb_std=3.0, method="lattice", normalization="symmetric", window=11):
        super().__init__()
        self.log_pos_w = torch.nn.Parameter(torch.tensor(float(np.log(pos_w))))
        self.log_bi_w = torch.nn.Parameter(torch.tensor(float(np.log(bi_w))))
        self.compat = torch.nn.Parameter(1.0 - torch.eye(num_classes))
        self.kw = dict(n_iters=n_iters, pos_xy_std=pos_xy_std, bi_xy_std=bi_xy_std, bi_rgb_std=bi_rgb_std,
                       method=method, normalization=normalization, window=window)

    def forward(self, logits, images):
        dtype = logits.dtype
        q = MeanField.apply(logits, self.log_pos_w.exp().to(dtype), self.log_bi_w.exp().to(dtype),
                            self.compat.to(dtype), np.ascontiguousarray(images), self.kw)
        return torch.log(q.clamp_min(torch.finfo(dtype).tiny))
