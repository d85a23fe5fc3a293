"""Cases for the checks of notebook 11 (attention): merged into test_checks.py."""

import math

import numpy as np

from minideeplab.reference.receptive import input_footprint
from minideeplab.scratch import attention as A


def attention_student(q, k, v, mistake=None):
    """Scaled dot-product attention as a student writes it (einsum, the scale on q), one optional mistake."""
    d = q.shape[-1]
    if mistake == "in_place":
        q /= math.sqrt(d)
        s = np.einsum("...id,...jd->...ij", q, k)
    elif mistake == "np_sqrt":
        s = np.einsum("...id,...jd->...ij", q, k) / np.sqrt(d)  # a float64 scalar: float32 becomes float64
    elif mistake == "transposed":
        s = (q @ k) / math.sqrt(d)
    else:
        scale = {"no_scale": 1.0, "scale_d": 1.0 / d}.get(mistake, d ** -0.5)
        s = np.einsum("...id,...jd->...ij", q * scale, k)
    axis = -2 if mistake == "axis" else -1
    with np.errstate(over="ignore", invalid="ignore"):
        if mistake == "no_max":
            e = np.exp(s)
        elif mistake == "global_max":
            e = np.exp(s - s.max())
        elif mistake == "col_max":
            e = np.exp(s - s.max(axis=-2, keepdims=True))
        else:
            e = np.exp(s - s.max(axis=axis, keepdims=True))
        p = e / e.sum(axis=axis, keepdims=True)
    return np.einsum("...ij,...jd->...id", p, v)


def attention_backward_student(dout, q, k, v, mistake=None):
    """The backward by the chain rule through S, P and out, as a student writes it, one optional mistake."""
    c = 1 / math.sqrt(q.shape[-1])
    s = np.einsum("...id,...jd->...ij", q, k) * c
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    dv = np.einsum("...ij,...id->...jd", p, dout) if mistake != "dv_p" else p @ dout
    dp = np.einsum("...id,...jd->...ij", dout, v)
    if mistake == "no_rowsum":
        ds = p * dp
    else:
        ds = p * dp - p * np.einsum("...ij,...ij->...i", p, dp)[..., None]
    if mistake == "no_scale":
        c = 1.0
    dq = np.einsum("...ij,...jd->...id", ds, k) * c
    dk = (ds @ q) * c if mistake == "dk_ds" else np.einsum("...ij,...id->...jd", ds, q) * c
    if mistake == "pair":
        return dq, dk
    if mistake == "float64":
        return dq, dk, dv.astype(np.float64) / np.float64(1.0)
    return dq, dk, dv


