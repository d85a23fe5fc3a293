"""Cases for tests/test_checks.py, notebook 10 (backbones for DeepLab): exercises 10.1-10.3, each with student-style
answers that make one known mistake. CORRECT uses the package where it has the answer (scratch.mobilenet's block,
specs.xception.stride_rate_plan), so these cases also prove that the checks' torch references agree with it."""

import numpy as np

from minideeplab.scratch import atrous_conv2d
from minideeplab.scratch.mobilenet import block_forward
from minideeplab.specs.mobilenet import InvertedResidualPlan
from minideeplab.specs.xception import stride_rate_plan


# ------------------------------------------------------------------ 10.1 the cost of a separable conv

def costs_closed_form(c_in, c_out, k, height, width, stride=1, rate=1):
    pixels = -(-height // stride) * -(-width // stride)
    return {"full_mult_adds": k * k * c_in * c_out * pixels, "full_params": k * k * c_in * c_out,
            "separable_mult_adds": (k * k + c_out) * c_in * pixels, "separable_params": (k * k + c_out) * c_in}


def costs_student(c_in, c_out, k, height, width, stride=1, rate=1, mistake=None):
    """Layer by layer, as a student writes it, one optional mistake."""
    def out_size(n):
        return n // stride if mistake == "floor" else (n + stride - 1) // stride

    h, w = (height, width) if mistake == "input_size" else (out_size(height), out_size(width))
    kk = rate * (k - 1) + 1 if mistake == "rate" else k
    full_w = kk * kk * c_in * c_out
    dw_w = kk * kk * {"dw_full": c_in * c_out, "dw_out_channels": c_out}.get(mistake, c_in)
    pw_w = 0 if mistake == "no_pointwise" else c_in * c_out
    pw_pixels = height * width if mistake == "pointwise_input_size" else h * w
    biases = (c_out, c_in + c_out) if mistake == "bias" else (0, 0)
    return {"full_mult_adds": full_w * h * w, "full_params": full_w + biases[0],
            "separable_mult_adds": dw_w * h * w + pw_w * pw_pixels, "separable_params": dw_w + pw_w + biases[1]}


def costs_floats(*args):
    """Counts as floats (a student who divides): fine while they are whole numbers."""
    return {k: float(v) for k, v in costs_closed_form(*args).items()}


# ------------------------------------------------------------------ 10.2 the inverted residual block

PART_NAMES = {"weight": "0.weight", "bn.weight": "1.weight", "bn.bias": "1.bias", "bn.running_mean": "1.running_mean",
              "bn.running_var": "1.running_var"}


def block_package(x, params, stride, dilation, activation):
    """scratch.mobilenet.block_forward (eval), its plan read off the exercise's params."""
    expand = "expand.weight" in params
    dw = params["depthwise.weight"]
    E, k = dw.shape[0], dw.shape[-1]
    cout = params["project.weight"].shape[0]
    squeeze = params["se.fc1.weight"].shape[0] if "se.fc1.weight" in params else 0
    plan = InvertedResidualPlan(x.shape[1], k, E, cout, squeeze, activation, stride, dilation,
                                stride == 1 and x.shape[1] == cout)
    assert ("expand" in plan.parts) == expand
    ours, buffers = {}, {}
    for j, part in enumerate(plan.parts):
        for name in params:
            if name.startswith(part + "."):
                rest = name[len(part) + 1:]
                key = f"0.block.{j}.{rest if part == 'se' else PART_NAMES[rest]}"
                (buffers if "running" in key else ours)[key] = params[name]
        if part != "se":
            buffers[f"0.block.{j}.1.num_batches_tracked"] = np.zeros((), np.int64)
    return block_forward(x, ours, buffers, "0", plan, training=False)[0]


def block_student(x, params, stride=1, dilation=1, activation="relu", mistake=None):
    """Plain NumPy and the course's conv, as the notebook suggests, one optional mistake."""
    def hardsigmoid(v):
        return np.clip(v + 3, 0, 6) / 6

    def act(v, name):
        if name == "hardswish" or mistake == "hardswish_everywhere":
            return v * hardsigmoid(v)
        return np.maximum(v, 0)

    def conv_bn(h, part, stride=1, dilation=1, groups=1):
        h = atrous_conv2d(h, params[f"{part}.weight"], None, rate=dilation, stride=stride, groups=groups)
        eps = 1e-5 if mistake == "eps" else 1e-3
        g, b = params[f"{part}.bn.weight"], params[f"{part}.bn.bias"]
        m, v = params[f"{part}.bn.running_mean"], params[f"{part}.bn.running_var"]
        scale = g / np.sqrt(v + eps)
        return h * scale[:, None, None] + (b - m * scale)[:, None, None]

    def se(h):
        w1, b1 = params["se.fc1.weight"][:, :, 0, 0], params["se.fc1.bias"]
        w2, b2 = params["se.fc2.weight"][:, :, 0, 0], params["se.fc2.bias"]
        s = h.mean(axis=(2, 3)) @ w1.T + b1
        s = {"se_hardswish": lambda v: v * hardsigmoid(v), "se_no_relu": lambda v: v}.get(
            mistake, lambda v: np.maximum(v, 0))(s)
        s = s @ w2.T + b2
        s = 1 / (1 + np.exp(-s)) if mistake == "sigmoid" else hardsigmoid(s)
        return h * s[:, :, None, None]

    has_se = "se.fc1.weight" in params
    h = x
    if "expand.weight" in params:
        h = act(conv_bn(h, "expand"), activation)
        if mistake == "se_first" and has_se:
            h = se(h)
    groups = params["depthwise.weight"].shape[0]
    h = act(conv_bn(h, "depthwise", stride, 1 if mistake == "no_dilation" else dilation, groups), activation)
    if has_se and not (mistake == "se_first" and "expand.weight" in params):
        h = se(h)
    if mistake == "se_after_project" and has_se:
        h = se(conv_bn(h, "project"))
    else:
        h = conv_bn(h, "project")
    if mistake == "project_act":
        h = act(h, activation)
    keeps = x.shape == h.shape if mistake == "residual_by_shape" else stride == 1 and x.shape[1] == h.shape[1]
    if mistake == "residual_stride_only":
        keeps = stride == 1
    if keeps and mistake == "in_place":
        x += h
        return x
    return h + x if keeps and mistake != "no_residual" else h


def block_float64(x, params, stride, dilation, activation):
    return block_student(x.astype(np.float64), {k: v.astype(np.float64) for k, v in params.items()}, stride, dilation,
                         activation)


# ------------------------------------------------------------------ 10.3 Xception's stride -> rate plan

def plan_student(strides, output_stride, mistake=None):
    """The loop of TF's stack_blocks_dense as a student writes it, one optional mistake."""
    current = 1 if mistake == "no_stem" else 2
    rate, plan = 1, []
    for s in strides:
        if s > 1 and (current * s >= output_stride if mistake == "early" else current == output_stride):
            if mistake == "new_rate":
                rate *= s
                plan.append((1, rate))
            else:
                plan.append((1, 1 if mistake == "no_rate" else rate))
                rate = 2 if mistake == "once" else rate * s
        else:
            if mistake == "every_block" and rate > 1:
                rate *= 2
            plan.append((s, 1 if mistake == "no_rate" else rate))
            current *= s
    return plan


def plan_array(strides, output_stride):
    """With NumPy: the running stride before each block, then which blocks keep their stride."""
    s = np.asarray(strides)
    kept = np.ones_like(s)
    current, rates, rate = 2, [], 1
    for i, si in enumerate(s):
        if current * si <= output_stride:
            kept[i] = si
            current *= si
            rates.append(rate)
        else:
            rates.append(rate)
            rate *= si
    return np.stack([kept, np.array(rates)], axis=1)


CORRECT = {"exercise_10_1": costs_closed_form, "exercise_10_2": block_package,
           "exercise_10_3": lambda strides, output_stride: stride_rate_plan(strides, output_stride)}
STUDENT_STYLE = {"exercise_10_1": costs_student, "exercise_10_2": block_student, "exercise_10_3": plan_array}

WRONG = [
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="no_pointwise"), "pointwise part is missing"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="dw_full"), "counted as a full one"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="input_size"), "once per OUTPUT pixel"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="pointwise_input_size"), "already strided"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="floor"), "rounds up"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="rate"), "do not depend on it"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="dw_out_channels"), "works on the input's channels"),
    ("exercise_10_1", lambda *a: costs_student(*a, mistake="bias"), "no biases"),
    ("exercise_10_1", lambda *a: tuple(costs_closed_form(*a).values()), "expected a dict with the keys"),
    ("exercise_10_1", lambda *a: {k: v / 1e9 for k, v in costs_closed_form(*a).items()}, "expected a whole number"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="sigmoid"), "uses the hard sigmoid"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="se_hardswish"), "between the SE's two 1x1 convs is a ReLU"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="se_no_relu"), "ReLU between the SE's fc1 and fc2"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="hardswish_everywhere"), "this block's activation is ReLU"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="project_act"), "the projection is linear"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="no_residual"), "the input is added back"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="se_first"), "expand -> depthwise -> SE -> project"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="no_dilation"), "runs at `dilation`"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="eps"), "eps = 0.001"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="se_after_project"), "the SE's fc1 reads the expanded"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="residual_stride_only"), "added back only when the block"),
    ("exercise_10_2", lambda *a: block_student(*a, mistake="in_place"), "changed its input `x` in place"),
    ("exercise_10_2", block_float64, "dtype float64, expected float32"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="new_rate"), "runs at the rate it had before"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="early"), "one block too early"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="no_stem"), "the stem already halved the input"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="no_rate"), "multiply the rate of every later block"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="once"), "the rates multiply"),
    ("exercise_10_3", lambda *a: plan_student(*a, mistake="every_block"), "no doubling at every block"),
    ("exercise_10_3", lambda s, o: plan_student(s, o)[:-1], "expected 21 pairs (stride, rate)"),
]
