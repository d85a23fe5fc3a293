"""Benchmark: a whole DeepLab forward pass, the scratch model against torch with the same weights.

Cases (batch 1, float32, eval):

    v3plus-resnet50-os16         scratch DeepLab v3+ (ResNet-50, output stride 16) against the reference
                                 twin (``minideeplab.reference.deeplab``) holding the same weights, 513x513
    v3plus-resnet101-os16        the same on ResNet-101, 513x513
    torchvision-v3-resnet50-os8  torchvision's ``deeplabv3_resnet50(weights=None, weights_backbone=None,
                                 num_classes=21)`` (output stride 8) against the scratch v3 loaded with its
                                 weights (the state_dict keys are ours), 513x513
    torchvision-v3-mobilenet_v3_large      torchvision's ``deeplabv3_mobilenet_v3_large`` (output stride 16, ASPP
                                           rates (12, 24, 36), no aux) and the scratch v3 with its weights, 513x513
    torchvision-lraspp-mobilenet_v3_large  torchvision's ``lraspp_mobilenet_v3_large`` and the scratch lraspp,
                                           513x513
    v3plus-xception65-os16       scratch DeepLab v3+ on aligned Xception-65 in smp's layout (what ``from_smp``
                                 makes of ``DeepLabV3Plus("tu-xception65")``) against its twin, 512x512

``size``: every case at size x size instead of its own (a multiple of 16 for smp's layout): ``--size 512``
gives the table of notebook 10 (``data/bench/model.json``).

Each row also carries the model's parameter count and its convolutions' multiply-adds on its input
(``bench.cost.mult_adds``, counted on the twin built on the meta device: shapes only, about a second).

``--quick``: a v3+ on the "mini" ResNet and a torchvision DeepLabV3 on ResNet-18 (output stride 32: torchvision's
BasicBlock cannot dilate), 65x65, one repeat.

Each side runs in its own subprocess (``python -m minideeplab.bench.model --side scratch|torch ...``): in one
process torch's thread pool and OpenBLAS/numba's threads fight over the cores and both slow down many times.
The parent writes the weights (one .npz, so both sides hold identical weights) and the input (.npy); each child
sets the same thread count for torch, numba and the BLAS, loads them, times the forward pass (median of
``repeat`` after a warm-up, ``median_seconds``), saves its output (.npy) and reports its time and memory on
one JSON line. Memory: the peak RSS (Linux's VmHWM, reset once the model and input are loaded;
``ru_maxrss`` elsewhere) minus the RSS at that point, i.e. the extra memory the forward pass needed. The parent checks
that the outputs agree (max |scratch - torch| / max |torch|; above ``MAX_REL_ERR`` the row is WRONG) and
prints the ratios scratch / torch. ``--json``: an error that could not be measured (shapes differ, a zero or
non-finite torch output) is null there (JSON has no Infinity), and the row is WRONG.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from minideeplab.bench.atrous import child_env, median_seconds

MAX_REL_ERR = 1e-4  # max|scratch - torch| / max|torch|, float32; above this a row is wrong, not slow or fast
WARMUP_SIZE = 33    # the first (compiling) call runs on an input this small (>= output stride 32), before memory is measured

# name -> kind ("minideeplab": our reference twin; "torchvision"), make_config arguments, input size
CASES = {
    "v3plus-resnet50-os16": dict(kind="minideeplab", model=("v3plus", "resnet50", 16), options={}, size=513),
    "v3plus-resnet101-os16": dict(kind="minideeplab", model=("v3plus", "resnet101", 16), options={}, size=513),
    "torchvision-v3-resnet50-os8": dict(kind="torchvision", model=("v3", "resnet50", 8), options={}, size=513),
    "torchvision-v3-mobilenet_v3_large": dict(kind="torchvision", model=("v3", "mobilenet_v3_large", 16), options={},
                                              size=513),
    "torchvision-lraspp-mobilenet_v3_large": dict(kind="torchvision", model=("lraspp", "mobilenet_v3_large", 16),
                                                  options={}, size=513),
    # smp's DeepLabV3Plus(tu-xception65) as interop.smp_config reads it; smp takes multiples of 16 only
    "v3plus-xception65-os16": dict(kind="minideeplab", model=("v3plus", "xception65", 16), size=512,
                                   options=dict(decoder_layout="smp", aspp_separable=True, decoder_separable=True,
                                                align_corners=True, atrous_rates=(12, 24, 36))),
}
QUICK_CASES = {
    "quick-v3plus-mini": dict(kind="minideeplab", model=("v3plus", "mini", 16), options={}, size=65),
    # torchvision's DeepLabHead has rates (12, 24, 36) whatever the output stride
    "quick-torchvision-v3-resnet18-os32": dict(kind="torchvision", model=("v3", "resnet18", 32),
                                               options=dict(atrous_rates=(12, 24, 36)), size=65),
}
ALL_CASES = {**CASES, **QUICK_CASES}


def _config(case):
    from minideeplab.specs.deeplab import make_config

    return make_config(*case["model"], **case["options"])


def _torch_module(case):
    """The torch side's module (random weights, overwritten by the .npz), in eval mode."""
    if case["kind"] == "minideeplab":
        from minideeplab.reference.deeplab import DeepLabModule

        return DeepLabModule(_config(case)).eval()
    from torchvision.models.segmentation import deeplabv3_resnet50

    name, backbone, os_ = case["model"]
    if backbone == "mobilenet_v3_large" and os_ == 16:
        from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

        build = {"v3": deeplabv3_mobilenet_v3_large, "lraspp": lraspp_mobilenet_v3_large}[name]
        return build(weights=None, weights_backbone=None, num_classes=21).eval()
    if backbone == "resnet50" and os_ == 8:
        return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21).eval()
    if backbone == "resnet18" and os_ == 32:
        from torchvision.models import resnet18
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

        trunk = IntermediateLayerGetter(resnet18(weights=None), return_layers={"layer4": "out"})
        return DeepLabV3(trunk, DeepLabHead(512, 21), None).eval()
    raise ValueError(f"bench model: no torchvision model for {case['model']}")


