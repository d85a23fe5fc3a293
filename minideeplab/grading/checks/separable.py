"""Checks for notebook 10, backbones for DeepLab (depthwise-separable convolutions in MobileNetV3 and aligned
Xception): exercises 10.1-10.3.

10.1 counts the multiply-adds and parameters of a full conv and of its depthwise-separable replacement, against
the counts ``bench.cost.conv_counts`` reads off torch's ``nn.Conv2d`` modules (forward hooks, meta device);
10.2 runs MobileNetV3-Large's inverted residual blocks of the twin (``reference.mobilenet``, torchvision's
layout) with seeded weights; 10.3 reads the stride and rate of every block of the twin of aligned Xception
(``reference.xception``, built on the meta device) at output strides 8, 16 and 32.
"""

from __future__ import annotations

import functools

import numpy as np

from minideeplab.grading.checks.common import one_torch_thread
from minideeplab.grading.core import ExerciseWrong, compare_arrays, crash_hint, exercise_check, passed

__all__ = ["exercise_10_1", "exercise_10_2", "exercise_10_3"]


# ---------------------------------------------------------------------------------------------
# 10.1 the cost of a depthwise-separable conv

_COST_CASES = [  # (c_in, c_out, k, height, width, stride, rate)
    (728, 728, 3, 33, 33, 1, 1),      # Xception-65's middle flow, 513x513 at output stride 16
    (728, 728, 3, 65, 65, 1, 2),      # ... at output stride 8: rate 2
    (256, 728, 3, 129, 129, 2, 1),    # entry block 3's last separable conv: stride 2, 129 -> 65
    (960, 160, 5, 33, 33, 1, 2),      # MobileNetV3's last blocks: a 5x5 depthwise at rate 2
    (32, 64, 7, 65, 49, 2, 1),        # odd sizes, not square, stride 2
    (24, 16, 1, 10, 10, 1, 1),        # a 1x1 "depthwise": a scale per channel
    (3, 32, 3, 513, 513, 2, 1),       # a stem-like conv on three channels
]
_COST_KEYS = ("full_mult_adds", "full_params", "separable_mult_adds", "separable_params")


def _torch_costs(c_in, c_out, k, height, width, stride, rate):
    """The four counts, from torch's modules on the meta device: a full k x k conv, and a depthwise k x k
    (groups = c_in) followed by a pointwise 1x1, "same" padding, no biases."""
    import torch
    from torch import nn

    from minideeplab.bench.cost import conv_counts

    pad = rate * (k - 1) // 2
    with torch.device("meta"):
        full = nn.Conv2d(c_in, c_out, k, stride, pad, rate, bias=False)
        separable = nn.Sequential(nn.Conv2d(c_in, c_in, k, stride, pad, rate, groups=c_in, bias=False),
                                  nn.Conv2d(c_in, c_out, 1, bias=False))
        x = torch.empty(1, c_in, height, width)
    out = {}
    for name, m in (("full", full), ("separable", separable)):
        out[f"{name}_mult_adds"] = sum(macs for macs, _ in conv_counts(m, x).values())
        out[f"{name}_params"] = sum(p.numel() for p in m.parameters())
    return out


