"""Checks for notebook 05, DeepLabv3+: exercises 5.1 (the decoder) and 5.2 (the whole model assembled).

Both run the reference twin (``reference.deeplab``, PyTorch) of a small v3+ (the mini backbone) with
seeded weights whose batch norms are moved away from the identity, so that a missing BN, or one on batch
statistics, shows.
"""

from __future__ import annotations

import numpy as np

from minideeplab.grading.checks.common import one_torch_thread
from minideeplab.grading.core import ExerciseWrong, compare_arrays, crash_hint, exercise_check, passed

__all__ = ["exercise_5_1", "exercise_5_2"]

NUM_CLASSES = 5
RTOL = {np.float32: 1e-4, np.float64: 1e-10}

# (input shape, output stride, align_corners, dtype): the paper's decoder
_DECODER_CASES = [
    ((1, 3, 64, 64), 16, False, np.float32),
    ((2, 3, 65, 49), 16, False, np.float32),   # odd sizes: 65 -> low_level 17, ASPP 5 (x4 is 20)
    ((1, 3, 65, 65), 16, True, np.float32),    # TF DeepLab's k * 16 + 1: the corners line up
    ((1, 3, 41, 33), 8, False, np.float64),    # output stride 8: the ASPP output is x2 from low_level
]
# (input shape, output stride, align_corners, dtype, decoder layout)
_MODEL_CASES = [
    ((2, 3, 65, 49), 16, False, np.float32, "paper"),
    ((1, 3, 65, 65), 8, True, np.float32, "paper"),
    ((1, 3, 64, 80), 16, True, np.float64, "smp"),      # smp's layout: multiples of 16, align_corners True
]


def _reference(output_stride, align_corners, dtype, layout, seed=5):
    """The twin of build_model("v3plus", "mini", ...) in eval mode, seeded, with non-trivial batch norms
    (weight, bias, running statistics) and classifier bias."""
    import torch

    from minideeplab.reference.deeplab import build_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = build_model("v3plus", "mini", output_stride, NUM_CLASSES, align_corners=align_corners,
                        decoder_layout=layout, aspp_separable=layout == "smp", decoder_separable=layout == "smp")
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0.0, 0.1)
                    mod.running_mean.normal_(0.0, 0.1)
                    mod.running_var.uniform_(0.5, 2.0)
            m.classifier.bias.normal_(0.0, 0.1)
    return m.to(torch.float64 if dtype == np.float64 else torch.float32).eval()


def _input(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _decoder_params(m) -> dict:
    """The decoder's and the classifier's weights and BN statistics, scratch names, numpy."""
    state = m.state_dict()
    return {k: v.detach().numpy().copy() for k, v in state.items()
            if k.startswith(("decoder.", "classifier.")) and not k.endswith("num_batches_tracked")}


def _unit(seq, h, bn="running", relu=True):
    """conv -> BN -> ReLU of a reference conv unit (nn.Sequential), with a mistake or two available."""
    import torch.nn.functional as F

    h = seq[0](h)
    b = seq[1]
    if bn == "running":
        h = b(h)
    elif bn == "batch":
        h = F.batch_norm(h, None, None, b.weight, b.bias, True, 0.0, b.eps)
    elif bn == "no_eps":
        h = F.batch_norm(h, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, 0.0)
    return F.relu(h) if relu else h


def _torch_decoder(m, low, a, align_corners, mistake=None):
    """The v3+ decoder of DeepLabModule.forward (paper layout), from the ASPP output ``a`` to the stride-4
    logits, as torch tensors; ``mistake`` names a known wrong variant."""
    import torch
    import torch.nn.functional as F

    d = m.decoder
    bn = {"batch_stats": "batch", "no_eps": "no_eps"}.get(mistake, "running")
    if mistake == "no_bn_low":
        p = F.relu(d.low_level[0](low))
    else:
        p = _unit(d.low_level, low, bn, relu=mistake != "no_relu_low")
    if mistake == "nearest":
        up = F.interpolate(a, size=low.shape[-2:], mode="nearest")
    else:
        ac = not align_corners if mistake == "align" else align_corners
        up = F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=ac)
    h = torch.cat([p, up] if mistake == "order" else [up, p], dim=1)
    units = d.fuse[:1] if mistake == "one_fuse" else d.fuse
    for u in units:
        h = _unit(u, h, bn)
    if mistake == "no_classifier":
        return h
    if mistake == "no_bias":
        return F.conv2d(h, m.classifier.weight)
    return m.classifier(h)


