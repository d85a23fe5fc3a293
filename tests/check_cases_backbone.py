"""Cases for tests/test_checks.py, notebook 03 (dilated backbones): exercises 3.1-3.3."""

import numpy as np

from minideeplab.scratch.backbone import parameter_shapes


def plan_solution(blocks, output_stride, convention="torchvision", multi_grid=None, mistake=None):
    """The notebook's dilation_plan, with one optional, deliberate mistake."""
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
    if mistake == "swapped":
        convention = {"torchvision": "smp", "smp": "torchvision"}[convention]
    plan, dilation = [], 1
    for i, n in enumerate(blocks):
        stride = 2 if i > 0 or mistake == "layer1_stride" else 1
        previous = dilation
        if i >= 4 - n_dilated:
            dilation = 2 if mistake == "not_cumulative" else dilation * stride
            stride = stride if mistake == "keep_stride" else 1
        rates = [dilation] * n
        if convention == "torchvision":
            rates[0] = previous
        if i == 3 and multi_grid is not None:
            rates = list(multi_grid) if mistake == "mg_unscaled" else [dilation * m for m in multi_grid]
            if mistake == "mg_block0" and convention == "torchvision":
                rates[0] = previous
        plan.append([(stride if j == 0 else 1, rates[j]) for j in range(n)])
    return plan


def plan_student(blocks, output_stride, convention="torchvision", multi_grid=None):
    """Written differently: stage rates first (1, 1, 1, 2) or (1, 1, 2, 4), then the blocks, as tuples."""
    dilated = {32: (), 16: (3,), 8: (2, 3)}[output_stride]
    stage_rate = [1]
    for i in range(1, 4):
        stage_rate.append(stage_rate[-1] * (2 if i in dilated else 1))
    out = []
    for i, n in enumerate(blocks):
        first_stride = 1 if i == 0 or i in dilated else 2
        first_rate = stage_rate[i - 1] if (convention == "torchvision" and i > 0) else stage_rate[i]
        rates = [first_rate] + [stage_rate[i]] * (n - 1)
        if i == 3 and multi_grid:
            rates = [stage_rate[3] * m for m in multi_grid]
        out.append(tuple((first_stride if j == 0 else 1, r) for j, r in enumerate(rates)))
    return tuple(out)


