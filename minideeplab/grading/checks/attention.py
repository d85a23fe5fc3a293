"""Checks for notebook 11, atrous convolution in the attention era: exercises 11.1-11.4.

11.1 and 11.2 compare scaled dot-product attention and its backward with torch (``F.scaled_dot_product_attention``
and autograd, in float64); 11.3 compares dilated neighbourhood attention with its twin,
``reference.attention.neighbourhood_attention``; 11.4 runs the student's footprint measurement on torch layers
(the twins' global and neighbourhood attention, atrous convs) and compares it with the set of input pixels that
can reach the output token, counted from the layers' taps.
"""

from __future__ import annotations

import math

import numpy as np

from minideeplab.grading.core import ExerciseWrong, compare_arrays, crash_hint, exercise_check, passed

__all__ = ["exercise_11_1", "exercise_11_2", "exercise_11_3", "exercise_11_4"]


def _tol(dtype, expected):
    """(rtol, atol): 1e-10 in float64, 1e-5 in float32, the atol relative to the largest expected entry."""
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-10
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
    return rtol, rtol * max(scale, 1e-12)


def _distinct(known: dict, expected, rtol, atol) -> dict:
    """The known mistakes that give a different answer from the right one on this case."""
    out = {}
    for text, w in known.items():
        if w is None:
            continue
        w = np.asarray(w)
        if w.shape != np.shape(expected) or not np.allclose(w, expected, rtol=rtol, atol=atol):
            out[text] = w
    return out


def _unchanged(exercise, call, before: dict, after: dict):
    for name, a in before.items():
        if not np.array_equal(after[name], a):
            raise ExerciseWrong(f"Exercise {exercise}: {call} changed its argument `{name}` in place (an `/=` or "
                                f"`-=` on it?); leave it as it was: the caller still needs it. Build new arrays, "
                                f"e.g. s = (q @ k.swapaxes(-1, -2)) / math.sqrt(d).")


def _describe(**arrays) -> str:
    return ", ".join(f"{n} {a.shape}" for n, a in arrays.items()) + f" {next(iter(arrays.values())).dtype}"


def _nonfinite_hint(exercise, call, got, variants: dict):
    """A got with NaN or inf where the reference has none: the hint of the variant with the same non-finite
    entries, if any."""
    if not isinstance(got, np.ndarray) or got.dtype.kind != "f" or np.isfinite(got).all():
        return
    bad = ~np.isfinite(got)
    rows = bad.reshape(-1, got.shape[-1]).any(-1) if got.ndim else bad
    for text, w in variants.items():  # the same rows hold NaN or inf (entries may differ by rounding at the edge)
        if w is not None and np.shape(w) == got.shape and \
                np.array_equal(~np.isfinite(w).reshape(-1, got.shape[-1]).all(-1), rows):
            idx = tuple(int(i) for i in np.unravel_index(np.argmax(bad), got.shape))
            raise ExerciseWrong(f"Exercise {exercise}: {call}: {int(bad.sum())} NaN or inf values, the first at "
                                f"index {idx} (the reference has none).\n  Hint: {text}")


# ---------------------------------------------------------------------------------------------
# 11.1 scaled dot-product attention