def _decoder_hints(config) -> dict:
    """Known mistake -> hint, with the widths of the model checked (the mini's: ASPP 64, low_level 12,
    decoder 64; the paper's 256, 48, 256)."""
    a, low, d = config.aspp_channels, config.low_level_channels, config.decoder_channels
    return {
        "align": "the ASPP output was resized with the wrong align_corners: pass the decoder's align_corners "
                 "argument on to the resize (False: torchvision's convention, True: TF DeepLab's and smp's).",
        "nearest": "the ASPP output was resized by nearest neighbour: DeepLabv3+ upsamples it bilinearly.",
        "no_bn_low": f"the 1x1 projection of low_level to {low} channels has no batch norm: it is conv -> BN "
                     f"(running statistics) -> ReLU, like every conv unit of the decoder.",
        "no_relu_low": f"the ReLU after the {low}-channel projection of low_level is missing: conv -> BN -> ReLU.",
        "order": f"the concatenation is in the wrong order: the ASPP output ({a} channels) comes first, then the "
                 f"projected low_level ({low}): decoder.fuse.0's weight ({d}, {a + low}, 3, 3) reads its input "
                 f"channels in that order.",
        "one_fuse": "only one 3x3 conv unit after the concatenation: the paper's decoder has two, "
                    "decoder.fuse.0 and decoder.fuse.1, each conv -> BN -> ReLU.",
        "batch_stats": "batch norm used the batch's own mean and variance: in eval mode it uses running_mean "
                       "and running_var, (h - mean) / sqrt(var + 1e-5) * weight + bias.",
        "no_eps": "batch norm divides by sqrt(running_var + eps) with eps = 1e-5, not by sqrt(running_var).",
        "no_classifier": f"these are the decoder's {d} features: end with the 1x1 classifier (classifier.weight, "
                         f"classifier.bias) to get one logit per class.",
        "no_bias": "the classifier's bias is missing: it is a 1x1 conv with bias (classifier.bias).",
    }


def _tol(dtype, expected):
    rtol = RTOL[dtype]
    return rtol, rtol * max(float(np.max(np.abs(expected))), 1e-12)


def _distinct(known, expected, rtol, atol):
    """The known mistakes whose answer this case tells apart from the right one (a missing eps, say, hides
    within float32's tolerance: its hint must not be given to a float32 answer that differs otherwise)."""
    return {text: v for text, v in known.items()
            if v.shape != expected.shape or not np.allclose(v, expected, rtol=rtol, atol=atol)}