def _cost_variants(c_in, c_out, k, height, width, stride, rate):
    """{mistake: the four counts it gives}."""
    def counts(ho, wo, kk=k, dw_out=c_in, pw_hw=None, pointwise=True, dw_full=False, bias=False):
        pw_hw = ho * wo if pw_hw is None else pw_hw
        dw_w = kk * kk * (c_in * c_out if dw_full else dw_out)
        pw_w = c_in * c_out if pointwise else 0
        full = kk * kk * c_in * c_out
        return {"full_mult_adds": full * ho * wo, "full_params": full + bias * c_out,
                "separable_mult_adds": dw_w * ho * wo + pw_w * pw_hw,
                "separable_params": dw_w + pw_w + bias * ((c_out if dw_full else dw_out) + c_out * pointwise)}

    ho, wo = -(-height // stride), -(-width // stride)
    keff = rate * (k - 1) + 1
    return {
        "no_pointwise": counts(ho, wo, pointwise=False),
        "dw_full": counts(ho, wo, dw_full=True),
        "input_size": counts(height, width),
        "pointwise_input_size": counts(ho, wo, pw_hw=height * width),
        "floor": counts(height // stride, width // stride),
        "rate": counts(ho, wo, kk=keff),
        "dw_out_channels": counts(ho, wo, dw_out=c_out),
        "bias": counts(ho, wo, bias=True),
    }


_COST_HINTS = {
    "no_pointwise": "the separable conv's pointwise part is missing: after the depthwise k x k (one filter per "
                    "channel) a 1x1 conv mixes the channels, C_in x C_out weights at every output pixel.",
    "dw_full": "the depthwise conv was counted as a full one (k*k*C_in*C_out): it has one k x k filter per input "
               "channel, k*k*C_in weights, each output channel reading its own input channel only.",
    "input_size": "the counts use the input's size: with a stride every conv runs once per OUTPUT pixel, "
                  "ceil(H / stride) x ceil(W / stride).",
    "pointwise_input_size": "the pointwise 1x1 runs on the depthwise conv's output, which is already strided: "
                            "ceil(H / stride) x ceil(W / stride) pixels, not H x W.",
    "floor": "the output size rounds up with 'same' padding: ceil(H / stride) (65 -> 33 at stride 2), not H // stride.",
    "rate": "the rate spreads the k x k taps apart but adds none: the weights and the multiply-adds do not depend "
            "on it (k*k per output, not (rate*(k-1)+1)**2).",
    "dw_out_channels": "the depthwise conv works on the input's channels (C_in filters of k x k); the pointwise "
                       "conv after it makes the C_out channels.",
    "bias": "no biases: these convs are followed by batch norm, whose shift replaces the bias (bias=False).",
}


def _as_counts(got, call):
    if not isinstance(got, dict):
        raise ExerciseWrong(f"Exercise 10.1: {call} returned a {type(got).__name__}; expected a dict with the keys "
                            f"{', '.join(map(repr, _COST_KEYS))}")
    missing = [k for k in _COST_KEYS if k not in got]
    if missing:
        raise ExerciseWrong(f"Exercise 10.1: {call} returned a dict without {', '.join(map(repr, missing))}; expected "
                            f"the keys {', '.join(map(repr, _COST_KEYS))}")
    for k in _COST_KEYS:
        v = got[k]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not float(v).is_integer():
            raise ExerciseWrong(f"Exercise 10.1: {call}[{k!r}] is {v!r}; expected a whole number (a count)")
    return {k: int(got[k]) for k in _COST_KEYS}


@exercise_check("10.1")
@one_torch_thread()
def exercise_10_1(conv_costs):
    """conv_costs(c_in, c_out, k, height, width, stride, rate) -> {full_mult_adds, full_params, separable_mult_adds,
    separable_params}, against the counts of torch's nn.Conv2d modules."""
    for case in _COST_CASES:
        c_in, c_out, k, height, width, stride, rate = case
        call = (f"conv_costs(c_in={c_in}, c_out={c_out}, k={k}, height={height}, width={width}, stride={stride}, "
                f"rate={rate})")
        got = _as_counts(conv_costs(*case), call)
        expected = _torch_costs(*case)
        if got == expected:
            continue
        wrong = [k for k in _COST_KEYS if got[k] != expected[k]]
        hint = next((_COST_HINTS[m] for m, v in _cost_variants(*case).items() if v == got and v != expected), None)
        ho, wo = -(-height // stride), -(-width // stride)
        raise ExerciseWrong(
            f"Exercise 10.1: {call}: " + "; ".join(f"{k} {got[k]:,}, expected {expected[k]:,}" for k in wrong)
            + f"\n  (torch's modules on a {height}x{width} input: output {ho}x{wo}; full conv "
              f"{c_in}->{c_out} {k}x{k}; depthwise {k}x{k} groups={c_in}, then pointwise 1x1 {c_in}->{c_out}; "
              "no biases)" + (f"\n  Hint: {hint}" if hint else ""))
    passed("10.1", f"{len(_COST_CASES)} convs (Xception's and MobileNet's, strides 1 and 2, rates 1 and 2, 1x1 to "
                   "7x7) give the multiply-adds and parameters of torch's modules", 0.0, "exact")


# ---------------------------------------------------------------------------------------------
# 10.2 MobileNetV3's inverted residual block

_BLOCK_CASES = [  # (block index in MobileNetV3-Large, input shape (N, H, W), dtype)
    (1, (2, 9, 11), np.float64),     # no expand (16 -> 16), ReLU, residual
    (4, (2, 9, 10), np.float64),     # expand 24 -> 72, 5x5 stride 2, SE (squeeze 24), ReLU
    (5, (2, 5, 5), np.float64),      # SE, ReLU, residual
    (8, (1, 6, 7), np.float64),      # hardswish, residual, no SE
    (11, (2, 4, 5), np.float64),     # hardswish, SE, 80 -> 112: no residual
    (14, (1, 7, 6), np.float64),     # the dilated stage: 5x5 at rate 2, SE, hardswish, residual
    (12, (2, 5, 4), np.float32),     # float32
]
_BLOCK_SEED = 102
BN_EPS = 1e-3  # torchvision's MobileNetV3 (torch's default is 1e-5)


def _block_modules():
    """{block index: (the twin's block (eval, float64, seeded, BN and biases away from the identity), its plan)}
    for the blocks of the cases, from one MobileNetV3-Large twin."""
    import torch

    from minideeplab.reference.mobilenet import MobileNetV3Backbone
    from minideeplab.specs.mobilenet import MobileNetV3

    spec = MobileNetV3()
    with torch.random.fork_rng():
        torch.manual_seed(_BLOCK_SEED)
        backbone = MobileNetV3Backbone(spec).double().eval()
    rng = np.random.default_rng(_BLOCK_SEED)
    blocks = {}
    with torch.no_grad():
        for index, _, _ in _BLOCK_CASES:
            block = backbone.get_submodule(str(index))
            for m in block.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    n = m.num_features
                    m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n)))
                    m.bias.copy_(torch.from_numpy(0.3 * rng.standard_normal(n)))
                    m.running_mean.copy_(torch.from_numpy(0.3 * rng.standard_normal(n)))
                    m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n)))
                elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:  # the SE's: some scales saturate
                    m.bias.copy_(torch.from_numpy(rng.uniform(-4, 4, m.bias.shape)))
            blocks[index] = (block, spec.blocks[index - 1])
    return blocks


