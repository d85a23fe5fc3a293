"""Tables and pictures of notebook 03 (dilated backbones): a ResNet as receptive-field layers, the
stride/dilation plans of several specs side by side, the measured cost of each output stride, and the
footprints of real stages measured with autograd."""

from __future__ import annotations

import numpy as np

from minideeplab.specs.backbone import ResNet


def resnet_layers(spec: ResNet) -> list[tuple[int, int, int]]:
    """The longest path of a ResNet as (kernel, stride, rate) layers for ``scratch.receptive``: conv1 (7, 2, 1),
    the max pool (3, 2, 1), then every 3x3 conv of every block (one per bottleneck, two per basic block).
    The 1x1 convs and the shortcuts add no offset, so this path's field and footprint are the network's."""
    if not isinstance(spec, ResNet):
        raise ValueError(f"resnet_layers: spec must be a ResNet, got {type(spec).__name__}")
    layers = [(7, 2, 1), (3, 2, 1)]
    for stage in spec.stages:
        for b in stage:
            layers.append((3, b.stride, b.dilation))
            if spec.block == "basic":
                layers.append((3, 1, b.dilation))
    return layers


def plan_table(specs: dict, size: int = 513) -> str:
    """One row per named ResNet spec: the dilation of every block's 3x3 conv, stage by stage ('*' marks the
    stride-2 block), and the size of layer4's output for a size x size image."""
    if not isinstance(specs, dict) or not specs or not all(isinstance(v, ResNet) for v in specs.values()):
        got = {k: type(v).__name__ for k, v in specs.items()} if isinstance(specs, dict) else type(specs).__name__
        raise ValueError(f"plan_table: specs must be a non-empty dict of name -> ResNet, got {got}")
    names = [f"layer{i}" for i in range(1, 5)]
    cells = {}
    for name, spec in specs.items():
        cells[name] = [" ".join(f"{b.dilation}{'*' if b.stride == 2 else ''}" for b in stage) for stage in spec.stages]
    widths = [max(len(n), *(len(c[i]) for c in cells.values())) for i, n in enumerate(names)]
    first = max(len(n) for n in specs)
    lines = [f"dilation of each block's 3x3 conv, * = stride 2; output for a {size}x{size} image",
             f"{'':{first}s}  " + "  ".join(f"{n:{w}s}" for n, w in zip(names, widths)) + "  output"]
    for name, spec in specs.items():
        out = -(-size // spec.output_stride)
        lines.append(f"{name:{first}s}  " + "  ".join(f"{c:{w}s}" for c, w in zip(cells[name], widths))
                     + f"  {out}x{out}")
    return "\n".join(lines)


def cost_table(size: int = 513, output_strides=(32, 16, 8), depth=50, convention: str = "torchvision") -> list[dict]:
    """Measure one forward pass of the PyTorch twin per output stride (``bench.cost``) and print
    a table: output shape, GMACs per stage and in all, conv-output megabytes, seconds. Returns the rows."""
    from minideeplab.bench.cost import conv_macs, forward_cost

    rows = []
    for os_ in output_strides:
        spec = ResNet(depth, os_, convention)
        cost = forward_cost(spec, size)
        per_conv = conv_macs(spec, size)
        stages = [sum(m for n, m in per_conv.items() if n.split(".")[0] == s) / 1e9
                  for s in ("conv1", "layer1", "layer2", "layer3", "layer4")]
        rows.append({"output_stride": os_, **cost, "stage_gmacs": stages})
    base = rows[0]
    print(f"ResNet-{depth} ({convention}), one {size}x{size} image, float32, random weights, one forward each "
          "on one torch thread")
    print(f"{'OS':>3s} {'output':>18s} | {'GMACs: stem':>11s} {'layer1':>6s} {'layer2':>6s} {'layer3':>6s} "
          f"{'layer4':>6s} {'total':>6s} | {'conv outputs':>12s} | {'forward':>7s}")
    for r in rows:
        st = " ".join(f"{g:6.1f}" for g in r["stage_gmacs"][1:])
        print(f"{r['output_stride']:3d} {str(r['out']):>18s} | {r['stage_gmacs'][0]:11.1f} {st} {r['gmacs']:6.1f} | "
              f"{r['conv_mb']:9.0f} MB | {r['seconds']:6.2f}s"
              + ("" if r is base else f"   (x{r['gmacs'] / base['gmacs']:.1f} MACs, x{r['conv_mb'] / base['conv_mb']:.1f} "
                                      f"memory, x{r['seconds'] / base['seconds']:.1f} time)"))
    return rows


def plot_stage_footprints(cases: dict, figsize=None):
    """Measure with autograd (``reference.receptive.stage_footprint``) the footprint of one output unit
    of the named (spec, stages) cases on their first stage's input, and draw them side by side
    (``viz.dilation.plot_footprints``), coloured by the log of the gradient. Returns the Figure."""
    from minideeplab.reference.receptive import stage_footprint
    from minideeplab.viz.dilation import plot_footprints

    shown = {}
    for name, (spec, stages) in cases.items():
        g = stage_footprint(spec, stages)
        read = g > 0
        shown[name] = np.zeros_like(g)
        shown[name][read] = np.log10(g[read] / g[read].min()) + 1  # log scale from 1; zeros stay zero (white)
    return plot_footprints(shown, figsize=figsize)


def _unit(conv_name: str) -> str:
    """A conv's unit: its name up to its first integer part ("layer4.1.conv2" -> "layer4.1", "blocks.19.stack.conv1
    .conv_dw" -> "blocks.19", "14.block.1.0" -> "14"), the whole name without one ("conv1")."""
    parts = conv_name.split(".")
    i = next((j for j, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
    return ".".join(parts[:i + 1])


def _ranges(units: list[str]) -> str:
    """["layer4.1", "layer4.2", "blocks.3"] -> "layer4.1-2, blocks.3" (runs of consecutive indices merged)."""
    runs: list[list] = []
    for u in units:
        head, _, idx = u.rpartition(".")
        if idx.isdigit() and runs and runs[-1][0] == head and runs[-1][2] == int(idx) - 1:
            runs[-1][2] = int(idx)
        else:
            runs.append([head, int(idx) if idx.isdigit() else idx, int(idx) if idx.isdigit() else idx])
    text = []
    for head, a, b in runs:
        prefix = f"{head}." if head else ""
        text.append(f"{prefix}{a}" if a == b else f"{prefix}{a}-{b}")
    return ", ".join(text)


def dilation_summary(spec) -> str:
    """Where a backbone spec (anything with ``conv_table()``: ResNet, VGG, MobileNetV3, Xception, MobileNetV2)
    strides and dilates, unit by unit (a unit: a block, or a conv outside blocks), in forward order:
    "stride 2: conv1, layer2.0, layer3.0; rate 2: layer4.1-2" (a unit's largest stride and rate; pools, which
    are not convs, are not listed)."""
    if not hasattr(spec, "conv_table"):
        raise ValueError(f"dilation_summary: spec must be a backbone spec with conv_table(), got {type(spec).__name__}")
    units: dict[str, tuple[int, int]] = {}
    for name, (stride, rate) in spec.conv_table().items():
        s, r = units.get(_unit(name), (1, 1))
        units[_unit(name)] = (max(s, stride), max(r, rate))
    strided = [u for u, (s, _) in units.items() if s > 1]
    rates = sorted({r for _, r in units.values() if r > 1})
    parts = [f"stride 2: {_ranges(strided)}" if strided else "no stride"]
    parts += [f"rate {r}: {_ranges([u for u, (_, q) in units.items() if q == r])}" for r in rates]
    return "; ".join(parts) if rates else parts[0] + "; no dilation"
