"""Checks for notebook 06, backpropagation through DeepLab: exercises 6.1-6.3."""

from __future__ import annotations

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_6_1", "exercise_6_2", "exercise_6_3"]


def _tol(dtype, expected):
    """(rtol, atol): 1e-10 in float64, 1e-5 in float32, the atol relative to the largest expected entry."""
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-10
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
    return rtol, rtol * max(scale, 1e-12)


def _distinct(known: dict, expected, rtol, atol) -> dict:
    """The known mistakes whose answer differs from the right one on this case (the others would give a
    hint for a mistake that makes no difference here)."""
    expected = np.asarray(expected)
    return {text: w for text, w in known.items()
            if np.shape(w) != expected.shape or not np.allclose(w, expected, rtol=rtol, atol=atol)}


def _unchanged(exercise, call, before: dict, after: dict):
    for name, a in before.items():
        if not np.array_equal(after[name], a, equal_nan=True):
            drift = np.abs(np.asarray(after[name], dtype=float) - a)
            if np.all(np.isfinite(drift)) and drift.max() <= 1e-12 * max(np.abs(a).max(), 1.0):
                raise ExerciseWrong(f"Exercise {exercise}: {call} left its argument `{name}` changed by rounding "
                                    f"(up to {drift.max():.1e}): adding h back after subtracting it does not "
                                    f"restore a float exactly. Save the entry first and put it back: "
                                    f"old = x[i]; ...; x[i] = old.")
            raise ExerciseWrong(f"Exercise {exercise}: {call} changed its argument `{name}` in place; leave it as "
                                f"it was (the caller still needs it): work on new arrays.")


def _triple(exercise, call, got, names):
    if not isinstance(got, (tuple, list)) or len(got) != len(names):
        raise ExerciseWrong(f"Exercise {exercise}: {call} returned {type(got).__name__}"
                            f"{f' of length {len(got)}' if isinstance(got, (tuple, list)) else ''}; "
                            f"expected a tuple ({', '.join(names)})")
    return got


# ---------------------------------------------------------------------------------------------
# 6.1 numerical gradient