def _block_params(block, plan):
    """The block's weights and BN statistics under the exercise's names: ``expand.weight``, ``expand.bn.weight``,
    ``expand.bn.bias``, ``expand.bn.running_mean``, ``expand.bn.running_var`` (the same for ``depthwise`` and
    ``project``), ``se.fc1.weight``, ``se.fc1.bias``, ``se.fc2.weight``, ``se.fc2.bias``."""
    params = {}
    for j, part in enumerate(plan.parts):
        for key, v in block.block[j].state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            name = key if part == "se" else key.replace("0.", "", 1) if key.startswith("0.") else "bn." + key[2:]
            params[f"{part}.{name}"] = v.numpy().copy()
    return params


def _block_variant(block, plan, x, mistake=None):
    """The block's eval forward written out in torch, one optional known mistake."""
    import torch
    import torch.nn.functional as F

    def bn(h, m):
        eps = 1e-5 if mistake == "eps" else BN_EPS
        s = lambda v: v[None, :, None, None]  # noqa: E731
        return (h - s(m.running_mean)) / torch.sqrt(s(m.running_var) + eps) * s(m.weight) + s(m.bias)

    def act(h, name):
        if name == "hardswish" or mistake == "hardswish_everywhere":
            return h * F.relu6(h + 3) / 6
        return F.relu(h)

    def unit(h, seq, part):
        conv = seq[0]
        stride, dilation = conv.stride[0], conv.dilation[0]
        if part == "depthwise" and mistake == "no_dilation":
            dilation = 1
        pad = dilation * (conv.kernel_size[0] - 1) // 2
        h = bn(F.conv2d(h, conv.weight, None, stride, pad, dilation, conv.groups), seq[1])
        if part == "project":
            return act(h, plan.activation) if mistake == "project_act" else h
        return act(h, plan.activation)

    def se(h, m):
        s = m.fc1(h.mean(dim=(2, 3), keepdim=True))
        s = {"se_hardswish": lambda v: v * F.relu6(v + 3) / 6, "se_no_relu": lambda v: v}.get(mistake, F.relu)(s)
        s = m.fc2(s)
        return h * (torch.sigmoid(s) if mistake == "sigmoid" else F.relu6(s + 3) / 6)

    parts = list(plan.parts)
    if mistake == "se_first" and "se" in parts and "expand" in parts:  # SE on the expanded map, before the depthwise
        parts.remove("se")
        parts.insert(1, "se")
    h = x
    for part in parts:
        m = block.block[plan.parts.index(part)]
        h = se(h, m) if part == "se" else unit(h, m, part)
    return h + x if plan.residual and mistake != "no_residual" else h