@exercise_check("5.1")
@one_torch_thread()
def exercise_5_1(decoder):
    """decoder(low_level, aspp_out, params, align_corners) against the reference twin's decoder modules,
    on the features its backbone and ASPP compute from seeded images."""
    import torch

    worst = 0.0
    for k, (shape, os_, ac, dtype) in enumerate(_DECODER_CASES):
        m = _reference(os_, ac, dtype, "paper")
        with torch.no_grad():
            feats = m.backbone(torch.from_numpy(_input(shape, dtype, 50 + k)))
            low, a = feats["low_level"], m.aspp(feats["out"])
            expected = _torch_decoder(m, low, a, ac).numpy()
            known = {text: _torch_decoder(m, low, a, ac, key).numpy()
                     for key, text in _decoder_hints(m.config).items()}
        params = _decoder_params(m)
        low_np, a_np = low.numpy().copy(), a.numpy().copy()
        try:
            got = decoder(low_np.copy(), a_np.copy(), {n: v.copy() for n, v in params.items()}, ac)
        except ExerciseWrong as wrong:
            if wrong.student_error is None or "concatenat" not in str(wrong.student_error) and \
                    "must match" not in str(wrong.student_error):
                raise
            h, w = low_np.shape[2:]
            raise crash_hint(wrong, f"the two inputs of the concatenation differ in size: resize the ASPP output "
                                    f"to low_level's size, low_level.shape[2:] = ({h}, {w}), not by a factor: "
                                    f"here the ASPP output has {a_np.shape[2]} rows (output stride {os_}) and "
                                    f"{os_ // 4} x {a_np.shape[2]} = {os_ // 4 * a_np.shape[2]} is not {h}, "
                                    f"because the strides round up.") \
                from wrong.student_error
        what = (f"decoder(low_level {low_np.shape} {np.dtype(dtype).name}, aspp_out {a_np.shape}, params, "
                f"align_corners={ac}) of a mini-backbone v3+ at output stride {os_} on a "
                f"{shape[2]}x{shape[3]} image, {NUM_CLASSES} classes")
        rtol, atol = _tol(dtype, expected)
        worst = max(worst, compare_arrays("5.1", what, got, expected, rtol=rtol, atol=atol,
                                          known_mistakes=_distinct(known, expected, rtol, atol)))
    passed("5.1", f"{len(_DECODER_CASES)} decoders (output strides 16 and 8, align_corners False and True, "
                  "odd sizes, float32 and float64) match the reference's torch modules",
           worst, "1e-4 float32, 1e-10 float64")


# ------------------------------------------------------------------ exercise 5.2