def _attention_cases():
    """(description, q, k, v): seeded; the first with Nq = Nk = d (a transposed k still multiplies), then
    cross-attention, float32, and scores far beyond exp's range (some rows large, some small)."""
    rng = np.random.default_rng(111)
    cases = []
    q, k, v = (rng.standard_normal((1, 2, 6, 6)) for _ in range(3))
    cases.append(("self-attention, 6 tokens, d = 6", q, k, v))
    q, k, v = rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((2, 3, 9, 5)), rng.standard_normal((2, 3, 9, 5))
    cases.append(("7 queries on 9 keys, d = 5", q, k, v))
    q, k, v = (rng.standard_normal((1, 4, 16, 8)).astype(np.float32) for _ in range(3))
    cases.append(("float32, 16 tokens, 4 heads, d = 8", q, k, v))
    # scores of hundreds (float32) and thousands (float64): exp overflows above 88 in float32, 709 in float64
    for dtype, big in ((np.float32, 12.0), (np.float64, 40.0)):
        q = rng.standard_normal((1, 2, 8, 16))
        k, v = rng.standard_normal((1, 2, 10, 16)), rng.standard_normal((1, 2, 10, 16))
        q[..., :4, :] *= big * big  # the first 4 queries have huge scores, the others ordinary ones
        cases.append((f"{np.dtype(dtype).name}, large scores (up to {_max_score(q, k):.0f} in 4 of 8 rows)",
                      q.astype(dtype), k.astype(dtype), v.astype(dtype)))
    return cases


def _max_score(q, k):
    return float(np.abs(q @ k.swapaxes(-1, -2)).max() / math.sqrt(q.shape[-1]))


def _torch_attention(q, k, v):
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(np.asarray(a, np.float64)) for a in (q, k, v)]
    return F.scaled_dot_product_attention(*t).numpy().astype(q.dtype)


def _attention_variant(q, k, v, mistake):
    """softmax(q k^T / sqrt(d)) v in float64 written with one known mistake (NaN where it would overflow in q's
    dtype)."""
    dtype = q.dtype
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    d = q.shape[-1]
    if mistake == "transposed":
        if k.shape[-2] != k.shape[-1]:
            return None
        s = q @ k / math.sqrt(d)
    else:
        scale = {"no_scale": 1.0, "scale_d": 1.0 / d}.get(mistake, 1.0 / math.sqrt(d))
        s = (q @ k.swapaxes(-1, -2)) * scale
    axis = -2 if mistake == "axis" else -1
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if mistake == "no_max":
            shift = 0.0
        elif mistake == "global_max":
            shift = s.max()
        elif mistake == "col_max":
            shift = s.max(axis=-2, keepdims=True)
        else:
            shift = s.max(axis=axis, keepdims=True)
        e = np.exp((s - shift).astype(dtype))
        p = e / e.sum(axis=axis, keepdims=True)
    if mistake == "axis" and p.shape[-1] != v.shape[-2]:
        return None
    return p @ v


_ATTENTION_HINTS = {
    "no_scale": "the scores are not scaled: divide q k^T by sqrt(d), d = q.shape[-1] (without it the dot products "
                "grow with d and the softmax saturates).",
    "scale_d": "the scores are divided by d: scaled dot-product attention divides by sqrt(d).",
    "axis": "the softmax ran over the queries (axis -2): each query's weights must sum to 1 over the keys, the "
            "last axis of the (Nq, Nk) scores.",
    "transposed": "the scores are q @ k: each score is a dot product of a query with a key, q @ k^T, i.e. "
                  "q @ k.swapaxes(-1, -2) (k.T would also swap the batch and head axes).",
    "col_max": "the maximum subtracted is each column's: softmax(s) = softmax(s - c) only when c is the same along "
               "the softmax's axis. Subtract each row's own maximum, s.max(axis=-1, keepdims=True).",
    "no_max": "np.exp overflowed: scores of a few hundred exceed exp's range (88 in float32, 709 in float64). "
              "Subtract each row's maximum before np.exp: softmax(s) = softmax(s - max), and then every exp is "
              "at most 1.",
    "global_max": "the maximum of the whole array was subtracted: a row whose scores all lie far below it "
                  "underflows to 0 / 0. Subtract each row's own maximum, s.max(axis=-1, keepdims=True).",
}


def _check_dtype_scalar(exercise, call, got, expected):
    if isinstance(got, np.ndarray) and expected.dtype == np.float32 and got.dtype == np.float64:
        raise ExerciseWrong(f"Exercise {exercise}: {call}: dtype float64, expected float32 (the output dtype "
                            "should follow the input's).\n  Hint: np.sqrt(d) is a NumPy float64 scalar, and under "
                            "NumPy 2 a float64 scalar turns a float32 array into float64: divide by math.sqrt(d) "
                            "(a Python float), or by d ** 0.5.")