def _check_size(case_name, config, size):
    """A ValueError unless the model takes a size x size input: smp's layout needs a multiple of the
    output stride, and any model an input at least as large as its output stride."""
    if size < config.output_stride or (config.decoder_layout == "smp" and size % config.output_stride):
        need = "a multiple of" if config.decoder_layout == "smp" else "at least"
        raise ValueError(f"bench model: size {size} does not fit {case_name}: its input must be {need} "
                         f"{config.output_stride} (its output stride)")


def cost(case, size) -> dict:
    """{"params": trainable parameters, "mult_adds": the convolutions' multiply-adds on one size x size
    image} of a case's model, counted on the twin (on the meta device: shapes only)."""
    import torch

    from minideeplab.bench.cost import mult_adds
    from minideeplab.reference.deeplab import DeepLabModule
    from minideeplab.scratch.deeplab import model_parameter_shapes

    config = _config(case)
    with torch.device("meta"):
        module = DeepLabModule(config).eval()
    params = sum(int(np.prod(shape)) for shape in model_parameter_shapes(config)[0].values())
    return dict(params=params, mult_adds=int(sum(mult_adds(module, (1, 3, size, size)).values())))


def _weights(case, path):
    """Write the case's weights to ``path`` (.npz, keys "params/NAME" and "buffers/NAME"): the scratch
    build_model's (seeded) for our models, torchvision's init (seeded) for torchvision's."""
    import torch

    from minideeplab.reference.backbone import params_from_torch
    from minideeplab.scratch.deeplab import build_model, model_parameter_shapes

    if case["kind"] == "minideeplab":
        model = build_model(*case["model"], rng=np.random.default_rng(0), **case["options"])
        params, buffers = model.params, model.buffers
    else:
        torch.manual_seed(0)
        params, buffers = params_from_torch(_torch_module(case))
        shapes_p, shapes_b = model_parameter_shapes(_config(case))
        if set(params) != set(shapes_p) or set(buffers) != set(shapes_b):
            raise ValueError(f"bench model: torchvision's {case['model']} state_dict keys differ from the scratch "
                             f"model's: {sorted(set(params) ^ set(shapes_p))[:5]} {sorted(set(buffers) ^ set(shapes_b))[:5]}")
    np.savez(path, **{f"params/{k}": v for k, v in params.items()}, **{f"buffers/{k}": v for k, v in buffers.items()})


def _load_weights(path):
    with np.load(path) as f:
        params = {k[len("params/"):]: f[k] for k in f.files if k.startswith("params/")}
        buffers = {k[len("buffers/"):]: f[k] for k in f.files if k.startswith("buffers/")}
    return params, buffers


