"""Benchmark: the vision transformer from scratch against torch, same weights, same thread count.

Rows (float32):

    vit-tiny-224      timm's ``vit_tiny_patch16_224`` (``pretrained=False``, seeded) ``forward_features`` on one
                      224x224 image (eval, ``inference_mode``) against the scratch ViT holding its weights
                      (``interop.from_timm``: ``scratch.vit.infer``); the tokens are compared
    block-forward     one pre-norm transformer block (LN, multi-head self-attention, LN, MLP with GELU (erf),
                      residuals) at ViT-tiny's width (192 channels, 3 heads, 197 tokens), batch 8, the forward
                      that training runs: ``scratch.vit.block_forward`` keeping its caches against the twin
                      (``reference.vit.Block``) with autograd recording (the input requires grad)
    block-backward    the same block backwards from a seeded dy, the forward not timed: the scratch step's
                      backward (dx and the 12 parameter gradients) against ``torch.autograd.grad`` of the
                      twin's recorded graph for the same tensors (``retain_graph``)

``--quick``: a 2-block ViT 32 wide on 32x32 images and a block of 2 x 17 tokens, 32 wide: seconds, for the test.

Each side runs in its own subprocess (``python -m minideeplab.bench.attention --side ...``), as in ``bench
model``, with the same thread count for torch, numba and the BLAS (``OMP_NUM_THREADS``... set before the import,
``threadpool_limits``, ``torch.set_num_threads``). The sides alternate, ``rounds`` processes each (scratch,
torch, scratch, ...), ``repeat`` timed calls a process after a warm-up, so that a change of the machine's load
during the run falls on both; a side's time is the median of all its calls. The parent checks that the
outputs agree (max |scratch - torch| / max |torch| over every compared array; above ``MAX_REL_ERR`` the row is
WRONG) and prints the ratios scratch / torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from minideeplab.bench.atrous import call_seconds, child_env

MAX_REL_ERR = 1e-4  # max|scratch - torch| / max|torch| over the compared arrays, float32
TARGET_RATIO = 1.5  # issue 14: each row within 1.5x torch
ROUNDS = 3          # processes per side and row, alternating

# name -> ViT spec (timm's keyword arguments for VisionTransformer are the same names but img_size), input
VIT_CASES = {"vit-tiny-224": dict(timm="vit_tiny_patch16_224", vit=dict(embed_dim=192, depth=12, num_heads=3),
                                  img_size=224, batch=1)}
QUICK_VIT_CASES = {"quick-vit-32": dict(timm="vit_tiny_patch16_224", vit=dict(embed_dim=32, depth=2, num_heads=2),
                                        img_size=32, batch=1)}
# one block: width D, heads, tokens, batch, MLP ratio 4
BLOCK = dict(embed_dim=192, num_heads=3, tokens=197, batch=8)
QUICK_BLOCK = dict(embed_dim=32, num_heads=2, tokens=17, batch=2)


def _vit_kwargs(case):
    return dict(case["vit"], img_size=(case["img_size"], case["img_size"]))


def _timm_vit(case):
    import timm

    kw = dict(case["vit"], img_size=case["img_size"])
    return timm.create_model(case["timm"], pretrained=False, num_classes=0, **kw).eval()  # no head: forward_features


def _block_spec(block):
    from minideeplab.specs.vit import ViT

    return ViT(embed_dim=block["embed_dim"], depth=1, num_heads=block["num_heads"])


def _block_params(block, rng):
    """The block's parameters (timm's names under ``blocks.0``), seeded, at the scales a trained ViT has."""
    from minideeplab.scratch.vit import parameter_shapes

    shapes, _ = parameter_shapes(_block_spec(block))
    params = {}
    for name, shape in shapes.items():
        if not name.startswith("blocks.0."):
            continue
        if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".weight"):
            v = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            v = 0.1 * rng.standard_normal(shape)
        params[name] = v.astype(np.float32)
    return params


# ---------------------------------------------------------------------------------------------
# one side, in its own process


def _scratch_side(row, case, files, repeat):
    from minideeplab.scratch import vit
    from minideeplab.specs.vit import ViT

    with np.load(files["weights"]) as f:
        params = {k: f[k] for k in f.files}
    if row == "vit":
        x = np.load(files["x"])
        model = vit.ViTModel(ViT(**_vit_kwargs(case)), params)
        outputs = {"tokens": model(x)}
        return outputs, call_seconds(lambda: model(x), repeat)
    x, dy = np.load(files["x"]), np.load(files["dy"])
    heads = case["num_heads"]
    y, cache = vit.block_forward(x, params, "blocks.0", heads)
    if row == "block-forward":
        return {"y": y}, call_seconds(lambda: vit.block_forward(x, params, "blocks.0", heads), repeat)
    dx, grads = vit.step_backward(dy, cache)
    outputs = {"dx": dx} | {f"d{k}": v for k, v in grads.items()}
    return outputs, call_seconds(lambda: vit.step_backward(dy, cache), repeat)


def _torch_side(row, case, files, repeat):
    import torch

    with np.load(files["weights"]) as f:
        state = {k: torch.from_numpy(f[k]) for k in f.files}
    if row == "vit":
        module = _timm_vit(case)
        module.load_state_dict(state, strict=True)
        x = torch.from_numpy(np.load(files["x"]))

        def forward():
            with torch.inference_mode():
                return module.forward_features(x)

        return {"tokens": forward().numpy()}, call_seconds(forward, repeat)
    from minideeplab.reference.vit import Block

    block = Block(_block_spec(case))
    block.load_state_dict({k[len("blocks.0."):]: v for k, v in state.items()}, strict=True)
    x = torch.from_numpy(np.load(files["x"])).requires_grad_(True)
    dy = torch.from_numpy(np.load(files["dy"]))
    names = [n for n, _ in block.named_parameters()]
    tensors = [x] + [p for _, p in block.named_parameters()]
    y = block(x)
    if row == "block-forward":
        return {"y": y.detach().numpy()}, call_seconds(lambda: block(x), repeat)
    grads = torch.autograd.grad(y, tensors, dy, retain_graph=True)
    outputs = {"dx": grads[0].numpy()} | {f"dblocks.0.{n}": g.numpy() for n, g in zip(names, grads[1:])}
    return outputs, call_seconds(lambda: torch.autograd.grad(y, tensors, dy, retain_graph=True), repeat)


def run_side(side, jobs, threads, repeat):
    """Each job {name, row, case, files, output}: load, warm up, time; save the outputs (.npz). Checks nothing.
    -> {name: the seconds of each timed call}."""
    import numba
    from threadpoolctl import threadpool_limits

    from minideeplab.scratch import runtime

    runtime.keep_freed_memory()  # both sides with the same allocator (OMP_WAIT_POLICY: set by _child, before imports)

    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    times = {}
    with threadpool_limits(limits=threads):
        if side == "torch":
            import torch

            torch.set_num_threads(threads)
        for job in jobs:
            files = {k: Path(v) for k, v in job["files"].items()}
            outputs, times[job["name"]] = (_torch_side if side == "torch" else _scratch_side)(
                job["row"], job["case"], files, repeat)
            np.savez(job["output"], **outputs)
    return times


# ---------------------------------------------------------------------------------------------
# the parent


def _child(side, jobs, threads, repeat):
    """One process of one side running every row (so --quick starts two processes, not six)."""
    env = child_env(threads)
    cmd = [sys.executable, "-m", "minideeplab.bench.attention", "--side", side, "--jobs", json.dumps(jobs),
           "--threads", str(threads), "--repeat", str(repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"bench attention: the {side} side failed (exit {res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rel_err(scratch_path, torch_path):
    """max over the arrays of max|s - t| / max|t| (inf where shapes or names differ, or t is 0 or not finite)."""
    with np.load(scratch_path) as s, np.load(torch_path) as t:
        if set(s.files) != set(t.files):
            return float("inf")
        worst = 0.0
        for k in t.files:
            a, b = s[k], t[k]
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            if a.shape != b.shape or not 0 < scale < float("inf"):
                return float("inf")
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
        return worst


def _inputs(tmp, quick):
    """Write each row's weights and inputs; -> {row name: (kind, case, files, description)}."""
    import torch

    from minideeplab.interop import from_timm, timm_vit_spec
    from minideeplab.specs.vit import ViT

    rows = {}
    for name, case in (QUICK_VIT_CASES if quick else VIT_CASES).items():
        torch.manual_seed(0)
        module = _timm_vit(case)
        if timm_vit_spec(module) != ViT(**_vit_kwargs(case)):
            raise ValueError(f"bench attention: timm's {case['timm']} with {case['vit']} is not the ViT "
                             f"{_vit_kwargs(case)}")
        model = from_timm(module)
        files = {"weights": tmp / f"{name}.npz", "x": tmp / f"{name}-x.npy"}
        np.savez(files["weights"], **model.params)
        s = case["img_size"]
        np.save(files["x"], np.random.default_rng(0).standard_normal((case["batch"], 3, s, s), dtype=np.float32))
        d = case["vit"]
        rows[name] = ("vit", case, files, f"ViT D={d['embed_dim']} depth {d['depth']} heads {d['num_heads']}, "
                                          f"{case['batch']}x3x{s}x{s}, eval forward")
    block = QUICK_BLOCK if quick else BLOCK
    rng = np.random.default_rng(1)
    files = {"weights": tmp / "block.npz", "x": tmp / "block-x.npy", "dy": tmp / "block-dy.npy"}
    np.savez(files["weights"], **_block_params(block, rng))
    shape = (block["batch"], block["tokens"], block["embed_dim"])
    np.save(files["x"], rng.standard_normal(shape, dtype=np.float32))
    np.save(files["dy"], rng.standard_normal(shape, dtype=np.float32))
    what = f"block D={block['embed_dim']} heads {block['num_heads']}, {'x'.join(map(str, shape))}"
    prefix = "quick-" if quick else ""
    rows[f"{prefix}block-forward"] = ("block-forward", block, files, what + ", forward (training: caches / graph)")
    rows[f"{prefix}block-backward"] = ("block-backward", block, files, what + ", backward (dx and 12 weight grads)")
    return rows


