"""From-scratch implementations in NumPy + numba. Each module that computes a network's part has a PyTorch
twin in ``minideeplab.reference`` with the same name (see ARCHITECTURE.md).

Importing it makes two process settings (``runtime.configure``): OpenMP threads wait passively (numba's and the
BLAS's thread pools share the cores) and glibc's malloc keeps freed memory for the next array (fresh pages cost
page faults)."""

from minideeplab.scratch import runtime

runtime.configure()

from minideeplab.scratch.atrous import (atrous_conv2d, atrous_conv2d_backward, atrous_conv2d_backward_naive,
                                        atrous_conv2d_naive, conv_output_size)
from minideeplab.scratch.crf import dense_crf
from minideeplab.scratch.receptive import RF, receptive_field
from minideeplab.scratch import (aspp, atrous, backbone, crf, deeplab, heads, layers, mobilenet,  # noqa: E402
                                 mobilenet_v2, optim, params, receptive, resnet, units, vgg, xception)
from minideeplab.scratch.deeplab import DeepLab, build_model

__all__ = ["conv_output_size", "atrous_conv2d_naive", "atrous_conv2d_backward_naive",
           "atrous_conv2d", "atrous_conv2d_backward", "RF", "receptive_field", "dense_crf",
           "build_model", "DeepLab",
           "aspp", "atrous", "backbone", "crf", "deeplab", "heads", "layers", "mobilenet", "optim", "params", "receptive",
           "resnet", "units", "vgg", "xception", "mobilenet_v2"]
