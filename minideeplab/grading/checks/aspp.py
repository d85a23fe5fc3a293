"""Checks for notebook 04, ASPP: exercises 4.1-4.3.

4.1 counts the taps of a 3x3 atrous kernel that land inside the map, against torch's conv of a ones map;
4.2 (image pooling) and 4.3 (the v3 ASPP forward, eval mode) run against the torch twins of
``minideeplab.reference.aspp`` loaded with the same seeded weights.
"""

from __future__ import annotations

import numpy as np

from minideeplab.grading.checks.common import first_bad
from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_4_1", "exercise_4_2", "exercise_4_3"]

EPS = 1e-5  # torch's BatchNorm2d default, also torchvision's ASPP


# ---------------------------------------------------------------------------------------------
# 4.1: valid taps of a 3x3 kernel at a rate


_TAP_CASES = ([(33, 33, r) for r in range(1, 41)]                       # OS 16 of a 513x513 image
              + [(65, 65, r) for r in (1, 6, 12, 24, 32, 33, 36, 64, 65, 70)]  # OS 8
              + [(9, 14, r) for r in (1, 2, 4, 5, 8, 9, 13, 14, 20)]   # not square: rows and columns differ
              + [(1, 5, 2), (6, 1, 1)])


def _torch_taps(H, W, rate):
    """Taps inside the map per output pixel: a 3x3 ones kernel at ``rate`` ("same" padding) over a ones map."""
    import torch
    import torch.nn.functional as F

    ones = torch.ones(1, 1, H, W, dtype=torch.float64)
    return F.conv2d(ones, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=rate, dilation=rate)[0, 0].numpy()


def _taps_variant(H, W, rate, mistake):
    def inside(n):  # taps inside along one axis, per position: the centre, and y - r, y + r when inside
        y = np.arange(n)
        if mistake == "no_rate":
            return 1 + (y - 1 >= 0) + (y + 1 <= n - 1)
        if mistake == "strict":
            return 1 + (y - rate > 0) + (y + rate < n - 1)
        if mistake == "strict_far":
            return 1 + (y - rate >= 0) + (y + rate < n - 1)
        return 1 + (y - rate >= 0) + (y + rate <= n - 1)

    rows, cols = inside(H).astype(float), inside(W).astype(float)
    if mistake == "sum":
        return rows[:, None] + cols[None, :]
    if mistake == "swap":
        return (inside(W)[:, None] * inside(H)[None, :]).astype(float)
    taps = rows[:, None] * cols[None, :]
    return taps / 9 if mistake == "fraction" else taps


_TAP_HINTS = {
    "sum": "a tap is inside when its row AND its column are: the count is (taps inside along the rows) x "
           "(taps inside along the columns), a product, not a sum.",
    "fraction": "return the number of taps (0 to 9), not the fraction of the 9.",
    "no_rate": "the taps are `rate` pixels apart: a 3x3 kernel at rate r reads rows y - r, y, y + r.",
    "strict": "off by one at both borders: a tap at y - rate is inside when y - rate >= 0, one at y + rate when "
              "y + rate <= n - 1 (the last row is n - 1).",
    "strict_far": "off by one at the far border: the last row is n - 1, so a tap at y + rate is inside when "
                  "y + rate <= n - 1.",
    "swap": "rows and columns are swapped: the result has shape (height, width), rows along axis 0.",
}


@exercise_check("4.1")
def exercise_4_1(valid_taps):
    """valid_taps(height, width, rate) -> (height, width) counts, against torch's conv of ones with ones."""
    worst = 0.0
    for H, W, rate in _TAP_CASES:
        call = f"valid_taps(height={H}, width={W}, rate={rate})"
        got = valid_taps(H, W, rate)
        expected = _torch_taps(H, W, rate)
        known = {text: _taps_variant(H, W, rate, key) for key, text in _TAP_HINTS.items()}
        try:
            worst = max(worst, compare_arrays("4.1", f"{call}, taps inside the map per output pixel", got, expected,
                                              rtol=0, atol=1e-9, known_mistakes=known, check_dtype=False))
        except ExerciseWrong as e:
            got = np.asarray(got, dtype=float)
            if got.shape != expected.shape:
                raise
            y, x = np.unravel_index(first_bad(got, expected), expected.shape)
            raise ExerciseWrong(f"{e}\n  first wrong pixel: (row {y}, column {x}) got {got[y, x]:g} taps; torch's "
                                f"3x3 ones kernel at dilation {rate}, padding {rate} over a {H}x{W} ones map "
                                f"gives {expected[y, x]:g}") from None
    passed("4.1", f"{len(_TAP_CASES)} maps (33x33 at rates 1-40, 65x65, 9x14, thin ones) equal torch's "
                  "conv2d of a ones map with a 3x3 ones kernel", worst, "exact")