def run(threads=2, repeat=7, as_json=False, quick=False, rounds=None) -> int:
    import numba

    if threads < 1 or repeat < 1:
        raise ValueError(f"bench attention: threads and repeat must be >= 1, got threads={threads}, repeat={repeat}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    repeat, rounds = (1, 1) if quick else (repeat, rounds or ROUNDS)
    report_rows = {}
    with tempfile.TemporaryDirectory(prefix="minideeplab-bench-attention-") as tmp:
        tmp = Path(tmp)
        rows = _inputs(tmp, quick)
        times = {name: {"scratch": [], "torch": []} for name in rows}
        for _ in range(rounds):
            for side in ("scratch", "torch"):
                jobs = [dict(name=name, row=row, case=case, files={k: str(v) for k, v in files.items()},
                             output=str(tmp / f"{name}-{side}.npz")) for name, (row, case, files, _) in rows.items()]
                for name, t in _child(side, jobs, threads, repeat).items():
                    times[name][side] += t
        for name, (row, case, files, what) in rows.items():
            times_ = times[name]
            err = _rel_err(tmp / f"{name}-scratch.npz", tmp / f"{name}-torch.npz")
            s, t = float(np.median(times_["scratch"])), float(np.median(times_["torch"]))
            report_rows[name] = dict(what=what, scratch_s=s, torch_s=t, ratio=s / t,
                                     scratch_spread_s=[min(times_["scratch"]), max(times_["scratch"])],
                                     torch_spread_s=[min(times_["torch"]), max(times_["torch"])],
                                     max_rel_err=err if np.isfinite(err) else None)
    wrong = [n for n, r in report_rows.items() if r["max_rel_err"] is None or r["max_rel_err"] > MAX_REL_ERR]
    summary = dict(ratio=max(r["ratio"] for r in report_rows.values()),
                   within_target=all(r["ratio"] <= TARGET_RATIO for r in report_rows.values()))
    if as_json:
        print(json.dumps(dict(threads=threads, repeat=repeat, rounds=rounds, quick=quick, dtype="float32",
                              agree=not wrong, max_rel_err_allowed=MAX_REL_ERR, target_ratio=TARGET_RATIO,
                              **summary, rows=report_rows), allow_nan=False))
        return 1 if wrong else 0
    print(f"vision transformer, float32; {threads} threads for torch, numba and BLAS, each side in its own process; "
          f"median of {rounds} x {repeat} calls a side, sides alternating; ratio = scratch / torch (target <= "
          f"{TARGET_RATIO})")
    head = f"{'row':<22}{'scratch':>10}{'torch':>10}{'ratio':>7}{'rel err':>9}  what"
    print(head)
    print("-" * (len(head) + 40))
    for name, r in report_rows.items():
        err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
        print(f"{name:<22}{1e3 * r['scratch_s']:>8.2f}ms{1e3 * r['torch_s']:>8.2f}ms{r['ratio']:>7.2f}{err:>9}  "
              f"{r['what']}")
    if wrong:
        print(f"WRONG: scratch and torch differ by more than {MAX_REL_ERR:g} (relative) on: {', '.join(wrong)}")
    print(f"worst ratio scratch/torch: {summary['ratio']:.2f}"
          + ("" if summary["within_target"] else f" (above the {TARGET_RATIO} target)"))
    return 1 if wrong else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minideeplab.bench.attention",
                                description="One side of `minideeplab bench attention`, run by it in a subprocess: "
                                            "times every row and prints one JSON line.")
    p.add_argument("--side", choices=("scratch", "torch"), required=True)
    p.add_argument("--jobs", required=True, help="JSON list of {name, row, case, files, output} written by the parent")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeat", type=int, required=True)
    a = p.parse_args(argv)
    print(json.dumps(run_side(a.side, json.loads(a.jobs), a.threads, a.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
