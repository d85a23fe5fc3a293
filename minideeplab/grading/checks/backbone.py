"""Checks for notebook 03, dilated backbones and output stride: exercises 3.1-3.3."""

from __future__ import annotations

import numpy as np

from minideeplab.grading.checks.common import as_number, first_bad, offsets_mask
from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_3_1", "exercise_3_2", "exercise_3_3"]

DEPTH_OF_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (1, 1, 2, 3): "mini"}


# ---------------------------------------------------------------------------------------- 3.1

_PLAN_CASES = [  # (blocks, output_stride, convention, multi_grid)
    ((3, 4, 6, 3), 32, "torchvision", None),
    ((3, 4, 6, 3), 16, "torchvision", None),
    ((3, 4, 6, 3), 8, "torchvision", None),
    ((3, 4, 23, 3), 8, "torchvision", None),
    ((3, 4, 6, 3), 16, "smp", None),
    ((3, 4, 6, 3), 8, "smp", None),
    ((1, 1, 2, 3), 8, "smp", None),
    ((3, 4, 6, 3), 16, "torchvision", (1, 2, 4)),
    ((3, 4, 6, 3), 8, "smp", (1, 2, 4)),
    ((3, 4, 23, 3), 32, "torchvision", (1, 2, 4)),
]


def _modules_plan(blocks, output_stride, convention, multi_grid):
    """(stride, dilation) of every block's 3x3 conv2, read off real modules built on the meta device:
    torchvision's ResNet (``replace_stride_with_dilation``) for its own convention, else the reference twin.
    -> (int array (blocks, 2), where it was read)."""
    import torch

    with torch.device("meta"):
        if convention == "torchvision" and multi_grid is None:
            from torchvision.models.resnet import Bottleneck, ResNet as TVResNet

            dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
            model, source = TVResNet(Bottleneck, list(blocks), replace_stride_with_dilation=dilate), "torchvision's"
        else:
            from minideeplab.reference.backbone import ResNetBackbone
            from minideeplab.specs.backbone import ResNet

            spec = ResNet(DEPTH_OF_BLOCKS[blocks], output_stride, convention, multi_grid)
            model, source = ResNetBackbone(spec), "the reference twin's"
    rows = [(blk.conv2.stride[0], blk.conv2.dilation[0]) for i in range(1, 5) for blk in getattr(model, f"layer{i}")]
    return np.array(rows, dtype=np.int64), source


def _plan_variant(blocks, output_stride, convention, multi_grid, mistake):
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
    if mistake == "swapped":
        convention = "smp" if convention == "torchvision" else "torchvision"
    rows, dilation = [], 1
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
        rows += [(stride if j == 0 else 1, rates[j]) for j in range(n)]
    return np.array(rows, dtype=np.int64)


_PLAN_HINTS = {
    "swapped": "the two conventions are swapped: torchvision's block0 of a dilated stage keeps the PREVIOUS "
               "stage's dilation (later blocks take the new one); smp's whole stage, block0 included, takes the new one.",
    "keep_stride": "a dilated stage runs at stride 1: the dilation replaces the stride, it does not come on top "
                   "of it (with both, the output stride is back to 32).",
    "not_cumulative": "the rates multiply: at output stride 8 layer3 gives up a stride of 2 (rate 2) and layer4 "
                      "gives up another one, so its rate is 2 * 2 = 4.",
    "layer1_stride": "layer1 runs at stride 1: the stem (conv1 and the max pool) already brought the map to "
                     "stride 4, and only layer2, layer3 and layer4 open with a stride-2 block.",
    "mg_unscaled": "multi-grid rates are unit rates: multiply them by the stage's rate "
                   "(output stride 16: (1, 2, 4) x 2 = (2, 4, 8)).",
    "mg_block0": "multi-grid sets every block of layer4, block0 included: block j runs at multi_grid[j] x the "
                 "stage's rate, whatever the convention.",
}


def _as_plan(got, blocks, call):
    head = f"Exercise 3.1: {call}"
    if not isinstance(got, (list, tuple)) or len(got) != 4:
        n = len(got) if isinstance(got, (list, tuple)) else None
        raise ExerciseWrong(f"{head} returned {type(got).__name__}{'' if n is None else f' of length {n}'}; "
                            "expected 4 lists (layer1..layer4), each with one (stride, dilation) per block")
    rows = []
    for i, (stage, n) in enumerate(zip(got, blocks), start=1):
        if not isinstance(stage, (list, tuple)):
            raise ExerciseWrong(f"{head}: layer{i} is {type(stage).__name__}, not a list; return a list with one "
                                f"(stride, dilation) pair per block ({n} for layer{i})")
        if len(stage) != n:
            raise ExerciseWrong(f"{head}: layer{i} has {len(stage)} entries, expected {n} (one per block)")
        for j, pair in enumerate(stage):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ExerciseWrong(f"{head}: layer{i} block {j} is {pair!r}, expected a pair (stride, dilation)")
            rows.append([as_number(v, "3.1", f"{call}, layer{i} block {j}") for v in pair])
    return np.array(rows, dtype=float)


