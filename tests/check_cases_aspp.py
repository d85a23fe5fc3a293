"""Cases for tests/test_checks.py, notebook 04 (ASPP): exercises 4.1-4.3, each with student-style answers that
make one known mistake."""

import numpy as np

from minideeplab.scratch import atrous_conv2d, layers
from minideeplab.scratch.aspp import ASPP, aspp_forward


# ------------------------------------------------------------------ 4.1 valid taps

def taps_closed_form(height, width, rate):
    def inside(n):
        y = np.arange(n)
        return 1 + (y - rate >= 0) + (y + rate <= n - 1)
    return inside(height)[:, None] * inside(width)[None, :]


def taps_student(height, width, rate, mistake=None):
    """Loops over pixels and taps, as a student writes it, one optional mistake."""
    H, W = (width, height) if mistake == "swap" else (height, width)
    step = 1 if mistake == "no_rate" else rate
    def inside(p, d, n):  # position p + d * step on an axis of n pixels
        return 0 <= p + d * step < (n - 1 if mistake == "strict_far" and d > 0 else n)

    out = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            rows = sum(inside(y, d, H) for d in (-1, 0, 1))
            cols = sum(inside(x, d, W) for d in (-1, 0, 1))
            out[y, x] = rows + cols if mistake == "sum" else rows * cols
    return out / 9 if mistake == "fraction" else out


# ------------------------------------------------------------------ 4.2 image pooling

def pooling_scratch(x, weight, gamma, beta, running_mean, running_var):
    g = atrous_conv2d(layers.global_avg_pool(x), weight, None, rate=1)
    g = layers.relu(layers.batch_norm2d(g, gamma, beta, running_mean, running_var, False)[0])
    return layers.resize_bilinear(g, x.shape[2:], False)


def pooling_student(x, weight, gamma, beta, running_mean, running_var, mistake=None):
    """Plain NumPy, the 1x1 conv before the mean (they commute), one optional mistake."""
    if mistake == "max":  # max pooling of x, then the conv
        h = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x.max(axis=(2, 3), keepdims=True))
    elif mistake in ("batch_mean", "batch_mean_one"):  # x.mean(axis=(0, 2, 3)): one vector for the batch
        h = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x.mean(axis=(0, 2, 3), keepdims=True))
        if mistake == "batch_mean":
            h = np.repeat(h, x.shape[0], axis=0)
    else:
        h = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x).mean(axis=(2, 3), keepdims=True)
    if mistake == "batch_stats":
        mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
    else:
        mean, var = running_mean, running_var
    std = {"no_eps": np.sqrt(var), "var_not_std": var + 1e-5}.get(mistake, np.sqrt(var + 1e-5))
    if mistake != "no_bn":
        h = (h - mean[:, None, None]) / std[:, None, None] * gamma[:, None, None] + beta[:, None, None]
    if mistake != "no_relu":
        h = np.maximum(h, 0)
    if mistake == "float64":
        h = h.astype(np.float64)
    return h if mistake == "not_broadcast" else np.broadcast_to(h, h.shape[:2] + x.shape[2:])


# ------------------------------------------------------------------ 4.3 the ASPP forward

def aspp_package(x, params, buffers, atrous_rates):
    cout, cin = params["convs.0.0.weight"].shape[:2]
    return aspp_forward(ASPP(cin, cout, tuple(atrous_rates)), params, buffers, x, False)[0]


