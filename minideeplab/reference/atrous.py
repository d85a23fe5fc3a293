"""PyTorch reference for atrous (dilated) convolution, on NumPy arrays.

Twin of ``minideeplab.scratch.atrous``: same arguments, same checks, same padding rule
(imported from the scratch package so the two cannot disagree).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minideeplab.specs.conv import check_conv2d


def atrous_conv2d(x, weight, bias=None, rate=1, stride=1, padding="same", groups=1) -> np.ndarray:
    """Atrous conv via ``F.conv2d(dilation=rate)``. x (N, C, H, W), weight (Cout, C/groups, kh, kw),
    bias (Cout,) or None -> (N, Cout, Ho, Wo), same dtype as x."""
    g = check_conv2d("atrous_conv2d", x, weight, bias, rate, stride, padding, groups)
    with torch.no_grad():
        out = F.conv2d(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(weight)),
                       None if bias is None else torch.from_numpy(np.ascontiguousarray(bias)),
                       stride=stride, padding=(g.ph, g.pw), dilation=rate, groups=groups)
    return out.numpy()


def atrous_conv2d_backward(dout, x, weight, rate=1, stride=1, padding="same", groups=1):
    """Gradients of the atrous conv by autograd: dout (N, Cout, Ho, Wo) -> (dx, dweight, dbias)
    with shapes x.shape, weight.shape and (Cout,)."""
    g = check_conv2d("atrous_conv2d_backward", x, weight, None, rate, stride, padding, groups, dout=dout)
    xt = torch.from_numpy(np.array(x)).requires_grad_(True)
    wt = torch.from_numpy(np.array(weight)).requires_grad_(True)
    bt = torch.zeros(g.Cout, dtype=xt.dtype, requires_grad=True)
    out = F.conv2d(xt, wt, bt, stride=stride, padding=(g.ph, g.pw), dilation=rate, groups=groups)
    out.backward(torch.from_numpy(np.array(dout)))
    return xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()