_BLOCK_HINTS = {
    "sigmoid": "the squeeze-and-excitation scale uses the sigmoid: MobileNetV3's uses the hard sigmoid, "
               "relu6(s + 3) / 6 (0 below -3, 1 above 3, linear between).",
    "se_hardswish": "the activation between the SE's two 1x1 convs is a ReLU, whatever the block's activation "
                    "(hardswish is the block's, after expand and depthwise).",
    "se_no_relu": "the ReLU between the SE's fc1 and fc2 is missing.",
    "hardswish_everywhere": "this block's activation is ReLU: the first blocks of MobileNetV3 use ReLU, the later "
                            "ones hardswish (the `activation` argument).",
    "project_act": "the projection is linear: project's 1x1 conv and BN, no activation after it (an activation on "
                   "the narrow output would throw information away).",
    "no_residual": "the input is added back when the block keeps its stride and its width (stride 1 and "
                   "C_in == C_out): y = project(...) + x.",
    "se_first": "squeeze-and-excitation re-weights the depthwise conv's output: expand -> depthwise -> SE -> "
                "project.",
    "no_dilation": "the depthwise conv runs at `dilation` (with 'same' padding dilation * (k - 1) // 2): the last "
                   "stage of torchvision's segmentation MobileNetV3 is dilated at rate 2.",
    "eps": "torchvision's MobileNetV3 batch norms have eps = 0.001, not torch's default 1e-5.",
}


def _shape_crash(wrong):
    err = wrong.student_error
    text = str(err)
    return err is not None and isinstance(err, (ValueError, IndexError)) and any(
        w in text for w in ("broadcast", "shape", "mismatch", "channels", "aligned"))