@exercise_check("11.1")
def exercise_11_1(attention):
    """attention(q, k, v) -> softmax(q k^T / sqrt(d)) v against torch's F.scaled_dot_product_attention."""
    worst = 0.0
    cases = _attention_cases()
    for desc, q, k, v in cases:
        call = f"attention({_describe(q=q, k=k, v=v)}) [{desc}]"
        args = (q.copy(), k.copy(), v.copy())
        got = attention(*args)
        _unchanged("11.1", call, {"q": q, "k": k, "v": v}, dict(zip("qkv", args)))
        expected = _torch_attention(q, k, v)
        known = {text: _attention_variant(q, k, v, key) for key, text in _ATTENTION_HINTS.items()}
        _nonfinite_hint("11.1", call, got, known)
        _check_dtype_scalar("11.1", call, got, expected)
        rtol, atol = _tol(q.dtype, expected)
        known = {text: (w.astype(q.dtype) if w is not None else None) for text, w in known.items()}
        worst = max(worst, compare_arrays("11.1", call, got, expected, rtol=rtol, atol=atol,
                                          known_mistakes=_distinct(known, expected, rtol, atol)))
    passed("11.1", f"{len(cases)} cases (self- and cross-attention, several heads, float32, scores far beyond exp's "
                   "range) equal torch's scaled_dot_product_attention", worst, "1e-10 float64, 1e-5 float32")


# ---------------------------------------------------------------------------------------------
# 11.2 the backward of attention


def _backward_cases():
    """(description, dout, q, k, v): seeded; the first square (Nq = Nk, so P and P^T have one shape)."""
    rng = np.random.default_rng(112)
    cases = []
    for desc, sq, sk, dv, dtype in (("self-attention, 6 tokens, d = 4", (1, 2, 6, 4), (1, 2, 6, 4), 4, np.float64),
                                    ("5 queries on 7 keys, d = 4", (2, 2, 5, 4), (2, 2, 7, 4), 4, np.float64),
                                    ("float32, 12 tokens, d = 8", (1, 3, 12, 8), (1, 3, 12, 8), 8, np.float32)):
        q, k = 1.5 * rng.standard_normal(sq), 1.5 * rng.standard_normal(sk)
        v = rng.standard_normal(sk[:-1] + (dv,))
        dout = rng.standard_normal(sq[:-1] + (dv,))
        cases.append((desc, *(a.astype(dtype) for a in (dout, q, k, v))))
    return cases


def _torch_backward(dout, q, k, v):
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(np.asarray(a, np.float64)).requires_grad_(True) for a in (q, k, v)]
    F.scaled_dot_product_attention(*t).backward(torch.from_numpy(np.asarray(dout, np.float64)))
    return tuple(a.grad.numpy().astype(q.dtype) for a in t)