def aspp_student(x, params, buffers, atrous_rates, mistake=None):
    """Built from the package's layers, as the notebook suggests, one optional mistake."""
    N, C, H, W = x.shape

    def unit(h, conv, bn, rate=1, relu=True):
        h = atrous_conv2d(h, params[f"{conv}.weight"], None, rate=rate)
        if mistake != "no_bn":
            stats = [buffers[f"{bn}.running_mean"], buffers[f"{bn}.running_var"]]
            if mistake != "in_place":
                stats = [s.copy() for s in stats]
            training = mistake in ("batch_stats", "in_place")
            h = layers.batch_norm2d(h, params[f"{bn}.weight"], params[f"{bn}.bias"], *stats, training)[0]
        return layers.relu(h) if relu else h

    outs = [unit(x, "convs.0.0", "convs.0.1")]
    for i, rate in enumerate(atrous_rates, start=1):
        outs.append(unit(x, f"convs.{i}.0", f"convs.{i}.1", i if mistake == "rate_index" else rate))
    p = len(atrous_rates) + 1
    pooled = np.max(x, axis=(2, 3), keepdims=True) if mistake == "max" else layers.global_avg_pool(x)
    if mistake == "batch_mean":
        pooled = np.repeat(x.mean(axis=(0, 2, 3), keepdims=True), N, axis=0)
    g = np.broadcast_to(unit(pooled, f"convs.{p}.1", f"convs.{p}.2"), outs[0].shape)
    outs = [g] + outs if mistake == "pool_first" else outs + [g]
    h = layers.concat(outs)
    if mistake == "no_project":
        return h
    if mistake == "project_conv_only":
        return atrous_conv2d(h, params["project.0.weight"], None, rate=1)
    y = unit(h, "project.0", "project.1", relu=mistake != "no_relu_project")
    return y / 0.5 if mistake == "dropout_eval" else y


def _m(fn, mistake):
    return lambda *a: fn(*a, mistake=mistake)


CORRECT = {
    "exercise_4_1": taps_closed_form,
    "exercise_4_2": pooling_scratch,
    "exercise_4_3": aspp_package,
}
STUDENT_STYLE = {
    "exercise_4_1": taps_student,
    "exercise_4_2": pooling_student,
    "exercise_4_3": aspp_student,
}

WRONG = [  # (check, wrong function, text expected in the message)
    ("exercise_4_1", _m(taps_student, "sum"), "a product, not a sum"),
    ("exercise_4_1", _m(taps_student, "fraction"), "not the fraction"),
    ("exercise_4_1", _m(taps_student, "no_rate"), "`rate` pixels apart"),
    ("exercise_4_1", _m(taps_student, "strict_far"), "off by one at the far border"),
    ("exercise_4_1", _m(taps_student, "swap"), "rows and columns are swapped"),
    ("exercise_4_1", _m(taps_student, "strict_far"), "first wrong pixel: (row"),
    ("exercise_4_1", lambda *a: None, "forget to `return`"),
    ("exercise_4_2", _m(pooling_student, "not_broadcast"), "brought back to the map"),
    ("exercise_4_2", _m(pooling_student, "no_bn"), "batch norm is missing"),
    ("exercise_4_2", _m(pooling_student, "no_relu"), "ReLU after the batch norm"),
    ("exercise_4_2", _m(pooling_student, "batch_stats"), "running_mean and running_var"),
    ("exercise_4_2", _m(pooling_student, "no_eps"), "eps is missing"),
    ("exercise_4_2", _m(pooling_student, "var_not_std"), "not by the variance"),
    ("exercise_4_2", _m(pooling_student, "max"), "global average pooling"),
    ("exercise_4_2", _m(pooling_student, "float64"), "dtype float64, expected float32"),
    ("exercise_4_2", _m(pooling_student, "batch_mean"), "every image gets the same vector"),
    ("exercise_4_2", _m(pooling_student, "batch_mean_one"), "leaving one sample"),
    ("exercise_4_3", _m(aspp_student, "no_bn"), "batch norms are missing"),
    ("exercise_4_3", _m(aspp_student, "batch_stats"), "batch's statistics"),
    ("exercise_4_3", _m(aspp_student, "in_place"), "changed `buffers` in place"),
    ("exercise_4_3", _m(aspp_student, "pool_first"), "TF DeepLab"),
    ("exercise_4_3", _m(aspp_student, "rate_index"), "atrous_rates[i - 1]"),
    ("exercise_4_3", _m(aspp_student, "no_project"), "projection is missing"),
    ("exercise_4_3", _m(aspp_student, "project_conv_only"), "stops after its 1x1 conv"),
    ("exercise_4_3", _m(aspp_student, "dropout_eval"), "identity in eval mode"),
    ("exercise_4_3", _m(aspp_student, "max"), "global average pooling"),
    ("exercise_4_3", _m(aspp_student, "no_relu_project"), "the ReLU after the projection is missing"),
    ("exercise_4_3", _m(aspp_student, "batch_mean"), "image pooling averaged over the batch too"),
    ("exercise_4_3", _m(aspp_student, "no_relu_project"), "Exercise 4.3: aspp_v3(x (2, 12, 9, 11)"),
]