@exercise_check("10.2")
@one_torch_thread()
def exercise_10_2(inverted_residual):
    """inverted_residual(x, params, stride, dilation, activation) in eval mode against MobileNetV3-Large's blocks of
    the twin (reference.mobilenet, torchvision's layout)."""
    import torch

    worst = 0.0
    blocks = _block_modules()
    for index, (N, H, W), dtype in _BLOCK_CASES:
        block, plan = blocks[index]
        block = block.to(torch.float32 if dtype == np.float32 else torch.float64)
        params = _block_params(block, plan)
        x = np.random.default_rng(_BLOCK_SEED + 50 + index).standard_normal((N, plan.in_channels, H, W)).astype(dtype)
        parts = ", ".join(plan.parts)
        call = (f"inverted_residual(x {x.shape} {np.dtype(dtype).name}, params of block {index} ({parts}; "
                f"{plan.in_channels} -> {plan.expanded} -> {plan.out_channels}, {plan.kernel}x{plan.kernel}), "
                f"stride={plan.stride}, dilation={plan.dilation}, activation={plan.activation!r})")
        given = {k: v.copy() for k, v in params.items()}
        xs = x.copy()
        try:
            got = inverted_residual(xs, given, plan.stride, plan.dilation, plan.activation)
        except ExerciseWrong as wrong:
            if not _shape_crash(wrong):
                raise
            raise crash_hint(wrong, "a shape did not fit. The input is added back only when the block keeps its "
                                    "stride and width (stride 1 and C_in == C_out); the SE's fc1 reads the expanded "
                                    "channels, between the depthwise conv and the projection.") from wrong.student_error
        changed = [k for k in params if k not in given or not np.array_equal(given[k], params[k])]
        if changed or not np.array_equal(xs, x):
            what = f"`params` ({changed[0]})" if changed else "its input `x`"
            raise ExerciseWrong(f"Exercise 10.2: {call} changed {what} in place; work on new arrays (y = h + x, "
                                "not x += h).")
        xt = torch.from_numpy(x)
        with torch.no_grad():
            expected = block(xt).numpy()
        scale = max(float(np.abs(expected).max()), 1e-12)
        rtol = 1e-4 if dtype == np.float32 else 1e-10
        try:
            worst = max(worst, compare_arrays("10.2", call, got, expected, rtol=rtol, atol=rtol * scale))
        except ExerciseWrong:  # the known mistakes, computed only now: 9 more forward passes per case
            known = {}
            with torch.no_grad():
                for key, text in _BLOCK_HINTS.items():
                    v = _block_variant(block, plan, xt, key).numpy()
                    if not np.allclose(v, expected, rtol=0, atol=1e-6 * scale):
                        known[text] = v
            compare_arrays("10.2", call, got, expected, rtol=rtol, atol=rtol * scale, known_mistakes=known)
            raise
    passed("10.2", f"{len(_BLOCK_CASES)} blocks of MobileNetV3-Large (with and without expand and SE, ReLU and "
                   "hardswish, stride 2, rate 2, residual or not; float64 and float32) match the twin's in eval mode",
           worst, "1e-10 float64, 1e-4 float32, relative to the largest output")


# ---------------------------------------------------------------------------------------------
# 10.3 aligned Xception's stride -> rate plan

_PLAN_CASES = [(depth, os_) for depth in (65, 41, 71) for os_ in (16, 8, 32)]


@functools.lru_cache(maxsize=None)
def _torch_plan(depth, output_stride):
    """(nominal strides of the blocks, (stride, rate) of every block): the twin built on the meta device with
    the published depth, read off each block's strided depthwise conv."""
    from minideeplab.bench.backbones import meta_modules
    from minideeplab.reference.xception import XceptionBackbone
    from minideeplab.specs.xception import XCEPTION_DEPTHS, Xception

    entry, middle = XCEPTION_DEPTHS[depth]
    nominal = [s for _, s in entry] + [1] * middle + [2, 1]
    with meta_modules():
        twin = XceptionBackbone(Xception(depth, output_stride))
    rows = [(b.stack.conv3.conv_dw.stride[0], b.stack.conv3.conv_dw.dilation[0]) for b in twin.blocks]
    return tuple(nominal), np.array(rows, dtype=np.int64)


def _plan_variant(strides, output_stride, mistake):
    plan, stride, rate, dilated = [], 1 if mistake == "no_stem" else 2, 1, False
    for s in strides:
        past = stride * s >= output_stride if mistake == "early" else stride * s > output_stride
        if s > 1 and past:
            if mistake == "new_rate":
                rate *= s
                plan.append((1, rate))
                continue
            plan.append((1, 1 if mistake == "no_rate" else rate))
            rate = 2 if mistake == "once" else rate * s
            dilated = True
        else:
            if mistake == "every_block" and dilated:
                rate *= 2
            plan.append((s, 1 if mistake == "no_rate" else rate))
            stride *= s
    return np.array(plan, dtype=np.int64)