def _backward_variant(dout, q, k, v, mistake):
    """(dq, dk, dv) in float64 with one known mistake (None where the mistake cannot be written for this case)."""
    dout, q, k, v = (np.asarray(a, np.float64) for a in (dout, q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.swapaxes(-1, -2)) * scale
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    pt = p.swapaxes(-1, -2)
    if mistake == "dv_p":
        dv = p @ dout if p.shape[-1] == p.shape[-2] else None
    else:
        dv = pt @ dout
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * dp if mistake == "no_rowsum" else p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    c = 1.0 if mistake == "no_scale" else scale
    dq = (ds @ k) * c
    if mistake == "dk_ds":
        dk = (ds @ q) * c if ds.shape[-1] == ds.shape[-2] else None
    else:
        dk = (ds.swapaxes(-1, -2) @ q) * c
    return dq, dk, dv


_BACKWARD_HINTS = {
    "no_rowsum": "the softmax's backward lost its row-sum term: each row of P sums to 1, so raising one score "
                 "lowers the others. dS = P * (dP - sum(dP * P, axis=-1, keepdims=True)), not P * dP.",
    "no_scale": "the scale is missing: the scores are (q k^T) / sqrt(d), so dq = dS k / sqrt(d) and "
                "dk = dS^T q / sqrt(d).",
    "dv_p": "dv = P^T dout: out = P v sends value j to every query i with weight P[i, j], so value j gathers "
            "sum_i P[i, j] dout[i], a column of P (P.swapaxes(-1, -2) @ dout).",
    "dk_ds": "dk = dS^T q: key j meets every query i through S[i, j], so it gathers sum_i dS[i, j] q[i], a "
             "column of dS (dS.swapaxes(-1, -2) @ q).",
}


@exercise_check("11.2")
def exercise_11_2(attention_backward):
    """attention_backward(dout, q, k, v) -> (dq, dk, dv) against torch autograd through
    F.scaled_dot_product_attention, in float64."""
    worst = 0.0
    cases = _backward_cases()
    for desc, dout, q, k, v in cases:
        call = f"attention_backward({_describe(dout=dout, q=q, k=k, v=v)}) [{desc}]"
        args = (dout.copy(), q.copy(), k.copy(), v.copy())
        got = attention_backward(*args)
        _unchanged("11.2", call, {"dout": dout, "q": q, "k": k, "v": v}, dict(zip(("dout", "q", "k", "v"), args)))
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise ExerciseWrong(f"Exercise 11.2: {call} returned {type(got).__name__}"
                                f"{f' of length {len(got)}' if isinstance(got, (tuple, list)) else ''}; "
                                "expected a tuple (dq, dk, dv)")
        expected = _torch_backward(dout, q, k, v)
        variants = {key: _backward_variant(dout, q, k, v, key) for key in _BACKWARD_HINTS}
        for i, name in enumerate(("dq", "dk", "dv")):
            rtol, atol = _tol(q.dtype, expected[i])
            known = {_BACKWARD_HINTS[key]: (None if w[i] is None else w[i].astype(q.dtype))
                     for key, w in variants.items()}
            _check_dtype_scalar("11.2", f"{call}, {name}", got[i], expected[i])
            worst = max(worst, compare_arrays("11.2", f"{call}, {name}", got[i], expected[i], rtol=rtol, atol=atol,
                                              known_mistakes=_distinct(known, expected[i], rtol, atol)))
    passed("11.2", f"dq, dk and dv of {len(cases)} cases (self- and cross-attention, float32) equal torch autograd",
           worst, "1e-10 float64, 1e-5 float32, relative to the largest entry")


# ---------------------------------------------------------------------------------------------
# 11.3 dilated neighbourhood attention


def _neighbourhood_cases():
    """(description, q, k, v, hw, kernel, rate): seeded; grids that are not square, windows that leave the grid."""
    rng = np.random.default_rng(113)
    cases = []
    for B, h, (H, W), d, kernel, rate, dtype in ((1, 2, (5, 7), 4, 3, 2, np.float64),
                                                 (2, 1, (6, 6), 3, 5, 1, np.float64),
                                                 (1, 2, (8, 9), 4, 3, 3, np.float64),
                                                 (1, 1, (4, 11), 2, 3, 5, np.float64),
                                                 (1, 2, (7, 10), 8, 3, 2, np.float32)):
        q, k, v = (rng.standard_normal((B, h, H * W, d)).astype(dtype) for _ in range(3))
        desc = f"a {H}x{W} grid, {h} head{'s' if h > 1 else ''}, d = {d}, kernel={kernel}, rate={rate}"
        cases.append((desc, q, k, v, (H, W), kernel, rate))
    return cases


def _taps(n, size, kernel, rate, mistake):
    """The key positions (along one axis of `size`) of the query at n, None for a tap left out."""
    r = kernel // 2
    if mistake == "natten":  # NATTEN: the window of a dilation group shifted to stay inside the grid
        group, idx = n % rate, n // rate
        count = len(range(group, size, rate))
        if count < kernel:
            return None
        start = min(max(idx - r, 0), count - kernel)
        return [group + rate * (start + t) for t in range(kernel)]
    step = 1 if mistake == "no_rate" else rate
    offsets = range(0, kernel) if mistake == "corner" else range(-r, r + 1)
    return [n + step * t if 0 <= n + step * t < size or mistake == "padded" else None for t in offsets]


def _neighbourhood_variant(q, k, v, hw, kernel, rate, mistake):
    """The attention output (B, h, N, d) in float64 with one known mistake; None if it does not apply."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    H, W = (hw[1], hw[0]) if mistake == "transposed_grid" else hw
    scale = 1.0 if mistake == "no_scale" else 1.0 / math.sqrt(q.shape[-1])
    out = np.zeros_like(q)
    for n in range(H * W):
        y, x = divmod(n, W)
        rows, cols = _taps(y, H, kernel, rate, mistake), _taps(x, W, kernel, rate, mistake)
        if rows is None or cols is None:
            return None
        s, vals = [], []
        for ty in rows:
            for tx in cols:
                inside = ty is not None and tx is not None and 0 <= ty < H and 0 <= tx < W
                if inside:
                    m = ty * W + tx
                    s.append((q[:, :, n] * k[:, :, m]).sum(-1) * scale)
                    vals.append(v[:, :, m])
                elif mistake == "padded":  # a zero key (score 0) and a zero value
                    s.append(np.zeros(q.shape[:2]))
                    vals.append(np.zeros(q.shape[:2] + (q.shape[-1],)))
        s = np.stack(s, -1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, n] = np.einsum("bht,bhtd->bhd", p, np.stack(vals, -2))
    return out


_NEIGHBOURHOOD_HINTS = {
    "no_rate": "the rate is ignored: the window's taps are rate tokens apart, offsets (-(kernel//2) .. "
               "kernel//2) * rate along each axis, as an atrous conv's.",
    "corner": "the window is not centred on its query: its offsets run from -(kernel//2) * rate to "
              "+(kernel//2) * rate, the query in the middle (offset 0), not from 0 to (kernel-1) * rate.",
    "padded": "taps outside the grid were counted as keys (zero padding adds scores of 0 to the softmax): in "
              "this course a tap outside the grid is left out of the softmax (mask its score with -inf).",
    "natten": "near the border this shifts the window to stay inside the grid, as NATTEN (DiNAT's library) does; "
              "in this course the window stays centred on its query and its taps outside the grid are left out.",
    "no_scale": "the scores are not scaled: divide q . k by sqrt(d), d = q.shape[-1], as in exercise 11.1.",
    "transposed_grid": "the grid is read column by column: hw = (H, W) and the tokens are in row-major order, "
                       "token n at row n // W, column n % W (reshape(H, W), not (W, H)).",
}


@exercise_check("11.3")
def exercise_11_3(neighbourhood_attention):
    """neighbourhood_attention(q, k, v, hw, kernel, rate) against the twin,
    reference.attention.neighbourhood_attention."""
    import torch

    from minideeplab.reference.attention import neighbourhood_attention as twin

    worst = 0.0
    cases = _neighbourhood_cases()
    for desc, q, k, v, hw, kernel, rate in cases:
        call = f"neighbourhood_attention({_describe(q=q, k=k, v=v)}, hw={hw}, kernel={kernel}, rate={rate}) [{desc}]"
        args = (q.copy(), k.copy(), v.copy())
        got = neighbourhood_attention(*args, hw, kernel, rate)
        _unchanged("11.3", call, {"q": q, "k": k, "v": v}, dict(zip("qkv", args)))
        t = [torch.from_numpy(a.astype(np.float64)) for a in (q, k, v)]
        expected = twin(*t, hw, kernel, rate).numpy().astype(q.dtype)
        _check_dtype_scalar("11.3", call, got, expected)
        rtol, atol = _tol(q.dtype, expected)
        known = {}
        for key, text in _NEIGHBOURHOOD_HINTS.items():
            w = _neighbourhood_variant(q, k, v, hw, kernel, rate, key)
            known[text] = None if w is None else w.astype(q.dtype)
        worst = max(worst, compare_arrays("11.3", call, got, expected, rtol=rtol, atol=atol,
                                          known_mistakes=_distinct(known, expected, rtol, atol)))
    passed("11.3", f"{len(cases)} grids (not square; kernel 3 and 5; rates 1 to 5, windows leaving the grid; "
                   "float32) equal the PyTorch twin", worst, "1e-10 float64, 1e-5 float32")


# ---------------------------------------------------------------------------------------------
# 11.4 the footprint of one output token, measured by input gradients


def _footprint_cases():
    """(description, layer, taps, x, token): taps is a list of per-layer offsets along one axis ("all" for a layer
    that reads the whole map), first layer first."""
    import torch

    from minideeplab.reference.receptive import attention_map_layer, conv_map_layer, neighbourhood_map_layer, \
        stack_layers

    rng = np.random.default_rng(114)
    C, hw = 4, (12, 15)
    conv3 = [(-2, 0, 2)]  # a 3x3 at rate 2

    def na(kernel, rate):
        return [tuple(t * rate for t in range(-(kernel // 2), kernel // 2 + 1))]

    specs = [
        ("global self-attention, 2 heads", attention_map_layer(C, 2, rng), ["all"], hw, (4, 9)),
        ("neighbourhood attention kernel=3 rate=1", neighbourhood_map_layer(C, 2, 3, 1, rng), na(3, 1), hw, (5, 6)),
        ("neighbourhood attention kernel=3 rate=4", neighbourhood_map_layer(C, 2, 3, 4, rng), na(3, 4), hw, (5, 7)),
        ("neighbourhood attention kernel=5 rate=2, a token near the corner", neighbourhood_map_layer(C, 1, 5, 2, rng),
         na(5, 2), hw, (1, 13)),
        ("three 3x3 convs at rate 2", stack_layers(*(conv_map_layer(C, 3, 2, rng) for _ in range(3))), conv3 * 3, hw,
         (6, 8)),
        ("neighbourhood attention rate=1 then rate=3 (DiNAT's pair)",
         stack_layers(neighbourhood_map_layer(C, 2, 3, 1, rng), neighbourhood_map_layer(C, 2, 3, 3, rng)),
         na(3, 1) + na(3, 3), hw, (6, 7)),
        ("a 1x1 conv", conv_map_layer(C, 1, 1, rng), [(0,)], hw, (3, 10)),
        ("SegFormer's efficient attention, reduction ratio 2", attention_map_layer(C, 1, rng, sr_ratio=2), ["all"],
         (8, 10), (2, 3)),
    ]
    cases = []
    for desc, layer, taps, size, token in specs:
        x = torch.from_numpy(rng.standard_normal((1, C) + size))
        cases.append((desc, layer, taps, x, token))
    return cases


def _reach(taps, hw, token):
    """(H, W) bool: the input pixels from which a chain of taps, each staying inside the map, reaches `token`
    (zero padding and left-out taps carry nothing)."""
    H, W = hw
    reach = np.zeros(hw, bool)
    reach[token] = True
    for offsets in reversed(taps):  # from the output back to the input
        if offsets == "all":
            return np.ones(hw, bool)
        new = np.zeros(hw, bool)
        for dy in offsets:
            for dx in offsets:
                ys, xs = np.nonzero(reach)
                ys, xs = ys + dy, xs + dx
                keep = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
                new[ys[keep], xs[keep]] = True
        reach = new
    return reach


def _as_mask(got, hw, call):
    """The student's answer as an (H, W) bool array (numbers: non-zero means read); ExerciseWrong for a shape or
    type that cannot be one, with a hint."""
    if got is not None and not isinstance(got, np.ndarray):
        try:
            got = np.asarray(got.detach().cpu() if hasattr(got, "detach") else got)
        except Exception:
            raise ExerciseWrong(f"Exercise 11.4: {call} returned {type(got).__name__}, expected a bool array of "
                                f"shape {hw}") from None
    if got is None:
        raise ExerciseWrong(f"Exercise 11.4: {call} returned None, expected a bool array of shape {hw}. Did the "
                            "function forget to `return` its result?")
    if got.dtype.kind in "iuf":
        got = got != 0  # gradients or counts are fine too: non-zero means read
    if got.dtype != bool:
        raise ExerciseWrong(f"Exercise 11.4: {call} returned an array of dtype {got.dtype}, expected bool")
    if got.shape != hw and got.shape[-2:] == hw:
        raise ExerciseWrong(f"Exercise 11.4: {call} returned shape {got.shape}, expected {hw}.\n  Hint: a pixel is "
                            "read when the gradient of ANY of its channels is non-zero: collapse the batch and "
                            "channel axes, e.g. (x.grad[0] != 0).any(dim=0).")
    return got


@exercise_check("11.4")
def exercise_11_4(input_footprint):
    """input_footprint(layer, x, token) -> (H, W) bool against the input pixels that can reach the token through
    the layers' taps (global attention: all of them; a k x k window at rate r: its taps, inside the map; stacks:
    the sums of one tap per layer)."""
    cases = _footprint_cases()
    for desc, layer, taps, x, token in cases:
        hw = tuple(x.shape[2:])
        call = f"input_footprint(layer, x (1, {x.shape[1]}, {hw[0]}, {hw[1]}) float64, token={token}) [{desc}]"
        given = x.clone()
        try:
            got = input_footprint(layer, given, token)
        except ExerciseWrong as e:
            if e.student_error is not None and "does not require grad" in str(e.student_error):
                raise crash_hint(e, "the input must require gradients before the layer runs: "
                                    "x = x.clone().requires_grad_(True), then y = layer(x).") from e.student_error
            raise
        got = _as_mask(got, hw, call)
        expected = _reach(taps, hw, token)
        swapped = (token[1], token[0])
        known = {}
        if not expected.all():
            known["every pixel is marked, as if the gradient came from every output token (out.sum().backward()): "
                  "backpropagate from the one token only, out[0, :, i, j].sum()."] = np.ones(hw, bool)
        if swapped[0] < hw[0] and swapped[1] < hw[1] and not np.array_equal(_reach(taps, hw, swapped), expected):
            known[f"this is the footprint of token {swapped}: token = (row, column), out[0, :, row, column] "
                  "(rows are the height axis, 2)."] = _reach(taps, hw, swapped)
        if got.shape == hw and (got <= expected).all() and got.sum() < expected.sum() and got.any() and \
                not any(np.array_equal(got, w) for w in known.values()):
            known["some pixels that the token reads are missing, as if only positive gradients counted: a "
                  "gradient can be negative; a pixel is read where the gradient is non-zero (!= 0, or "
                  "abs() > 0)."] = got
        n = int(expected.sum())
        compare_arrays("11.4", f"{call}, True where the token reads the input ({n} of {expected.size} pixels)", got,
                       expected, rtol=0, atol=0, known_mistakes=known)
    passed("11.4", f"the footprints of {len(cases)} layers and stacks (global and efficient attention, neighbourhood "
                   "attention at rates 1 to 4, atrous convs, DiNAT's pair) equal the pixels their taps reach", 0.0,
           "exact")
