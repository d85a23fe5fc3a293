"""Cases of the notebook 05 checks (DeepLabv3+) for tests/test_checks.py: the package's answers, a student's
differently written ones, and plausible wrong answers with the hint each must get."""

import numpy as np

from minideeplab.scratch.units import conv1x1_forward, conv_unit_forward
from minideeplab.scratch.atrous import atrous_conv2d
from minideeplab.scratch.layers import bilinear_matrix, concat, resize_bilinear


# ------------------------------------------------------------------ the package's answers

def decoder_package(low_level, aspp_out, params, align_corners=False):
    """The v3+ decoder from the scratch model's own pieces (params doubles as buffers: eval BN reads them)."""
    p, _ = conv_unit_forward(low_level, params, params, "decoder.low_level", 1, False, False)
    h = concat([resize_bilinear(aspp_out, low_level.shape[2:], align_corners), p])
    for i in range(2):
        h, _ = conv_unit_forward(h, params, params, f"decoder.fuse.{i}", 1, False, False)
    return conv1x1_forward(h, params, "classifier")[0]


def model_package(x, backbone, aspp, decoder, align_corners=False):
    features = backbone(x)
    s = decoder(features["low_level"], aspp(features["out"]))
    return resize_bilinear(s, x.shape[2:], align_corners)


# ------------------------------------------------------------------ written as a student might

def decoder_student(low_level, aspp_out, params, align_corners=False, mistake=None):
    """BN folded into a scale and shift, 1x1 convs as einsum, resizing by matrices; one optional mistake."""
    def bn(h, name):
        g, b, mu, var = (params[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        if mistake == "batch_stats":
            mu, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
        scale = g / np.sqrt(var + (0.0 if mistake == "no_eps" else 1e-5))
        return h * scale[:, None, None] + (b - mu * scale)[:, None, None]

    def conv(h, w):
        if w.shape[2] == 1:
            return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], h)
        return atrous_conv2d(h, w, None, rate=1)

    def unit(h, name, norm=True, act=True):
        h = conv(h, params[f"{name}.0.weight"])
        h = bn(h, f"{name}.1") if norm else h
        return np.maximum(h, 0) if act else h

    p = unit(low_level, "decoder.low_level", norm=mistake != "no_bn_low", act=mistake != "no_relu_low")
    (H, W), (h, w) = low_level.shape[2:], aspp_out.shape[2:]
    if mistake == "scale4":  # resized by a factor 4 instead of to low_level's size
        H, W = 4 * h, 4 * w
    if mistake == "nearest":
        up = aspp_out[:, :, (np.arange(H) * h // H)][:, :, :, (np.arange(W) * w // W)]
    else:
        ac = (not align_corners) if mistake == "align" else align_corners
        Ah, Aw = (bilinear_matrix(n, m, ac).astype(aspp_out.dtype) for n, m in ((h, H), (w, W)))
        up = np.einsum("Hh,nchw,Ww->ncHW", Ah, aspp_out, Aw)
    x = np.concatenate([p, up] if mistake == "order" else [up, p], axis=1)
    for i in range(1 if mistake == "one_fuse" else 2):
        x = unit(x, f"decoder.fuse.{i}")
    if mistake == "no_classifier":
        return x
    logits = conv(x, params["classifier.weight"])
    return logits if mistake == "no_bias" else logits + params["classifier.bias"][:, None, None]


def model_student(x, backbone, aspp, decoder, align_corners=False, mistake=None):
    """The assembly through torch's interpolate, one optional mistake."""
    import torch
    import torch.nn.functional as F

    feats = backbone(x)
    if mistake == "aspp_low":
        a = aspp(feats["low_level"])
    else:
        a = aspp(feats["out"])
    s = decoder(a, feats["low_level"]) if mistake == "swapped" else decoder(feats["low_level"], a)
    if mistake == "no_resize":
        return s
    st = torch.from_numpy(s)
    if mistake == "x4":
        out = F.interpolate(st, scale_factor=4, mode="bilinear", align_corners=align_corners)
    elif mistake == "nearest":
        out = F.interpolate(st, size=x.shape[2:], mode="nearest")
    else:
        ac = (not align_corners) if mistake == "align" else align_corners
        out = F.interpolate(st, size=x.shape[2:], mode="bilinear", align_corners=ac)
    if mistake == "softmax":
        out = torch.softmax(out, dim=1)
    if mistake == "argmax":
        return out.argmax(1).numpy()
    return out.numpy()


def _d(mistake):
    return lambda *a: decoder_student(*a, mistake=mistake)


def _m(mistake):
    return lambda *a: model_student(*a, mistake=mistake)


CORRECT = {"exercise_5_1": decoder_package, "exercise_5_2": model_package}
STUDENT_STYLE = {"exercise_5_1": decoder_student, "exercise_5_2": model_student}

WRONG = [  # (check, wrong function, text expected in the message)
    ("exercise_5_1", _d("align"), "wrong align_corners"),
    ("exercise_5_1", _d("nearest"), "nearest neighbour"),
    ("exercise_5_1", _d("scale4"), "resize the ASPP output to low_level's size, low_level.shape[2:] = (17, 13)"),
    ("exercise_5_1", _d("no_bn_low"), "has no batch norm"),
    ("exercise_5_1", _d("no_relu_low"), "ReLU after the 12-channel projection"),
    ("exercise_5_1", _d("order"), "decoder.fuse.0's weight (64, 76, 3, 3)"),
    ("exercise_5_1", _d("one_fuse"), "only one 3x3 conv unit"),
    ("exercise_5_1", _d("batch_stats"), "running_mean"),
    ("exercise_5_1", _d("no_eps"), "eps = 1e-5"),
    ("exercise_5_1", _d("no_classifier"), "1x1 classifier"),
    ("exercise_5_1", _d("no_bias"), "bias is missing"),
    ("exercise_5_1", lambda *a: decoder_student(*a).astype(np.float64), "dtype float64, expected float32"),
    ("exercise_5_1", lambda *a: None, "forget to `return`"),
    ("exercise_5_2", _m("align"), "wrong align_corners"),
    ("exercise_5_2", _m("x4"), "scaled by 4"),
    ("exercise_5_2", _m("no_resize"), "were not resized"),
    ("exercise_5_2", _m("nearest"), "nearest neighbour"),
    ("exercise_5_2", _m("softmax"), "before any softmax"),
    ("exercise_5_2", _m("argmax"), "these are labels"),
    ("exercise_5_2", _m("aspp_low"), "the ASPP runs on features['out']"),
    ("exercise_5_2", _m("swapped"), "arguments are swapped"),
]