def _pieces(m, x_shape, dtype):
    """backbone, aspp, decoder as numpy functions over the reference module ``m``, each checking what it
    is given (a wrong wiring raises ExerciseWrong naming it)."""
    import torch
    import torch.nn.functional as F

    spec = m.config.backbone
    c_low, c_out, c_aspp = spec.low_level_channels, spec.out_channels, m.config.aspp_channels
    ac = m.config.align_corners
    H, W = x_shape[2:]
    s4, s_out = (-(-H // 4), -(-W // 4)), (-(-H // spec.output_stride), -(-W // spec.output_stride))
    # (channels, size) -> which array it is: by channels and size, as the mini's low_level and ASPP output
    # both have 64 channels
    arrays = {(c_low, s4): "low_level", (c_out, s_out): "out", (c_aspp, s_out): "aspp_out"}

    def tensor(name, a, channels, size, what):
        if not isinstance(a, np.ndarray):
            raise ExerciseWrong(f"Exercise 5.2: {name} was given a {type(a).__name__}, expected a numpy array")
        if a.ndim != 4 or (a.shape[1], a.shape[2:]) != (channels, size):
            raise ExerciseWrong(f"Exercise 5.2: {name} was given an array of shape {a.shape}, expected {what} "
                                f"(N, {channels}, {size[0]}, {size[1]}).{_wiring_hint(name, a.shape)}")
        if a.dtype != dtype:
            raise ExerciseWrong(f"Exercise 5.2: {name} was given dtype {a.dtype}, expected {np.dtype(dtype).name} "
                                f"(the input's)")
        return torch.from_numpy(np.ascontiguousarray(a))

    def _wiring_hint(name, shape):
        given = arrays.get((shape[1], shape[2:])) if len(shape) == 4 else None
        if name == "aspp" and given == "low_level":
            return (f"\n  Hint: that is low_level (layer1, stride 4, {c_low} channels): the ASPP runs on "
                    f"features['out'] (the last stage, {c_out} channels).")
        if name == "decoder's low_level" and given == "aspp_out":
            return "\n  Hint: the arguments are swapped: decoder(low_level, aspp_out)."
        if name == "decoder's low_level" and given == "out":
            return "\n  Hint: that is features['out']: the decoder's first argument is features['low_level']."
        if name == "decoder's aspp_out" and given == "out":
            return "\n  Hint: that is the backbone's output: run the ASPP on it first, aspp(features['out'])."
        if name == "decoder's aspp_out" and given == "low_level":
            return "\n  Hint: the arguments are swapped: decoder(low_level, aspp_out)."
        return ""

    def backbone(x):
        t = tensor("backbone", x, 3, (H, W), "the image")
        if tuple(x.shape) != tuple(x_shape):
            raise ExerciseWrong(f"Exercise 5.2: backbone was given shape {x.shape}, expected the input x "
                                f"{tuple(x_shape)}")
        with torch.no_grad():
            return {k: v.numpy() for k, v in m.backbone(t).items()}

    def aspp(out):
        t = tensor("aspp", out, c_out, s_out, "the backbone's features['out']")
        with torch.no_grad():
            return m.aspp(t).numpy()

    def decoder(low_level, aspp_out):
        low = tensor("decoder's low_level", low_level, c_low, s4, "the backbone's features['low_level']")
        a = tensor("decoder's aspp_out", aspp_out, c_aspp, s_out, "the ASPP's output")
        d = m.decoder
        with torch.no_grad():
            if d.aspp_conv is not None:
                a = d.aspp_conv(a)
            h = torch.cat([F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=ac),
                           d.low_level(low)], dim=1)
            for unit in d.fuse:
                h = unit(h)
            return m.classifier(h).numpy()

    return backbone, aspp, decoder


def _model_variants(s, size, ac):
    """Known wrong finishes of the model from the stride-4 logits ``s`` (torch)."""
    import torch
    import torch.nn.functional as F

    x4 = F.interpolate(s, scale_factor=4, mode="bilinear", align_corners=ac)
    right = F.interpolate(s, size=size, mode="bilinear", align_corners=ac)
    return {
        "the final resize used the wrong align_corners: use the model's (the align_corners argument), the same "
        "as the decoder's.": F.interpolate(s, size=size, mode="bilinear", align_corners=not ac),
        "the logits were not resized: the decoder answers at stride 4; resize them bilinearly to the input's "
        "size, x.shape[2:].": s,
        "the logits were scaled by 4 instead of resized to the input's size: ceil(H / 4) * 4 is not H when H is "
        "not a multiple of 4 (65 -> 17 -> 68). Resize to x.shape[2:].": x4,
        "the logits were resized by nearest neighbour: the last step is a bilinear resize.":
            F.interpolate(s, size=size, mode="nearest"),
        "these are probabilities: return the logits, before any softmax.": torch.softmax(right, dim=1),
    }


@exercise_check("5.2")
@one_torch_thread()
def exercise_5_2(deeplabv3plus):
    """deeplabv3plus(x, backbone, aspp, decoder, align_corners) with the reference twin's pieces, against the
    reference model's whole forward (``DeepLabModule(x)["out"]``)."""
    import torch

    worst = 0.0
    for k, (shape, os_, ac, dtype, layout) in enumerate(_MODEL_CASES):
        m = _reference(os_, ac, dtype, layout, seed=9)
        x = _input(shape, dtype, 90 + k)
        backbone, aspp, decoder = _pieces(m, shape, dtype)
        got = deeplabv3plus(x.copy(), backbone, aspp, decoder, ac)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected = m(xt)["out"].numpy()
            feats = backbone(x)
            s = torch.from_numpy(decoder(feats["low_level"], aspp(feats["out"])))
            known = {text: v.numpy() for text, v in _model_variants(s, shape[2:], ac).items()}
        if isinstance(got, np.ndarray) and got.dtype.kind in "iub":
            raise ExerciseWrong(f"Exercise 5.2: deeplabv3plus returned dtype {got.dtype}: these are labels (an "
                                f"argmax?); return the logits (N, {NUM_CLASSES}, H, W)")
        what = (f"deeplabv3plus(x {shape} {np.dtype(dtype).name}, ...) of a mini-backbone v3+ at output stride "
                f"{os_}, align_corners={ac}, decoder layout {layout!r}, against the reference model's output")
        rtol, atol = _tol(dtype, expected)
        worst = max(worst, compare_arrays("5.2", what, got, expected, rtol=rtol, atol=atol,
                                          known_mistakes=_distinct(known, expected, rtol, atol)))
    passed("5.2", f"{len(_MODEL_CASES)} assembled models (output strides 16 and 8, align_corners False and True, "
                  "the paper's and smp's decoder) equal the reference DeepLabModule's output",
           worst, "1e-4 float32, 1e-10 float64")