@exercise_check("3.1")
def exercise_3_1(dilation_plan):
    """dilation_plan(blocks, output_stride, convention, multi_grid) against the (stride, dilation) of the
    3x3 conv of every block of torchvision's ResNet and of the reference twin."""
    for blocks, os_, convention, mg in _PLAN_CASES:
        call = f"dilation_plan({blocks}, output_stride={os_}, convention={convention!r}, multi_grid={mg})"
        got = _as_plan(dilation_plan(blocks, os_, convention, mg), blocks, call)
        expected, source = _modules_plan(blocks, os_, convention, mg)
        known = {text: _plan_variant(blocks, os_, convention, mg, key) for key, text in _PLAN_HINTS.items()}
        names = [f"layer{i}.{j}" for i, n in enumerate(blocks, start=1) for j in range(n)]
        what = f"{call} as rows (stride, dilation), one per block from layer1.0 to layer4.{blocks[3] - 1}"
        try:
            compare_arrays("3.1", what, got, expected.astype(float), rtol=0, atol=0, known_mistakes=known,
                           check_dtype=False)
        except ExerciseWrong as e:
            k = int(np.argmax(np.any(got != expected, axis=1)))
            raise ExerciseWrong(f"{e}\n  first wrong block: {names[k]} got (stride, dilation) = "
                                f"{tuple(int(v) for v in got[k])}, {source} conv2 has {tuple(int(v) for v in expected[k])}"
                                ) from None
    passed("3.1", f"{len(_PLAN_CASES)} plans (ResNet-50/101 and mini; output stride 32/16/8; both conventions; "
                  "multi-grid) equal the stride and dilation of the 3x3 convs of torchvision's ResNet and of the "
                  "reference twin", 0.0, "exact")


# ---------------------------------------------------------------------------------------- 3.2

def _macs_cases():
    from minideeplab.specs.backbone import ResNet

    return [(ResNet(50, 32), 513), (ResNet(50, 16), 513), (ResNet(50, 8), 513),
            (ResNet(101, 16, "smp", (1, 2, 4)), 321), (ResNet("mini", 8), 65), (ResNet(18, 8, "smp"), 100)]


def _macs_variant(spec, size, mistake):
    """conv MACs by hand, optionally with a known mistake (dict in the conv_table's order)."""
    from minideeplab.scratch.backbone import parameter_shapes

    def down(h, s):
        return h // s if mistake == "floor" else -(-h // s)

    shapes = parameter_shapes(spec)[0]
    macs, h = {}, size
    for name, (stride, dilation) in spec.conv_table().items():
        cout, cin, k, _ = shapes[f"{name}.weight"]
        k = dilation * (k - 1) + 1 if mistake == "dilated_kernel" else k
        if name.endswith(".conv1") or name == "conv1":
            block_in = h
        h_in = h if mistake == "downsample_from_output" or not name.endswith("downsample.0") else block_in
        out = down(h_in, stride)
        pixels = h_in if mistake == "input_pixels" else out
        macs[name] = pixels * pixels * cout * cin * k * k * (2 if mistake == "flops" else 1)
        if not name.endswith("downsample.0"):
            h = out
        if name == "conv1" and mistake != "no_maxpool":
            h = down(h, 2)
    return macs


_MACS_HINTS = {
    "dilated_kernel": "a dilated 3x3 still has 9 taps: dilation spreads them apart but costs nothing extra, "
                      "so use kh * kw, not the effective kernel size squared.",
    "floor": "'same' padding with stride 2 gives ceil(H / 2) output pixels (513 -> 257), not floor (256).",
    "no_maxpool": "the stem ends with a 3x3 max pool of stride 2: layer1 runs at a quarter of the input size.",
    "downsample_from_output": "the shortcut's 1x1 conv (downsample.0) reads the block's INPUT, not conv3's "
                              "output: its output has the block's output size, so it is not strided twice.",
    "input_pixels": "a conv costs per OUTPUT pixel: a stride-2 conv computes a quarter of its input's pixels.",
    "flops": "count multiply-accumulates (one multiply plus one add = 1 MAC), not FLOPs (2 per MAC).",
}