# ---------------------------------------------------------------------------------------------
# one side, in its own process


def _rss_mb():
    """The current RSS (Linux: /proc/self/statm), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb():
    """The peak RSS: Linux's VmHWM (the high-water mark _reset_peak_rss resets), else ru_maxrss. (On Linux
    ru_maxrss is no good here: it keeps the maximum of the process's memory before exec, i.e. the forked
    parent's RSS, and clear_refs does not reset that.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 10  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2 ** 20 if sys.platform == "darwin" else kb / 2 ** 10  # bytes on macOS, KiB on Linux


def _reset_peak_rss():
    """Reset the RSS high-water mark (and with it ru_maxrss) to the current RSS; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_side(side, case_name, threads, repeat, weights, input_path, output_path):
    """Load, warm up, time; save the output; return the report (a dict). Checks nothing."""
    import numba
    from threadpoolctl import threadpool_limits

    from minideeplab.scratch import runtime

    runtime.keep_freed_memory()  # both sides with the same allocator (OMP_WAIT_POLICY: set by _child, before imports)

    case = ALL_CASES[case_name]
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        x = np.load(input_path)
        params, buffers = _load_weights(weights)
        if side == "scratch":
            from minideeplab.scratch.deeplab import DeepLab

            model = DeepLab(_config(case), params, buffers, training=False)

            def forward(inp):
                return model(inp)
        else:
            import torch

            torch.set_num_threads(threads)
            module = _torch_module(case)
            module.load_state_dict({k: torch.from_numpy(v) for k, v in {**params, **buffers}.items()}, strict=True)
            del params, buffers

            def forward(inp):
                with torch.inference_mode():
                    return module(torch.from_numpy(inp))["out"].numpy()

        s, config = min(WARMUP_SIZE, x.shape[-1]), _config(case)
        if config.decoder_layout == "smp":  # smp's rule: H and W multiples of the output stride
            s = max(s - s % config.output_stride, config.output_stride)
        forward(np.ascontiguousarray(x[..., :s, :s]))  # numba compiles, oneDNN sets up, on a small input
        gc.collect()
        loaded = _rss_mb()
        reset = _reset_peak_rss()
        saved = []

        def timed():
            y = forward(x)
            if not saved:  # the first full-size call's (median_seconds's warm-up) output is the one checked
                np.save(output_path, y)
                saved.append(output_path)

        seconds = median_seconds(timed, repeat)
        peak = _peak_rss_mb()
    return dict(side=side, case=case_name, threads=threads, repeat=repeat, seconds=seconds, rss_loaded_mb=loaded,
                peak_rss_mb=peak, extra_mb=max(peak - loaded, 0.0), peak_reset=reset)


# ---------------------------------------------------------------------------------------------
# the parent


def _child(side, name, threads, repeat, weights, input_path, output_path):
    env = child_env(threads)
    cmd = [sys.executable, "-m", "minideeplab.bench.model", "--side", side, "--case", name, "--threads", str(threads),
           "--repeat", str(repeat), "--weights", str(weights), "--input", str(input_path), "--output", str(output_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"bench model: the {side} side of {name} failed (exit {res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _ratio(a, b):
    return a / b if b > 0 else None


def _json_safe(v):
    """v with every non-finite float (a WRONG row's infinite error) as None: JSON has no Infinity."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return None if isinstance(v, float) and not np.isfinite(v) else v


def run(threads=2, repeat=3, as_json=False, quick=False, size=None) -> int:
    import numba

    from minideeplab.specs.checks import is_int

    if threads < 1 or repeat < 1:
        raise ValueError(f"bench model: threads and repeat must be >= 1, got threads={threads}, repeat={repeat}")
    if size is not None and (not is_int(size) or size < 1):
        raise ValueError(f"bench model: size must be an int >= 1 or None (each case's own), got {size!r}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    cases, repeat = (QUICK_CASES, 1) if quick else (CASES, repeat)
    sizes = {name: case["size"] if size is None else int(size) for name, case in cases.items()}
    for name, case in cases.items():  # before minutes of timing
        _check_size(name, _config(case), sizes[name])
    rows = {}
    with tempfile.TemporaryDirectory(prefix="minideeplab-bench-model-") as tmp:
        tmp = Path(tmp)
        for name, case in cases.items():
            weights, inp = tmp / f"{name}.npz", tmp / f"{name}-x.npy"
            _weights(case, weights)
            px = sizes[name]
            np.save(inp, np.random.default_rng(0).standard_normal((1, 3, px, px), dtype=np.float32))
            rep = {side: _child(side, name, threads, repeat, weights, inp, tmp / f"{name}-{side}.npy")
                   for side in ("scratch", "torch")}
            out_s, out_t = np.load(tmp / f"{name}-scratch.npy"), np.load(tmp / f"{name}-torch.npy")
            scale = float(np.max(np.abs(out_t)))
            # a zero or non-finite output checks nothing: WRONG too
            err = (float(np.max(np.abs(out_s - out_t))) / scale
                   if out_s.shape == out_t.shape and 0 < scale < float("inf") else float("inf"))
            s, t = rep["scratch"], rep["torch"]
            rows[name] = dict(kind=case["kind"], model=_config(case).describe(), input=f"1x3x{px}x{px}",
                              size=px, **cost(case, px),
                              scratch_s=s["seconds"], torch_s=t["seconds"], ratio=s["seconds"] / t["seconds"],
                              scratch_extra_mb=s["extra_mb"], torch_extra_mb=t["extra_mb"],
                              memory_ratio=_ratio(s["extra_mb"], t["extra_mb"]),
                              scratch_rss_loaded_mb=s["rss_loaded_mb"], torch_rss_loaded_mb=t["rss_loaded_mb"],
                              max_abs_torch=scale, max_rel_err=err)
    wrong = [n for n, r in rows.items() if not r["max_rel_err"] <= MAX_REL_ERR]
    mem = [r["memory_ratio"] for r in rows.values() if r["memory_ratio"] is not None]
    summary = dict(ratio=max(r["ratio"] for r in rows.values()), memory_ratio=max(mem) if mem else None,
                   max_rel_err=max(r["max_rel_err"] for r in rows.values()))
    if as_json:
        print(json.dumps(_json_safe(dict(threads=threads, repeat=repeat, quick=quick, size=size, dtype="float32",
                                         batch=1, agree=not wrong, max_rel_err_allowed=MAX_REL_ERR, **summary,
                                         cases=rows)),
                         allow_nan=False))
        return 1 if wrong else 0
    print(f"DeepLab forward, float32, batch 1, eval; {threads} threads for torch, numba and BLAS, each side in its "
          f"own process; median of {repeat}; ratio = scratch / torch (lower is better); memory: peak RSS above "
          f"the RSS with model and input loaded")
    head = (f"{'case':<36}{'input':>6}{'params':>8}{'GMACs':>7} | {'scratch':>8}{'torch':>8}{'ratio':>7} | "
            f"{'scratch':>9}{'torch':>9}{'ratio':>7} | {'rel err':>8}")
    print(f"{'':<36}{'':>21} | {'time':^23} | {'extra memory':^25} |")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        mr = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
        print(f"{name:<36}{r['size']:>6}{r['params'] / 1e6:>7.1f}M{r['mult_adds'] / 1e9:>7.1f} | "
              f"{r['scratch_s']:>7.3f}s{r['torch_s']:>7.3f}s"
              f"{r['ratio']:>7.2f} | {r['scratch_extra_mb']:>7.0f}MB{r['torch_extra_mb']:>7.0f}MB{mr:>7} | "
              f"{r['max_rel_err']:>8.1e}")
    if wrong:
        print(f"WRONG: scratch and torch differ by more than {MAX_REL_ERR:g} (relative) on: {', '.join(wrong)}")
    print(f"worst ratio scratch/torch: time {summary['ratio']:.2f}"
          + ("" if summary["memory_ratio"] is None else f", memory {summary['memory_ratio']:.2f}"))
    return 1 if wrong else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minideeplab.bench.model",
                                description="One side of `minideeplab bench model`, run by it in a subprocess: "
                                            "times the forward pass and prints one JSON line.")
    p.add_argument("--side", choices=("scratch", "torch"), required=True)
    p.add_argument("--case", choices=sorted(ALL_CASES), required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--weights", required=True, help=".npz written by the parent (params/NAME, buffers/NAME)")
    p.add_argument("--input", required=True, help=".npy, the input (1, 3, H, W) float32")
    p.add_argument("--output", required=True, help=".npy to write the logits to")
    a = p.parse_args(argv)
    print(json.dumps(run_side(a.side, a.case, a.threads, a.repeat, a.weights, a.input, a.output)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