# ---------------------------------------------------------------------------------------------
# shared: seeded twins with batch norms away from the identity


def _randomize_bn(module, rng):
    """BN affine parameters and running statistics away from 1 / 0, so that forgetting any of them shows."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)))
                m.bias.copy_(torch.from_numpy(0.3 * rng.standard_normal(n)))
                m.running_mean.copy_(torch.from_numpy(0.3 * rng.standard_normal(n)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n)))
    return module


def _tolerance(dtype, expected):
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    rtol = 1e-4 if dtype == np.float32 else 1e-10  # float32: several layers of float32 rounding
    return rtol, rtol * scale


def _tol_text():
    return "1e-4 float32, 1e-10 float64, relative to the largest output"


def _bn(h, bn, mistake):
    """Eval-mode batch norm of the torch module ``bn`` on ``h``, or one of its known mistakes."""
    import torch

    if mistake == "no_bn":
        return h
    if mistake == "batch_stats":
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    s = lambda v: v[None, :, None, None]  # noqa: E731
    if mistake == "no_eps":
        denom = torch.sqrt(s(var))
    elif mistake == "var_not_std":
        denom = s(var) + EPS
    else:
        denom = torch.sqrt(s(var) + EPS)
    return (h - s(mean)) / denom * s(bn.weight) + s(bn.bias)


def _act(h, mistake):
    return h if mistake == "no_relu" else h.clamp_min(0)


def _pooled(x, mistake):
    if mistake == "batch_mean":  # one vector for the whole batch, handed to every sample
        return x.mean(dim=(0, 2, 3), keepdim=True).expand(x.shape[0], -1, -1, -1)
    if mistake == "batch_mean_one":  # ... and left with a batch of one
        return x.mean(dim=(0, 2, 3), keepdim=True)
    return x.amax(dim=(2, 3), keepdim=True) if mistake == "max" else x.mean(dim=(2, 3), keepdim=True)


def _pooling_variant(pool, x, mistake):
    """The image pooling branch (reference.aspp.ASPPPooling) written out in torch, one optional mistake."""
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    g = _act(_bn(F.conv2d(_pooled(x, mistake), pool[1].weight), pool[2], mistake), mistake)
    return g if mistake == "not_broadcast" else g.expand(-1, -1, H, W)


# ---------------------------------------------------------------------------------------------
# 4.2: the image pooling branch


_POOL_CASES = [  # (x shape, Cout, dtype)
    ((2, 6, 7, 9), 4, np.float64),
    ((3, 5, 1, 4), 3, np.float64),
    ((1, 8, 5, 5), 3, np.float32),
]

_POOL_HINTS = {
    "not_broadcast": "the pooled vector was not brought back to the map: the branch returns (N, Cout, H, W), the "
                     "same vector at every pixel (np.broadcast_to, or a bilinear resize from 1x1).",
    "no_bn": "the batch norm is missing: (h - running_mean) / sqrt(running_var + 1e-5) * gamma + beta, per channel.",
    "no_relu": "the ReLU after the batch norm is missing.",
    "batch_stats": "the batch norm used the batch's statistics: in eval mode it uses running_mean and running_var.",
    "no_eps": "the batch norm's eps is missing: divide by sqrt(running_var + 1e-5).",
    "var_not_std": "divide by the standard deviation sqrt(running_var + 1e-5), not by the variance.",
    "max": "image pooling averages over (H, W) (global average pooling); this is the maximum.",
    "batch_mean": "the mean was taken over the batch too (axis=(0, 2, 3)): every image gets the same vector. "
                  "Image pooling averages each image over its own pixels, x.mean(axis=(2, 3), keepdims=True).",
    "batch_mean_one": "the mean was taken over the batch too (axis=(0, 2, 3)), leaving one sample: average each "
                      "image over its own pixels, x.mean(axis=(2, 3), keepdims=True), shape (N, C, 1, 1).",
}


def _pool_case(shape, cout, dtype, seed):
    import torch

    from minideeplab.reference.aspp import ASPPPooling

    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():  # seeded conv weights, the caller's torch generator left as it was
        torch.manual_seed(seed)
        pool = _randomize_bn(ASPPPooling(shape[1], cout).double(), rng).eval()
    x = rng.standard_normal(shape).astype(dtype)
    arrays = {"weight": pool[1].weight, "gamma": pool[2].weight, "beta": pool[2].bias,
              "running_mean": pool[2].running_mean, "running_var": pool[2].running_var}
    arrays = {k: v.detach().numpy().astype(dtype) for k, v in arrays.items()}
    pool = pool.to(torch.float32 if dtype == np.float32 else torch.float64)
    return pool, x, arrays


@exercise_check("4.2")
def exercise_4_2(image_pooling):
    """image_pooling(x, weight, gamma, beta, running_mean, running_var) against reference.aspp.ASPPPooling (eval)."""
    import torch

    worst = 0.0
    for i, (shape, cout, dtype) in enumerate(_POOL_CASES):
        pool, x, arrays = _pool_case(shape, cout, dtype, 40 + i)
        call = (f"image_pooling(x {shape} {np.dtype(dtype).name}, weight {arrays['weight'].shape}, "
                f"BN of {cout} channels)")
        given = {k: v.copy() for k, v in arrays.items()}
        got = image_pooling(x.copy(), *given.values())  # positional: any argument names
        for k, v in given.items():
            if not np.array_equal(v, arrays[k]):
                raise ExerciseWrong(f"Exercise 4.2: {call} changed its argument `{k}` in place; eval mode leaves the "
                                    "parameters and running statistics as they are.")
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected = pool(xt).numpy()
            known = {text: _pooling_variant(pool, xt, key).numpy() for key, text in _POOL_HINTS.items()
                     if not (key == "no_eps" and dtype == np.float32)}
        rtol, atol = _tolerance(dtype, expected)
        worst = max(worst, compare_arrays("4.2", call, got, expected, rtol=rtol, atol=atol, known_mistakes=known))
    passed("4.2", f"{len(_POOL_CASES)} image pooling branches (float32 and float64, maps down to 1 row) match "
                  "reference.aspp.ASPPPooling in eval mode", worst, _tol_text())


# ---------------------------------------------------------------------------------------------
# 4.3: the v3 ASPP forward


_ASPP_CASES = [  # (x shape, out_channels, atrous_rates, dtype)
    ((2, 12, 9, 11), 6, (2, 4, 6), np.float64),
    ((2, 10, 7, 5), 4, (1, 3), np.float64),          # two rates: four branches into the projection
    ((1, 16, 8, 8), 8, (6, 12, 18), np.float32),     # OS 16 rates on a map smaller than the rates
]

_ASPP_HINTS = {
    "no_project": "the projection is missing: the concatenation (N, num_branches * Cout, H, W) goes through "
                  "project.0 (1x1 conv to Cout), project.1 (BN) and a ReLU.",
    "project_conv_only": "the projection stops after its 1x1 conv: project.0 (conv) -> project.1 (BN) -> ReLU, like "
                         "every other unit.",
    "no_bn": "the batch norms are missing: every conv of ASPP (branches, image pooling, projection) is followed by "
             "BN, in eval mode (h - running_mean) / sqrt(running_var + 1e-5) * weight + bias, then a ReLU.",
    "no_relu": "the ReLUs are missing: conv -> BN -> ReLU in every unit, the projection included.",
    "batch_stats": "the batch norms used the batch's statistics: in eval mode BN uses running_mean and running_var "
                   "from `buffers`.",
    "pool_first": "the image pooling branch comes first in the concatenation, as in TF DeepLab; these (torchvision's) "
                  "parameters expect it last: convs.0 (1x1), convs.1 .. convs.R (the rates in order), then image "
                  "pooling. The projection's weights read the branches in that order.",
    "rate_index": "branch convs.{i} ran at rate i; it runs at atrous_rates[i - 1], with padding equal to the rate.",
    "same_rate": "every 3x3 branch ran at the first rate: branch convs.{i} runs at atrous_rates[i - 1].",
    "dropout_eval": "dropout is the identity in eval mode: no mask and no 1 / (1 - p) scaling.",
    "max": "image pooling averages over (H, W) (global average pooling), not the maximum.",
    "no_eps": "the batch norms' eps is missing: divide by sqrt(running_var + 1e-5).",
    "no_relu_project": "the ReLU after the projection is missing: project.0 (1x1 conv) -> project.1 (BN) -> ReLU, "
                       "like every other unit.",
    "batch_mean": "image pooling averaged over the batch too (axis=(0, 2, 3)): each image is averaged over its own "
                  "pixels, mean over axes (2, 3) only.",
}


def _aspp_variant(module, x, mistake):
    """reference.aspp.ASPPModule's eval forward written out in torch, with one optional known mistake."""
    import torch
    import torch.nn.functional as F

    spec = module.spec

    def unit(seq, h, rate=1):
        pad = rate if seq[0].kernel_size[0] == 3 else 0
        return _act(_bn(F.conv2d(h, seq[0].weight, padding=pad, dilation=rate), seq[1], mistake), mistake)

    outs = [unit(module.convs[0], x)]
    for i, rate in enumerate(spec.atrous_rates, start=1):
        rate = {"rate_index": i, "same_rate": spec.atrous_rates[0]}.get(mistake, rate)
        outs.append(unit(module.convs[i], x, rate))
    pool = _pooling_variant(module.convs[-1], x, mistake)
    outs = [pool] + outs if mistake == "pool_first" else outs + [pool]
    h = torch.cat(outs, dim=1)
    if mistake == "no_project":
        return h
    h = F.conv2d(h, module.project[0].weight)
    if mistake == "project_conv_only":
        return h
    h = _bn(h, module.project[1], mistake)
    h = h if mistake == "no_relu_project" else _act(h, mistake)
    return h / (1 - spec.dropout) if mistake == "dropout_eval" else h