@exercise_check("3.2")
def exercise_3_2(conv_macs):
    """conv_macs(spec, size) -> {conv name: MACs} against forward hooks on the reference twin."""
    from minideeplab.bench.cost import conv_macs as measured

    cases = _macs_cases()
    for spec, size in cases:
        call = f"conv_macs({spec!r}, size={size})"
        got = conv_macs(spec, size)
        expected = measured(spec, size)
        if not isinstance(got, dict):
            raise ExerciseWrong(f"Exercise 3.2: {call} returned {type(got).__name__}, expected a dict "
                                "{conv name: MACs}")
        missing, extra = [n for n in expected if n not in got], [n for n in got if n not in expected]
        if missing or extra:
            raise ExerciseWrong(f"Exercise 3.2: {call} has the wrong conv names: missing {missing[:4]}"
                                f"{' ...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                                f"{' ...' if len(extra) > 4 else ''} (expected the keys of spec.conv_table())")
        names = list(expected)
        g = np.array([as_number(got[n], "3.2", f"{call}[{n!r}]") for n in names], dtype=float)
        e = np.array([expected[n] for n in names], dtype=float)
        known = {}
        for key, text in _MACS_HINTS.items():
            variant = _macs_variant(spec, size, key)
            known[text] = np.array([variant[n] for n in names], dtype=float)
        try:
            compare_arrays("3.2", f"{call}, one entry per conv in forward order", g, e, rtol=0, atol=0.5,
                           known_mistakes=known, check_dtype=False)
        except ExerciseWrong as err:
            i, w = first_bad(g, e), int(np.argmax(np.abs(g - e)))
            raise ExerciseWrong(f"{err}\n  first wrong conv: {names[i]} got {g[i]:.0f}, forward hooks on the "
                                f"PyTorch twin count {e[i]:.0f}; the worst (index {w}) is {names[w]}") from None
    passed("3.2", f"MACs of every conv of {len(cases)} backbones (ResNet-18/50/101, mini; output stride 32/16/8; "
                  "sizes 65-513) equal the count from forward hooks on the PyTorch twin", 0.0, "exact")


# ---------------------------------------------------------------------------------------- 3.3

def _footprint_cases():
    from minideeplab.specs.backbone import ResNet

    return [(ResNet("mini", 16), ("layer4",)), (ResNet("mini", 16, "smp"), ("layer4",)),
            (ResNet("mini", 16, multi_grid=(1, 2, 4)), ("layer4",)), (ResNet("mini", 32), ("layer3", "layer4")),
            (ResNet("mini", 8), ("layer3", "layer4")), (ResNet("mini", 8, "smp"), ("layer3", "layer4"))]


def _footprint_variant(plan, mistake):
    offsets, jump = {0}, 1
    for stride, dilation in plan:
        if mistake == "jump_first":
            jump *= stride
        step = dilation if mistake == "no_jump" else dilation * jump
        taps = {-step, 0, step}
        offsets = offsets | taps if mistake == "union" else {o + t for o in offsets for t in taps}
        if mistake != "jump_first":
            jump *= stride * dilation if mistake == "jump_rate" else stride
    mask = offsets_mask(offsets)
    return np.ones_like(mask) if mistake == "dense" else mask


_FOOTPRINT_HINTS = {
    "dense": "every pixel of the field is marked: a dilated 3x3 reads 3 pixels `dilation` apart along an axis, "
             "and the blocks' offsets add up to a set with holes, not a solid span.",
    "union": "blocks compose: block 2's taps read block 1's outputs, each of which already reads "
             "{-d1, 0, +d1}; the offsets add (every sum of one tap per block), the shortcut only adds offset 0.",
    "no_jump": "after a stride-2 block, one step on the map is 2 pixels of the stage's input: a later tap at "
               "dilation d is d * jump input pixels away.",
    "jump_first": "a strided block's own 3x3 still steps over its input at the old jump: multiply the jump by "
                  "the stride after the block's taps.",
    "jump_rate": "the jump is the product of the strides only: a dilation spreads a block's taps, it does not "
                 "move neighbouring output units apart.",
}


@exercise_check("3.3")
def exercise_3_3(stage_footprint):
    """stage_footprint(plan) -> bool mask over one axis of the field, against the input gradient of the real
    stages of the PyTorch twin (all weights positive, so the gradient is non-zero exactly where a unit reads)."""
    from minideeplab.reference.receptive import stage_footprint as measured

    cases = _footprint_cases()
    for spec, stages in cases:
        plan = [(b.stride, b.dilation) for s in stages for b in spec.stages[int(s[-1]) - 1]]
        call = f"stage_footprint({plan})"
        got = stage_footprint(list(plan))
        if got is not None and not isinstance(got, np.ndarray):
            got = np.asarray(got)
        if isinstance(got, np.ndarray) and got.dtype != bool and got.dtype.kind in "iuf":
            got = got != 0  # path counts are fine too: non-zero means read
        expected = measured(spec, stages).any(axis=0)
        known = {text: _footprint_variant(plan, key) for key, text in _FOOTPRINT_HINTS.items()}
        what = (f"{call} (True where a unit of {'+'.join(stages)} of {spec!r} reads the stage input, along one axis; "
                "the reference is the non-zero set of torch's input gradient)")
        compare_arrays("3.3", what, got, expected, rtol=0, atol=0, known_mistakes=known)
    passed("3.3", f"footprints of {len(cases)} real stages (layer4, layer3+layer4; output stride 32/16/8; both "
                  "conventions; multi-grid) equal the non-zero input gradients of the PyTorch twin", 0.0, "exact")