def neighbourhood_student(q, k, v, hw, kernel, rate, mistake=None):
    """Dilated neighbourhood attention by padding the grid and masking the padded taps, as a student writes it."""
    B, h, N, d = q.shape
    H, W = (hw[1], hw[0]) if mistake == "transposed_grid" else hw
    r = kernel // 2
    step = 1 if mistake == "no_rate" else rate
    pad = step * (kernel - 1) if mistake == "corner" else step * r
    kg = np.pad(k.reshape(B, h, H, W, d), ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    vg = np.pad(v.reshape(B, h, H, W, d), ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    inside = np.pad(np.ones((H, W), bool), pad)
    offsets = range(0, kernel) if mistake == "corner" else range(-r, r + 1)
    scores, values, masks = [], [], []
    for i in offsets:
        for j in offsets:
            rows = slice(pad + i * step, pad + i * step + H)
            cols = slice(pad + j * step, pad + j * step + W)
            scores.append(np.einsum("bhnd,bhnd->bhn", q, kg[:, :, rows, cols].reshape(B, h, N, d)))
            values.append(vg[:, :, rows, cols].reshape(B, h, N, d))
            masks.append(inside[rows, cols].reshape(N))
    s = np.stack(scores, -1) / (1.0 if mistake == "no_scale" else math.sqrt(d))
    if mistake != "padded":
        s = np.where(np.stack(masks, -1), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhnt,bhntd->bhnd", p, np.stack(values, -2))


def footprint_student(layer, x, token, mistake=None):
    """The input gradient of one token by backward(), as a student writes it, one optional mistake."""
    x = x.clone().requires_grad_(mistake != "no_grad")
    y = layer(x)
    i, j = (token[1], token[0]) if mistake == "swapped" else token
    if mistake == "all_tokens":
        y.sum().backward()
    else:
        y[0, :, i, j].sum().backward()
    if mistake == "positive":
        return (x.grad[0] > 0).any(dim=0).numpy()
    if mistake == "channels":
        return x.grad[0].numpy()
    return x.grad[0].abs().sum(dim=0).numpy()  # a float map: non-zero means read


CORRECT = {
    "exercise_11_1": lambda q, k, v: A.attention(q, k, v)[0],
    "exercise_11_2": lambda dout, q, k, v: A.attention_backward(dout, A.attention(q, k, v)[1]),
    "exercise_11_3": lambda q, k, v, hw, kernel, rate: A.neighbourhood_attention(q, k, v, hw, kernel, rate)[0],
    "exercise_11_4": input_footprint,
}
STUDENT_STYLE = {"exercise_11_1": attention_student, "exercise_11_2": attention_backward_student,
                 "exercise_11_3": neighbourhood_student, "exercise_11_4": footprint_student}

WRONG = [
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="no_scale"), "the scores are not scaled"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="scale_d"), "divided by d"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="axis"), "the softmax ran over the queries"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="transposed"), "q @ k^T"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="no_max"), "np.exp overflowed"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="global_max"), "maximum of the whole array"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="col_max"), "each column's"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="in_place"), "changed its argument `q` in place"),
    ("exercise_11_1", lambda *a: attention_student(*a, mistake="np_sqrt"), "math.sqrt(d)"),
    ("exercise_11_1", lambda q, k, v: attention_student(q, k, v)[..., :-1, :], "shape"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="no_rowsum"), "row-sum term"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="no_scale"), "the scale is missing"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="dv_p"), "dv = P^T dout"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="dk_ds"), "dk = dS^T q"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="pair"), "expected a tuple (dq, dk, dv)"),
    ("exercise_11_2", lambda *a: attention_backward_student(*a, mistake="float64"), "dtype float64, expected float32"),
    ("exercise_11_3", lambda *a: neighbourhood_student(*a, mistake="no_rate"), "the rate is ignored"),
    ("exercise_11_3", lambda *a: neighbourhood_student(*a, mistake="corner"), "not centred on its query"),
    ("exercise_11_3", lambda *a: neighbourhood_student(*a, mistake="padded"), "taps outside the grid were counted"),
    ("exercise_11_3", lambda *a: neighbourhood_student(*a, mistake="no_scale"), "the scores are not scaled"),
    ("exercise_11_3", lambda *a: neighbourhood_student(*a, mistake="transposed_grid"), "row-major order"),
    ("exercise_11_4", lambda *a: footprint_student(*a, mistake="all_tokens"), "from the one token only"),
    ("exercise_11_4", lambda *a: footprint_student(*a, mistake="positive"), "a gradient can be negative"),
    ("exercise_11_4", lambda *a: footprint_student(*a, mistake="swapped"), "token = (row, column)"),
    ("exercise_11_4", lambda *a: footprint_student(*a, mistake="channels"), "collapse the batch and channel axes"),
    ("exercise_11_4", lambda *a: footprint_student(*a, mistake="no_grad"), "must require gradients"),
]


def natten_student(q, k, v, hw, kernel, rate):
    """NATTEN's convention: a border query's window shifted to stay inside its dilation group."""
    B, h, N, d = q.shape
    H, W = hw
    out = np.zeros_like(q)

    def taps(n, size):
        group, count = n % rate, len(range(n % rate, size, rate))
        start = min(max(n // rate - kernel // 2, 0), count - kernel)
        return [group + rate * (start + t) for t in range(kernel)]
    for n in range(N):
        y, x = divmod(n, W)
        idx = [ty * W + tx for ty in taps(y, H) for tx in taps(x, W)]
        s = np.einsum("bhd,bhtd->bht", q[:, :, n], k[:, :, idx]) / math.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, n] = np.einsum("bht,bhtd->bhd", p / p.sum(-1, keepdims=True), v[:, :, idx])
    return out


def natten_where_it_applies(q, k, v, hw, kernel, rate):
    """NATTEN's answer where its windows fit the grid (the 4x11 case at rate 5 has dilation groups too short for
    a kernel of 3: NATTEN refuses it), this course's elsewhere, so the first wrong case is one NATTEN takes."""
    if any(len(range(g, size, rate)) < kernel for size in hw for g in range(min(rate, size))):
        return A.neighbourhood_attention(q, k, v, hw, kernel, rate)[0]
    return natten_student(q, k, v, hw, kernel, rate)


WRONG.append(("exercise_11_3", natten_where_it_applies, "as NATTEN (DiNAT's library) does"))