def _fd_cases():
    """(description, torch function of a float64 tensor -> 0-D tensor, x): smooth functions whose exact
    gradients torch autograd gives."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(61)
    w = torch.from_numpy(rng.standard_normal((3, 4)))
    dout = torch.from_numpy(rng.standard_normal((3, 2, 3, 3)))
    gamma, beta = torch.from_numpy(rng.uniform(0.5, 1.5, 2)), torch.from_numpy(rng.standard_normal(2))
    label = torch.tensor([2])
    return [
        ("f(x) = sum(w * tanh(x)), x (3, 4)", lambda t: (w * torch.tanh(t)).sum(), rng.standard_normal((3, 4))),
        ("f(x) = cross-entropy of one pixel's 5 logits x, label 2", lambda t: F.cross_entropy(t[None], label),
         2 * rng.standard_normal(5)),
        ("f(x) = sum(dout * batch_norm(x)) in training mode, x (3, 2, 3, 3)",
         lambda t: (dout * F.batch_norm(t, None, None, gamma, beta, True)).sum(), rng.standard_normal((3, 2, 3, 3))),
        ("f(x) = sum(x**3 / 3 + exp(x)), x (6,)", lambda t: (t ** 3 / 3 + torch.exp(t)).sum(), rng.standard_normal(6)),
    ]


def _differences(f, x, h, mistake):
    """The numerical gradient written with one known mistake."""
    grad = np.zeros_like(x)
    f0 = f(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += h
        minus[i] -= h
        if mistake == "forward":
            grad[i] = (f(plus) - f0) / h
        elif mistake == "backward":
            grad[i] = (f0 - f(minus)) / h
        elif mistake == "one_h":
            grad[i] = (f(plus) - f(minus)) / h
        else:
            grad[i] = (f(plus) - f(minus)) / (2 * h)
    return grad


_FD_HINTS = {
    "forward": "this is the one-sided difference (f(x + h) - f(x)) / h, whose error is about h |f''| / 2: "
               "use the centred difference (f(x + h e_i) - f(x - h e_i)) / 2h, whose error is about h^2 |f'''| / 6.",
    "backward": "this is the one-sided difference (f(x) - f(x - h)) / h, whose error is about h |f''| / 2: "
                "use the centred difference (f(x + h e_i) - f(x - h e_i)) / 2h.",
    "one_h": "twice the gradient: x + h and x - h are 2h apart, so divide the difference by 2h, not h.",
}


@exercise_check("6.1")
def exercise_6_1(numerical_gradient):
    """numerical_gradient(f, x) (default h) against torch autograd on four smooth functions."""
    import torch

    worst = 0.0
    cases = _fd_cases()
    for desc, fn, x in cases:
        def f(a, fn=fn):
            a = np.asarray(a)
            if a.shape != x.shape:
                raise ExerciseWrong(f"Exercise 6.1: f was called with an array of shape {a.shape}; it takes "
                                    f"arrays shaped like x, {x.shape} (perturb one entry of a copy of x, or of x "
                                    f"itself and put it back)")
            return float(fn(torch.from_numpy(np.array(a, dtype=np.float64))))

        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        fn(xt).backward()
        expected = xt.grad.numpy()
        given = x.copy()
        call = f"numerical_gradient(f, x) for {desc}"
        got = numerical_gradient(f, given)
        _unchanged("6.1", call, {"x": x}, {"x": given})
        known = {text: _differences(f, x, 1e-5, key) for key, text in _FD_HINTS.items()}
        for h in (1e-1, 1e-2, 1e-3):
            known[f"these are centred differences with a step of {h:g}: too large, the truncation error "
                  f"h^2 |f'''| / 6 shows. Use the h argument (1e-5 in float64)."] = _differences(f, x, h, None)
        for h in (1e-8, 1e-9, 1e-10, 1e-12):
            known[f"these are centred differences with a step of {h:g}: too small, the rounding error "
                  f"(about 1e-16 |f| / h) shows. Use the h argument (1e-5 in float64)."] = _differences(f, x, h, None)
        every = (f(x + 1e-5) - f(x - 1e-5)) / 2e-5
        known["every entry holds the same number, the change of f when ALL entries move together: perturb one "
              "entry at a time (x + h e_i), the others unchanged."] = np.full(x.shape, every)
        # centred differences at h = 1e-5 in float64 are exact to about 1e-10 of the largest entry here
        scale = float(np.abs(expected).max())
        worst = max(worst, compare_arrays("6.1", call, got, expected, rtol=1e-8, atol=1e-8 * scale,
                                          known_mistakes=_distinct(known, expected, 1e-8, 1e-8 * scale)))
    passed("6.1", f"centred differences of {len(cases)} functions (tanh, cross-entropy, batch norm, a cubic) "
                  "match torch autograd", worst, "1e-8 of the largest entry")


# ---------------------------------------------------------------------------------------------
# 6.2 batch norm backward, training mode


def _bn_cases():
    """(x, gamma, beta, dy) seeded; channels with different means and spreads."""
    rng = np.random.default_rng(62)
    cases = []
    for shape, dtype in (((4, 3, 5, 5), np.float64), ((2, 5, 3, 4), np.float64), ((6, 2, 1, 1), np.float64),
                         ((4, 8, 6, 6), np.float32)):
        C = shape[1]
        x = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, C, 1, 1)) + rng.standard_normal((1, C, 1, 1))
        gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
        dy = rng.standard_normal(shape)
        cases.append(tuple(a.astype(dtype) for a in (x, gamma, beta, dy)))
    return cases


def _bn_variant(dy, x, gamma, eps, mistake):
    """(dx, dgamma, dbeta) in float64 with one known mistake."""
    x, dy, gamma = x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64)
    axes = (0,) if mistake == "axes" else (0, 2, 3)
    m = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    if mistake == "unbiased":
        var = var * m / (m - 1)
    if mistake == "eps_outside":
        invstd = 1 / (np.sqrt(var) + eps)
    else:
        invstd = 1 / np.sqrt(var + (0 if mistake == "no_eps" else eps))
    xhat = (x - mean) * invstd
    g = gamma[None, :, None, None]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * (x if mistake == "dgamma_x" else xhat)).sum(axis=(0, 2, 3))
    mean_dy = dy.mean(axis=axes, keepdims=True)
    mean_dyx = (dy * xhat).mean(axis=axes, keepdims=True)
    if mistake == "eval":
        dx = g * invstd * dy
    elif mistake == "no_var":
        dx = g * invstd * (dy - mean_dy)
    elif mistake == "no_mean":
        dx = g * invstd * (dy - xhat * mean_dyx)
    else:
        dx = g * invstd * (dy - mean_dy - xhat * mean_dyx)
    return dx, dgamma, dbeta


_BN_HINTS_DX = {
    "eval": "this is dy * gamma / sqrt(var + eps), the eval-mode gradient: in training the batch mean and "
            "variance depend on x too. dx = gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)), "
            "means over (N, H, W) per channel.",
    "no_var": "the variance's term is missing: subtract xhat * mean(dy * xhat) as well as mean(dy) "
              "(the batch variance depends on x).",
    "no_mean": "the mean's term is missing: subtract mean(dy) as well as xhat * mean(dy * xhat) "
               "(the batch mean depends on x).",
    "unbiased": "the variance is the unbiased one (divided by M - 1): batch norm normalises with the biased "
                "batch variance, mean((x - mean)^2) over the M = N*H*W values of a channel (M - 1 is only "
                "for running_var).",
    "no_eps": "eps is missing: invstd = 1 / sqrt(var + eps).",
    "eps_outside": "eps belongs inside the square root: 1 / sqrt(var + eps), not 1 / (sqrt(var) + eps).",
    "axes": "the statistics were taken over the batch axis only: batch norm has one mean and variance per "
            "channel, over (N, H, W).",
}


@exercise_check("6.2")
def exercise_6_2(batch_norm_backward):
    """(dx, dgamma, dbeta) of batch_norm_backward(dy, x, gamma, eps) against torch autograd of F.batch_norm
    in training mode."""
    import torch
    import torch.nn.functional as F

    eps = 1e-5
    worst = 0.0
    cases = _bn_cases()
    for x, gamma, beta, dy in cases:
        call = f"batch_norm_backward(dy, x {x.shape} {x.dtype}, gamma, eps=1e-05)"
        args = (dy.copy(), x.copy(), gamma.copy())
        got = _triple("6.2", call, batch_norm_backward(*args, eps=eps), ("dx", "dgamma", "dbeta"))
        _unchanged("6.2", call, {"dy": dy, "x": x, "gamma": gamma}, dict(zip(("dy", "x", "gamma"), args)))
        xt, gt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, gamma, beta))
        F.batch_norm(xt, None, None, gt, bt, True, 0.1, eps).backward(torch.from_numpy(dy))
        expected = (xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy())
        variants = {key: _bn_variant(dy, x, gamma, eps, key) for key in (*_BN_HINTS_DX, "dgamma_x")}
        known = [{text: variants[key][0] for key, text in _BN_HINTS_DX.items()},
                 {"dgamma multiplies dy by the normalised input xhat = (x - mean) / sqrt(var + eps), not by x.":
                      variants["dgamma_x"][1],
                  "dgamma has one entry per channel: (dy * xhat).sum(axis=(0, 2, 3)).":
                      expected[1][None, :, None, None]},
                 {"dbeta has one entry per channel: dy.sum(axis=(0, 2, 3)), shape (C,).":
                      expected[2][None, :, None, None]}]
        for name, g, e, k in zip(("dx", "dgamma", "dbeta"), got, expected, known):
            rtol, atol = _tol(x.dtype, e)
            worst = max(worst, compare_arrays("6.2", f"{name} of {call}", g, e, rtol=rtol, atol=atol,
                                              known_mistakes=_distinct(k, e, rtol, atol)))
    passed("6.2", f"dx, dgamma and dbeta of {len(cases)} training-mode batch norms (float64 and float32, "
                  "down to 1x1 maps) match torch autograd", worst, "1e-10 float64, 1e-5 float32")


# ---------------------------------------------------------------------------------------------
# 6.3 softmax cross-entropy with an ignore label


def _ce_cases():
    """(description, logits, target, ignore_index)."""
    rng = np.random.default_rng(63)
    cases = []
    for desc, shape, dtype, frac, scale, shift, ignore, tdtype in (
            ("30 % ignored", (2, 4, 5, 6), np.float64, 0.3, 2.0, 0.0, 255, np.int64),
            ("uint8 labels, 25 % ignored", (2, 3, 4, 4), np.float32, 0.25, 3.0, 0.0, 255, np.uint8),
            ("logits from about 300 to 1300, none ignored", (1, 5, 3, 3), np.float64, 0.0, 300.0, 750.0, 255,
             np.int64),
            ("ignore_index=-1, 20 % ignored", (2, 6, 3, 5), np.float32, 0.2, 1.0, 0.0, -1, np.int64),
            ("every pixel ignored", (1, 3, 2, 2), np.float64, 1.0, 1.0, 0.0, 255, np.int64)):
        N, C, H, W = shape
        logits = (scale * rng.standard_normal(shape) + shift).astype(dtype)
        target = rng.integers(0, C, (N, H, W))
        target[rng.random((N, H, W)) < frac] = ignore
        cases.append((desc, logits, target.astype(tdtype), ignore))
    return cases


def _ce_variant(logits, target, ignore, mistake):
    """(loss, dlogits) in float64 with one known mistake."""
    z = logits.astype(np.float64)
    N, C, H, W = z.shape
    t = target.astype(np.int64)
    counted = t != ignore
    if mistake == "hardcoded":  # 255 instead of ignore_index: -1 then indexes the last class
        counted = t != 255
        t = np.where(t < 0, C - 1, t)
    t = np.where(counted, t, 0)
    onehot = np.moveaxis(np.eye(C)[t], -1, 1)
    axis = -1 if mistake == "last_axis" else 1
    logp = z - z.max(axis=axis, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=axis, keepdims=True))
    nll = -(onehot * logp).sum(axis=1)
    count = {"all": N * H * W, "sum": 1}.get(mistake, counted.sum())
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 when every pixel is ignored, as torch
        loss = nll[counted].sum() / count
        d = (np.exp(logp) - (0 if mistake == "no_onehot" else onehot)) / count \
            * (counted[:, None] if mistake != "unmasked" else 1)
    return loss, -d if mistake == "sign" else d


_CE_HINTS = {
    "all": "this divides by every pixel, N*H*W: the loss is the mean over the pixels that are NOT ignored, "
           "so divide by their number (an ignored pixel is in neither the sum nor the count).",
    "sum": "this is the sum over the pixels: the loss is their mean (divide by the number of counted pixels).",
    "sign": "the gradient has the wrong sign: d loss / d logits = (softmax - onehot) / #counted (raising "
            "the right class's logit lowers the loss).",
    "hardcoded": "the pixels labelled ignore_index=-1 were counted (as the last class): use the ignore_index "
                 "argument, not 255.",
    "last_axis": "the softmax ran over the last axis (the columns): the classes are axis 1 of (N, C, H, W), so take "
                 "the max, exp and sum over axis=1 (keepdims=True).",
    "no_onehot": "the gradient is softmax - onehot: subtract 1 at each counted pixel's true class, then divide by "
                 "the number of counted pixels.",
}


_OVERFLOW = ("for logits this large np.exp overflows (exp(710) is inf in float64), or softmax underflows to 0 "
             "before the log: subtract each pixel's largest logit first and take the log-softmax directly, "
             "z - max(z) - log(sum(exp(z - max(z)))).")


def _as_loss(exercise, call, loss):
    if isinstance(loss, np.ndarray) and loss.size == 1 and loss.ndim <= 1:
        loss = loss.reshape(())[()]
    ok = isinstance(loss, (int, float, np.integer, np.floating)) and not isinstance(loss, (bool, np.bool_))
    if not ok:
        got = f"an array of shape {loss.shape}" if isinstance(loss, np.ndarray) else f"{loss!r}"
        raise ExerciseWrong(f"Exercise {exercise}: {call} returned loss {got}; expected one number, the mean "
                            "over the counted pixels")
    return float(loss)


@exercise_check("6.3")
def exercise_6_3(softmax_cross_entropy):
    """(loss, dlogits) of softmax_cross_entropy(logits, target, ignore_index) against
    F.cross_entropy(ignore_index=..., reduction="mean") and its autograd gradient."""
    import torch
    import torch.nn.functional as F

    worst = 0.0
    cases = _ce_cases()
    for desc, logits, target, ignore in cases:
        call = (f"softmax_cross_entropy(logits {logits.shape} {logits.dtype}, target {target.dtype}, "
                f"ignore_index={ignore}) [{desc}]")
        args = (logits.copy(), target.copy())
        got = _triple("6.3", call, softmax_cross_entropy(*args, ignore_index=ignore), ("loss", "dlogits"))
        _unchanged("6.3", call, {"logits": logits, "target": target}, dict(zip(("logits", "target"), args)))
        lt = torch.from_numpy(logits.copy()).requires_grad_(True)
        tloss = F.cross_entropy(lt, torch.from_numpy(target.astype(np.int64)), ignore_index=ignore)
        tloss.backward()
        loss, dlogits = _as_loss("6.3", call, got[0]), got[1]
        e_loss, e_d = tloss.item(), lt.grad.numpy()
        counted = target.astype(np.int64) != ignore

        if not counted.any():
            if not np.isnan(loss):
                raise ExerciseWrong(f"Exercise 6.3: {call}: loss {loss:g}, expected NaN. With every pixel ignored "
                                    "there is nothing to average (0 / 0): torch's F.cross_entropy returns NaN, and "
                                    "a gradient of zeros.")
        else:
            rtol, atol = _tol(logits.dtype, e_loss)
            known = {text: _ce_variant(logits, target, ignore, key)[0] for key, text in _CE_HINTS.items()}
            if not np.isfinite(loss) and desc.startswith("logits from"):
                raise ExerciseWrong(f"Exercise 6.3: {call}: loss {loss}, expected {e_loss:.6g}.\n  Hint: {_OVERFLOW}")
            worst = max(worst, compare_arrays("6.3", f"loss of {call}", np.float64(loss), e_loss, rtol=rtol,
                                              atol=atol, known_mistakes=_distinct(known, e_loss, rtol, atol),
                                              check_dtype=False))

        if isinstance(dlogits, np.ndarray) and dlogits.shape == logits.shape:
            leak = (dlogits != 0) & ~counted[:, None]
            if not np.isfinite(dlogits).all() and not counted.any():
                raise ExerciseWrong(f"Exercise 6.3: dlogits of {call} has NaN or inf values: with no pixel counted "
                                    "the gradient is 0 everywhere (do not divide by a count of 0).")
            if leak.any():
                n, c, y, x = np.argwhere(leak)[0]
                raise ExerciseWrong(f"Exercise 6.3: dlogits of {call} is not 0 at {int(leak.any(axis=1).sum())} "
                                    f"ignored pixels, the first (n, y, x) = ({n}, {y}, {x}) with "
                                    f"dlogits[{n}, {c}, {y}, {x}] = {dlogits[n, c, y, x]:.3g}.\n  Hint: a pixel "
                                    "labelled ignore_index takes no part in the loss, so its logits get no "
                                    "gradient: multiply by the mask of counted pixels.")
        if (isinstance(dlogits, np.ndarray) and dlogits.dtype.kind == "f" and not np.isfinite(dlogits).all()
                and desc.startswith("logits from")):
            raise ExerciseWrong(f"Exercise 6.3: dlogits of {call} has NaN or inf values.\n  Hint: {_OVERFLOW}")
        rtol, atol = _tol(logits.dtype, e_d)
        known = {text: _ce_variant(logits, target, ignore, key)[1] for key, text in _CE_HINTS.items()}
        atol = max(atol, 1e-300)
        worst = max(worst, compare_arrays("6.3", f"dlogits of {call}", dlogits, e_d, rtol=rtol, atol=atol,
                                          known_mistakes=_distinct(known, e_d, rtol, atol)))
    passed("6.3", f"the loss and dlogits of {len(cases)} label maps (float64 and float32; ignored pixels, uint8 "
                  "labels, huge logits, ignore_index=-1, all ignored) match F.cross_entropy and its autograd "
                  "gradient", worst, "1e-10 float64, 1e-5 float32")