def _aspp_case(shape, cout, rates, dtype, seed):
    """(torch twin in eval mode, x, params, buffers): the twin's seeded weights as numpy arrays."""
    import torch

    from minideeplab.reference.aspp import ASPPModule
    from minideeplab.reference.backbone import params_from_torch
    from minideeplab.specs.aspp import ASPP  # the spec (a dataclass of sizes) the twin is built from

    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = _randomize_bn(ASPPModule(ASPP(shape[1], cout, rates)).double(), rng).eval()
    module = module.to(torch.float32 if dtype == np.float32 else torch.float64)
    params, buffers = params_from_torch(module)
    x = rng.standard_normal(shape).astype(dtype)
    return module, x, params, buffers


def _copy(d):
    return {k: np.array(v, copy=True) for k, v in d.items()}


def _name(fn, default="aspp_v3"):
    """The student's function's own name (the notebook's is aspp_v3), for the messages."""
    name = getattr(fn, "__name__", "")
    return name if name.isidentifier() else default


@exercise_check("4.3")
def exercise_4_3(aspp_v3):
    """aspp_v3(x, params, buffers, atrous_rates) in eval mode against reference.aspp.ASPPModule (torchvision's
    layout)."""
    import torch

    worst = 0.0
    for i, (shape, cout, rates, dtype) in enumerate(_ASPP_CASES):
        module, x, params, buffers = _aspp_case(shape, cout, rates, dtype, 43 + i)
        call = (f"{_name(aspp_v3)}(x {shape} {np.dtype(dtype).name}, params of ASPP({shape[1]} -> {cout} channels), "
                f"buffers, atrous_rates={rates})")
        p, b = _copy(params), _copy(buffers)
        got = aspp_v3(x.copy(), p, b, rates)
        for name, given, before in (("params", p, params), ("buffers", b, buffers)):
            changed = [k for k in before if k not in given or not np.array_equal(given[k], before[k])]
            if changed:
                raise ExerciseWrong(f"Exercise 4.3: {call} changed `{name}` in place ({changed[0]}); in eval mode "
                                    "nothing is updated (did a batch norm run in training mode?).")
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected = module(xt).numpy()
            known = {text: _aspp_variant(module, xt, key).numpy() for key, text in _ASPP_HINTS.items()
                     if not (key == "no_eps" and dtype == np.float32)}  # within float32 rounding of the right answer
        rtol, atol = _tolerance(dtype, expected)
        worst = max(worst, compare_arrays("4.3", call, got, expected, rtol=rtol, atol=atol, known_mistakes=known))
    passed("4.3", f"{len(_ASPP_CASES)} ASPP modules (float32 and float64; 2 or 3 rates, rates up to 18 on an 8x8 map) "
                  "match reference.aspp.ASPPModule in eval mode", worst, _tol_text())