_RATE_HINTS = {
    "new_rate": "the block that gives up its stride runs at the rate it had before; only the blocks after it "
                "sample rate * stride apart (TF's stack_blocks_dense; torchvision's ResNet does the same: a dilated "
                "stage's first block keeps the previous dilation).",
    "early": "the strides were dropped one block too early: a block keeps its stride while the running stride "
             "times it stays within the output stride (running * s <= output_stride), so the net reaches it exactly.",
    "no_stem": "the stem already halved the input: the first block starts at stride 2, not 1.",
    "no_rate": "a block that gives up its stride must keep seeing as far: multiply the rate of every later block "
               "by the stride given up.",
    "once": "the rates multiply: every stride given up multiplies the rate again (at output stride 8 the middle "
            "flow runs at rate 2 and the exit flow's blocks at 2 and 4).",
    "every_block": "the rate is multiplied by the stride a block would have had: the middle flow's blocks had "
                   "stride 1, so they keep the rate (no doubling at every block).",
}


def _as_plan(got, n, call):
    try:
        arr = np.asarray(got)
    except Exception:  # pragma: no cover - exotic objects
        arr = None
    if arr is None or arr.dtype == object or arr.shape != (n, 2) or arr.dtype.kind not in "iuf" \
            or not np.all(np.equal(np.mod(arr, 1), 0)):
        what = f"shape {arr.shape}" if isinstance(arr, np.ndarray) and arr.dtype != object else type(got).__name__
        raise ExerciseWrong(f"Exercise 10.3: {call} returned {what}; expected {n} pairs (stride, rate) of ints, "
                            "one per block")
    return arr.astype(np.int64)


@exercise_check("10.3")
@one_torch_thread()
def exercise_10_3(xception_rate_plan):
    """xception_rate_plan(strides, output_stride) -> [(stride, rate)] per block, against the strides and dilations
    of the twin's depthwise convs (aligned Xception-41, -65, -71 at output strides 8, 16 and 32)."""
    for depth, output_stride in _PLAN_CASES:
        strides, expected = _torch_plan(depth, output_stride)
        call = f"xception_rate_plan(strides of Xception-{depth} ({len(strides)} blocks), output_stride={output_stride})"
        given = list(strides)
        got = _as_plan(xception_rate_plan(given, output_stride), len(strides), call)
        if given != list(strides):
            raise ExerciseWrong(f"Exercise 10.3: {call} changed its argument `strides` in place; leave it as it was.")
        if np.array_equal(got, expected):
            continue
        i = int(np.argmax((got != expected).any(axis=1)))
        hint = next((t for m, t in _RATE_HINTS.items() if np.array_equal(_plan_variant(strides, output_stride, m), got)
                     and not np.array_equal(_plan_variant(strides, output_stride, m), expected)), None)
        flow = ("entry flow" if i < (5 if depth == 71 else 3) else "exit flow" if i >= len(strides) - 2
                else "middle flow")
        raise ExerciseWrong(
            f"Exercise 10.3: {call}: block {i} ({flow}, nominal stride {strides[i]}) got (stride {got[i, 0]}, rate "
            f"{got[i, 1]}), expected (stride {expected[i, 0]}, rate {expected[i, 1]})\n  the twin's plan, blocks with "
            f"a stride or a rate: " + ", ".join(f"{j}: ({s}, {r})" for j, (s, r) in enumerate(expected)
                                               if s > 1 or r > 1 or strides[j] > 1)
            + (f"\n  Hint: {hint}" if hint else ""))
    passed("10.3", f"{len(_PLAN_CASES)} plans (Xception-41, -65, -71 at output strides 16, 8, 32) equal the strides "
                   "and rates of the twin's depthwise convs", 0.0, "exact")
