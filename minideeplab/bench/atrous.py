"""Benchmark: scratch atrous conv (forward and backward) against PyTorch, same thread count.

Each row checks first that scratch and torch agree (max relative error), so a fast but wrong
kernel cannot look good, then times both: median of ``repeat`` runs after a warm-up.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

# (name, C, Cout, H=W, k, rate, stride, groups): DeepLab layer shapes, N=1, float32, k x k, "same"
SUITE = [
    ("aspp 256->256 33x33", 256, 256, 33, 3, 6, 1, 1),
    ("aspp 256->256 33x33", 256, 256, 33, 3, 12, 1, 1),
    ("aspp 256->256 33x33", 256, 256, 33, 3, 18, 1, 1),
    ("aspp 2048->256 33x33", 2048, 256, 33, 3, 12, 1, 1),
    ("512->256 65x65", 512, 256, 65, 3, 12, 1, 1),
    ("64->64 129x129", 64, 64, 129, 3, 2, 1, 1),
    ("depthwise 256 65x65", 256, 256, 65, 3, 12, 1, 256),
]
# depthwise (groups == channels) on the shapes of Xception-65 (middle and exit flow at output stride 16,
# 513x513 input) and MobileNetV3-Large (torchvision's dilated layout, 513x513), and smp's separable ASPP
DEPTHWISE = [
    ("dw xception middle 33x33", 728, 728, 33, 3, 1, 1, 728),
    ("dw xception exit 33x33", 728, 728, 33, 3, 2, 1, 728),
    ("dw xception exit 33x33", 1536, 1536, 33, 3, 2, 1, 1536),
    ("dw xception entry 129x129", 256, 256, 129, 3, 1, 2, 256),
    ("dw sep-aspp 2048 33x33", 2048, 2048, 33, 3, 12, 1, 2048),
    ("dw mnv3 129x129", 72, 72, 129, 3, 1, 1, 72),
    ("dw mnv3 129x129 5x5", 72, 72, 129, 5, 1, 2, 72),
    ("dw mnv3 65x65 5x5", 120, 120, 65, 5, 1, 1, 120),
    ("dw mnv3 65x65", 240, 240, 65, 3, 1, 2, 240),
    ("dw mnv3 33x33 5x5", 960, 960, 33, 5, 2, 1, 960),
]
MAX_REL_ERR = 1e-4  # max|scratch - torch| / max|torch|, float32; above this a row is wrong, not slow or fast
QUICK = [
    ("quick 16->8 9x9", 16, 8, 9, 3, 2, 1, 1),
    ("quick depthwise 8 9x9", 8, 8, 9, 3, 3, 1, 8),
    ("quick depthwise 8 9x9", 8, 8, 9, 5, 1, 2, 8),
]

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def child_env(threads) -> dict:
    """The environment of a benchmark side's process: every library's thread count, and OpenMP's wait policy as
    the scratch core sets it for itself (``scratch.runtime``: PASSIVE unless the environment says otherwise), so
    that both sides run under the same one."""
    env = dict(os.environ) | {var: str(threads) for var in THREAD_VARS}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def call_seconds(fn, repeat) -> list[float]:
    """Wall time of each of `repeat` calls of fn, after a pause and one warm-up call."""
    # After a call, OpenBLAS's and OpenMP's worker threads keep spinning for a while (OpenBLAS: up to
    # ~0.1 s) and steal the cores from whichever library runs next. Let them go idle first, then warm
    # up the library being timed, so that each side is timed alone.
    time.sleep(0.3)
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_seconds(fn, repeat):
    """Median wall time of `repeat` calls of fn (``call_seconds``)."""
    return float(np.median(call_seconds(fn, repeat)))


def _median_ms(fn, repeat):
    return 1e3 * median_seconds(fn, repeat)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run(threads=2, repeat=7, as_json=False, quick=False, depthwise=False) -> int:
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    from minideeplab.scratch.atrous import atrous_conv2d, atrous_conv2d_backward

    if threads < 1 or repeat < 1:
        raise ValueError(f"bench atrous: threads and repeat must be >= 1, got threads={threads}, repeat={repeat}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    suite = DEPTHWISE if depthwise else SUITE + DEPTHWISE
    if quick:
        suite, repeat = [r for r in QUICK if r[-1] == r[1] or not depthwise], 1  # groups == C: depthwise
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=threads):
        for name, C, Cout, size, k, rate, stride, groups in suite:
            x = rng.standard_normal((1, C, size, size), dtype=np.float32)
            w = rng.standard_normal((Cout, C // groups, k, k), dtype=np.float32)
            w *= np.float32((k * k * C / groups) ** -0.5)
            b = rng.standard_normal(Cout, dtype=np.float32)
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            args = dict(rate=rate, stride=stride, padding="same", groups=groups)
            pad = rate * (k - 1) // 2

            def torch_fwd():
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad, dilation=rate,
                                                      groups=groups)

            out_t = torch_fwd().numpy()
            dout = rng.standard_normal(out_t.shape, dtype=np.float32)
            dt = torch.from_numpy(dout)

            def torch_bwd():
                return torch.ops.aten.convolution_backward(
                    dt, xt, wt, [Cout], [stride, stride], [pad, pad], [rate, rate], False, [0, 0], groups,
                    [True, True, True])

            # warm-up (numba compile, oneDNN primitive creation) and the correctness check
            out_s = atrous_conv2d(x, w, b, **args)
            grads_s = atrous_conv2d_backward(dout, x, w, **args)
            grads_t = [g.numpy() for g in torch_bwd()]
            err_fwd = _rel(out_s, out_t)
            err_bwd = max(_rel(s, t) for s, t in zip(grads_s, grads_t))

            fwd_s = _median_ms(lambda: atrous_conv2d(x, w, b, **args), repeat)
            fwd_t = _median_ms(torch_fwd, repeat)
            bwd_s = _median_ms(lambda: atrous_conv2d_backward(dout, x, w, **args), repeat)
            bwd_t = _median_ms(torch_bwd, repeat)
            rows.append(dict(name=name, C=C, Cout=Cout, size=size, kernel=k, rate=rate, stride=stride, groups=groups,
                             forward_scratch_ms=fwd_s, forward_torch_ms=fwd_t, forward_ratio=fwd_s / fwd_t,
                             backward_scratch_ms=bwd_s, backward_torch_ms=bwd_t, backward_ratio=bwd_s / bwd_t,
                             forward_max_rel_err=err_fwd, backward_max_rel_err=err_bwd))

    med_f = float(np.median([r["forward_ratio"] for r in rows]))
    med_b = float(np.median([r["backward_ratio"] for r in rows]))
    wrong = [r["name"] for r in rows if max(r["forward_max_rel_err"], r["backward_max_rel_err"]) > MAX_REL_ERR]
    if as_json:
        print(json.dumps(dict(threads=threads, repeat=repeat, quick=quick, dtype="float32",
                              median_forward_ratio=med_f, median_backward_ratio=med_b,
                              agree=not wrong, max_rel_err_allowed=MAX_REL_ERR, rows=rows)))
        return 1 if wrong else 0
    print(f"atrous conv, float32, N=1, 'same'; {threads} threads; median of {repeat}; "
          f"ratio = scratch / torch (lower is better)")
    head = (f"{'shape':<26}{'k':>2}{'rate':>5}{'str':>4} | "
            f"{'fwd scratch':>11}{'torch':>8}{'ratio':>7}{'rel err':>9} | "
            f"{'bwd scratch':>11}{'torch':>8}{'ratio':>7}{'rel err':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<26}{r['kernel']:>2}{r['rate']:>5}{r['stride']:>4} | "
              f"{r['forward_scratch_ms']:>9.2f}ms{r['forward_torch_ms']:>6.2f}ms"
              f"{r['forward_ratio']:>7.2f}{r['forward_max_rel_err']:>9.1e} | "
              f"{r['backward_scratch_ms']:>9.2f}ms{r['backward_torch_ms']:>6.2f}ms"
              f"{r['backward_ratio']:>7.2f}{r['backward_max_rel_err']:>9.1e}")
    if wrong:
        print(f"WRONG: scratch and torch differ by more than {MAX_REL_ERR:g} (relative) on: {', '.join(wrong)}")
    print(f"median ratio scratch/torch: forward {med_f:.2f}, backward {med_b:.2f}")
    return 1 if wrong else 0