def macs_solution(spec, size, mistake=None):
    """The notebook's conv_macs, with one optional, deliberate mistake."""
    weights = parameter_shapes(spec)[0]
    macs, h = {}, size
    for name, (stride, dilation) in spec.conv_table().items():
        cout, cin, kh, kw = weights[name + ".weight"]
        if mistake == "dilated_kernel":
            kh = kw = dilation * (kh - 1) + 1
        if name == "conv1" or name.endswith(".conv1"):
            block_in = h
        h_in = block_in if name.endswith("downsample.0") and mistake != "downsample_from_output" else h
        h_out = h_in // stride if mistake == "floor" else -(-h_in // stride)
        pixels = h_in if mistake == "input_pixels" else h_out
        macs[name] = pixels * pixels * cout * cin * kh * kw * (2 if mistake == "flops" else 1)
        if not name.endswith("downsample.0"):
            h = h_out
        if name == "conv1" and mistake != "no_maxpool":
            h = -(-h // 2)
    if mistake == "no_downsample":
        macs = {k: v for k, v in macs.items() if "downsample" not in k}
    return macs


def macs_student(spec, size):
    """Written differently: walk the stages with the BlockPlans, sizes with math.ceil, numpy ints."""
    import math

    w = parameter_shapes(spec)[0]

    def cost(name, hw):
        co, ci, kh, kw = w[f"{name}.weight"]
        return np.int64(hw * hw * co * ci * kh * kw)

    h = math.ceil(size / 2)
    out = {"conv1": cost("conv1", h)}
    h = math.ceil(h / 2)
    for i, stage in enumerate(spec.stages, start=1):
        for j, b in enumerate(stage):
            p, ho = f"layer{i}.{j}", math.ceil(h / b.stride)
            if spec.block == "bottleneck":
                out.update({f"{p}.conv1": cost(f"{p}.conv1", h), f"{p}.conv2": cost(f"{p}.conv2", ho),
                            f"{p}.conv3": cost(f"{p}.conv3", ho)})
            else:
                out.update({f"{p}.conv1": cost(f"{p}.conv1", ho), f"{p}.conv2": cost(f"{p}.conv2", ho)})
            if b.downsample:
                out[f"{p}.downsample.0"] = cost(f"{p}.downsample.0", ho)
            h = ho
    return out


def footprint_solution(plan, mistake=None):
    """The notebook's stage_footprint, with one optional, deliberate mistake."""
    offsets, jump = {0}, 1
    for stride, dilation in plan:
        if mistake == "jump_first":
            jump *= stride
        step = dilation * (1 if mistake == "no_jump" else jump)
        taps = (-step, 0, step)
        offsets = offsets | set(taps) if mistake == "union" else {o + t for o in offsets for t in taps}
        if mistake != "jump_first":
            jump *= stride * dilation if mistake == "jump_rate" else stride
    lo, hi = min(offsets), max(offsets)
    mask = np.zeros(hi - lo + 1, dtype=bool)
    mask[[o - lo for o in offsets]] = True
    return np.ones_like(mask) if mistake == "dense" else mask


def footprint_student(plan):
    """Written differently: path counts by convolving tap combs (int64), as the gradient would count them."""
    counts, jump = np.ones(1, dtype=np.int64), 1
    for stride, dilation in plan:
        comb = np.zeros(2 * dilation * jump + 1, dtype=np.int64)
        comb[::dilation * jump] = 1
        counts = np.convolve(counts, comb)
        jump *= stride
    return counts


CORRECT = {"exercise_3_1": plan_solution, "exercise_3_2": macs_solution, "exercise_3_3": footprint_solution}

STUDENT_STYLE = {"exercise_3_1": plan_student, "exercise_3_2": macs_student, "exercise_3_3": footprint_student}


def _with(fn, mistake):
    return lambda *a: fn(*a, mistake=mistake)


WRONG = [
    ("exercise_3_1", _with(plan_solution, "swapped"), "the two conventions are swapped"),
    ("exercise_3_1", _with(plan_solution, "keep_stride"), "the dilation replaces the stride"),
    ("exercise_3_1", _with(plan_solution, "not_cumulative"), "the rates multiply"),
    ("exercise_3_1", _with(plan_solution, "layer1_stride"), "layer1 runs at stride 1"),
    ("exercise_3_1", _with(plan_solution, "mg_unscaled"), "multi-grid rates are unit rates"),
    ("exercise_3_1", _with(plan_solution, "mg_block0"), "block0 included"),
    ("exercise_3_1", _with(plan_solution, "keep_stride"), "first wrong block: layer4.0"),
    ("exercise_3_1", lambda *a: plan_solution(*a)[:3], "expected 4 lists (layer1..layer4)"),
    ("exercise_3_1", lambda *a: [np.array(stage) for stage in plan_solution(*a)],
     "layer1 is ndarray, not a list; return a list with one (stride, dilation) pair per block"),
    ("exercise_3_2", _with(macs_solution, "dilated_kernel"), "dilation spreads them apart but costs nothing"),
    ("exercise_3_2", _with(macs_solution, "floor"), "ceil(H / 2)"),
    ("exercise_3_2", _with(macs_solution, "no_maxpool"), "max pool of stride 2"),
    ("exercise_3_2", _with(macs_solution, "downsample_from_output"), "reads the block's INPUT"),
    ("exercise_3_2", _with(macs_solution, "input_pixels"), "per OUTPUT pixel"),
    ("exercise_3_2", _with(macs_solution, "flops"), "not FLOPs"),
    ("exercise_3_2", _with(macs_solution, "no_downsample"), "missing ['layer1.0.downsample.0'"),
    ("exercise_3_2", _with(macs_solution, "floor"), "first wrong conv: conv1"),
    ("exercise_3_3", _with(footprint_solution, "dense"), "a solid span"),
    ("exercise_3_3", _with(footprint_solution, "union"), "the offsets add"),
    ("exercise_3_3", _with(footprint_solution, "no_jump"), "d * jump input pixels away"),
    ("exercise_3_3", _with(footprint_solution, "jump_first"), "after the block's taps"),
    ("exercise_3_3", _with(footprint_solution, "jump_rate"), "the jump is the product of the strides only"),
]
