"""VGG-16 DeepLab-LargeFOV from scratch, forward and backward: 13 3x3 convs (each with bias and ReLU) in five
stages with 3x3 max pools (pool4 and pool5 at stride 1, conv5 at rate 2), then fc6 (3x3 at ``fc6_rate``) and
fc7 (1x1), each with ReLU; no batch norm. ``forward`` returns ``low_level`` (ReLU of conv3_3, stride 4) and
``out`` (fc7, or pool5 for a spec with ``fc=False``). ``minideeplab.scratch.backbone`` runs it through its
registry; the twin is ``minideeplab.reference.backbone.VGGLargeFOV``.
"""

from __future__ import annotations

from minideeplab.scratch.layers import MaxPoolCache, max_pool2d, max_pool2d_backward, max_pool2d_infer
from minideeplab.scratch.units import conv_relu_backward, conv_relu_forward, conv_relu_infer
from minideeplab.specs.backbone import VGG

__all__ = ["parameter_shapes", "forward", "step_backward", "infer"]


def parameter_shapes(spec: VGG) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(params, {}): the convs' weights and biases, in torchvision's state_dict order."""
    params = {}
    for layer in spec.layers:
        if layer.kind == "conv":
            params[f"{layer.name}.weight"] = (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel)
            params[f"{layer.name}.bias"] = (layer.out_channels,)
    return params, {}


def forward(spec: VGG, params, buffers, x, training):
    """x (N, 3, H, W) -> (features {"low_level", "out"}, steps [(layer name, cache)], taps). No batch norm and
    no dropout: training changes nothing."""
    steps, features, h = [], {}, x
    for layer in spec.layers:
        if layer.kind == "conv":
            h, c = conv_relu_forward(h, params, layer.name, layer.dilation)
        else:
            h, c = max_pool2d(h, layer.kernel, layer.stride, 1)
        steps.append((layer.name, c))
        if layer.name == spec.low_level_layer:
            features["low_level"] = h
    features["out"] = h
    return features, steps, {"low_level": spec.low_level_layer, "out": spec.layers[-1].name}


def step_backward(dy, cache):
    """One layer of ``forward`` backwards: (dx, grads), grads {} for a pool."""
    if isinstance(cache, MaxPoolCache):
        return max_pool2d_backward(dy, cache), {}
    return conv_relu_backward(dy, cache)


def infer(spec: VGG, params, buffers, x):
    """Eval ``forward`` without caches (max pools without their argmax): x -> features {"low_level", "out"}."""
    features, h = {}, x
    for layer in spec.layers:
        if layer.kind == "conv":
            h = conv_relu_infer(h, params, layer.name, layer.dilation)
        else:
            h = max_pool2d_infer(h, layer.kernel, layer.stride, 1)
        if layer.name == spec.low_level_layer:
            features["low_level"] = h
    features["out"] = h
    return features
