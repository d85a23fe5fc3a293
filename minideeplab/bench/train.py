"""Benchmark: a DeepLab training step in NumPy (``minideeplab.training.numpy_backend``) against PyTorch's, same
weights, same batch, same thread count.

Case (float32, training mode: batch statistics, dropout; 7 classes, the synthetic set's):

    v3plus-mini-128-b8     the mini DeepLab v3+ (``minideeplab train``'s default model) on a batch of 8 128x128
                           crops, the torch trainer's defaults (lr 0.01, momentum 0.9, weight decay 1e-4)

    v3plus-mini-crf5-128-b8  ``--crf``: the same with the CRF layer (``build_model(..., crf={"n_iters": 5})``,
                           the lattice), on 8 images of data/synthetic's train split (the lattice's size, hence its
                           time, depends on the colours: noise would fill it), beside the plain case in the same run

``--quick``: the same model on a batch of 2 64x64 crops, one repeat (with ``--crf``: and with the CRF layer).

A step is forward + softmax cross-entropy (ignore 255), backward, SGD update; each phase is timed apart.
The data pipeline, which both trainers share, is not timed. Each side runs in its own subprocess
(``python -m minideeplab.bench.train --side numpy|torch ...``), as in ``bench model``: the parent writes the
initial weights (the torch trainer's for seed 0) and a seeded batch; each child sets the same thread count for
torch, numba and the BLAS, runs one checked step (also the warm-up: numba compiles), then times ``repeat``
steps (medians). The NumPy side's first step draws its dropout masks, the torch side replays them, so the
first losses must agree (float32: within ``MAX_REL_ERR``; above it the row is WRONG).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minideeplab.bench.atrous import child_env

MAX_REL_ERR = 1e-4  # |loss_numpy - loss_torch| / loss_torch of the first step, float32
CLASSES = 7         # data/synthetic's
CASES = {"v3plus-mini-128-b8": dict(model="v3plus", backbone="mini", crop_size=128, batch_size=8)}
QUICK_CASES = {"quick-v3plus-mini-64-b2": dict(model="v3plus", backbone="mini", crop_size=64, batch_size=2)}
CRF_OPTIONS = {"crf": {"n_iters": 5}}
CRF_CASES = {"v3plus-mini-crf5-128-b8": dict(CASES["v3plus-mini-128-b8"], model_options=CRF_OPTIONS)}
QUICK_CRF_CASES = {"quick-v3plus-mini-crf5-64-b2": dict(QUICK_CASES["quick-v3plus-mini-64-b2"],
                                                        model_options=CRF_OPTIONS)}
ALL_CASES = {**CASES, **QUICK_CASES, **CRF_CASES, **QUICK_CRF_CASES}
DATA = Path(__file__).resolve().parents[2] / "data" / "synthetic"  # the CRF cases' images


def _twin(case):
    """The torch trainer's model for the case (weights overwritten from the parent's file)."""
    from minideeplab.train import TrainConfig, build

    return build(TrainConfig(**ALL_CASES[case]), CLASSES)


def _write_inputs(case, weights, batch):
    import torch

    torch.manual_seed(0)
    np.savez(weights, **{k: v.numpy() for k, v in _twin(case).state_dict().items()})
    n, c = ALL_CASES[case]["batch_size"], ALL_CASES[case]["crop_size"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, (n, c, c))
    y[rng.random((n, c, c)) < 0.1] = 255  # some ignored pixels, as at the crops' padding and object borders
    x = rng.standard_normal((n, 3, c, c), dtype=np.float32)
    if "crf" in ALL_CASES[case].get("model_options", {}):  # real colours: the CRF's lattice depends on them
        from minideeplab.data.transforms import resize
        from minideeplab.training.data import open_split, to_tensor

        train = open_split(DATA, "train")
        x = np.stack([to_tensor(resize(*train[i], (c, c))[0]).numpy() for i in range(n)])
    np.savez(batch, x=x, y=y)


# ---------------------------------------------------------------------------------------------
# one side, in its own process


def run_side(side, case, threads, repeat, weights, batch, masks_path):
    """The first step (checked, and the warm-up), then ``repeat`` timed steps -> a report (dict)."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        twin = _twin(case)
        with np.load(weights) as w, np.load(batch) as b:
            twin.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
            x, y = b["x"], b["y"]
        step = _numpy_step(twin, x, y, masks_path) if side == "numpy" else _torch_step(twin, x, y, masks_path)
        first = step()[0]
        time.sleep(0.3)  # let the BLAS's and OpenMP's spinning threads go idle (see bench.atrous.median_seconds)
        phases = np.array([step()[1] for _ in range(repeat)])
    fwd, bwd, upd = np.median(phases, axis=0)
    return dict(side=side, case=case, threads=threads, repeat=repeat, first_loss=first, forward_s=fwd,
                backward_s=bwd, update_s=upd, step_s=float(np.median(phases.sum(1))))


def _numpy_step(twin, x, y, masks_path):
    """A step of the scratch model: () -> (loss, (forward + loss, backward, update) seconds). Its first call
    draws the dropout masks from the NumPy trainer's first iteration's generator and saves them."""
    from minideeplab.reference.deeplab import to_scratch
    from minideeplab.scratch.optim import sgd_step
    from minideeplab.scratch.layers import softmax_cross_entropy

    model = to_scratch(twin, np.random.default_rng([0, 3, 0])).train()
    state, saved = {}, []

    def step():
        t0 = time.perf_counter()
        logits, cache = model.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y, 255)
        t1 = time.perf_counter()
        grads = model.backward(dlogits, cache)
        t2 = time.perf_counter()
        sgd_step(model.params, grads, 0.01, 0.9, 1e-4, state)
        t3 = time.perf_counter()
        if not saved:
            np.savez(masks_path, **cache.masks)
            saved.append(masks_path)
        return float(loss), (t1 - t0, t2 - t1, t3 - t2)

    return step


def _torch_step(twin, x, y, masks_path):
    """The torch twin's step; its first call replays the NumPy side's dropout masks, later ones draw their own."""
    import torch
    import torch.nn.functional as F

    from minideeplab.reference.aspp import set_dropout_masks

    with np.load(masks_path) as m:
        set_dropout_masks(twin, {k: m[k] for k in m.files})
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        t0 = time.perf_counter()
        loss = F.cross_entropy(twin(xt)["out"], yt, ignore_index=255)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        set_dropout_masks(twin, {})
        return loss.item(), (t1 - t0, t2 - t1, t3 - t2)

    return step


# ---------------------------------------------------------------------------------------------
# the parent


def _child(side, case, threads, repeat, weights, batch, masks_path):
    env = child_env(threads)
    cmd = [sys.executable, "-m", "minideeplab.bench.train", "--side", side, "--case", case, "--threads", str(threads),
           "--repeat", str(repeat), "--weights", str(weights), "--batch", str(batch), "--masks", str(masks_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"bench train: the {side} side of {case} failed (exit {res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(threads=2, repeat=5, as_json=False, quick=False, crf=False) -> int:
    import numba

    if threads < 1 or repeat < 1:
        raise ValueError(f"bench train: threads and repeat must be >= 1, got threads={threads}, repeat={repeat}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    cases, repeat = (QUICK_CASES, 1) if quick else (CASES, repeat)
    if crf:
        cases = {**cases, **(QUICK_CRF_CASES if quick else CRF_CASES)}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="minideeplab-bench-train-") as tmp:
        for name, case in cases.items():
            weights, batch, masks = (Path(tmp) / f"{name}-{what}.npz" for what in ("weights", "batch", "masks"))
            _write_inputs(name, weights, batch)
            rep = {side: _child(side, name, threads, repeat, weights, batch, masks) for side in ("numpy", "torch")}
            n, t = rep["numpy"], rep["torch"]
            err = abs(n["first_loss"] - t["first_loss"]) / abs(t["first_loss"])
            rows[name] = dict(input=f"{case['batch_size']}x3x{case['crop_size']}x{case['crop_size']}",
                              numpy_img_s=case["batch_size"] / n["step_s"],
                              torch_img_s=case["batch_size"] / t["step_s"],
                              ratio=n["step_s"] / t["step_s"], first_loss_rel_err=err,
                              **{f"{side}_{k}": rep[side][k] for side in rep
                                 for k in ("step_s", "forward_s", "backward_s", "update_s")})
    wrong = [k for k, r in rows.items() if not r["first_loss_rel_err"] <= MAX_REL_ERR]
    ratio = max(r["ratio"] for r in rows.values())
    if as_json:
        print(json.dumps(dict(threads=threads, repeat=repeat, quick=quick, dtype="float32", agree=not wrong,
                              max_rel_err_allowed=MAX_REL_ERR, ratio=ratio, cases=rows)))
        return 1 if wrong else 0
    print(f"DeepLab training step (forward + loss, backward, SGD update), float32; {threads} threads for torch, "
          f"numba and BLAS, each side in its own process; median of {repeat}; ratio = numpy / torch time (lower "
          f"is better)")
    head = (f"{'case':<28}{'input':>11} | {'numpy':>7}{'torch':>7} | {'ratio':>5} | {'forward':>13} "
            f"{'backward':>13} {'update':>13} | {'loss err':>8}")
    print(f"{'':<39} | {'img/s':^14} | {'':>5} | {'seconds, numpy/torch':^41} |")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        phases = " ".join(f"{r[f'numpy_{p}_s']:>6.3f}/{r[f'torch_{p}_s']:<6.3f}"
                          for p in ("forward", "backward", "update"))
        print(f"{name:<28}{r['input']:>11} | {r['numpy_img_s']:>7.1f}{r['torch_img_s']:>7.1f} | {r['ratio']:>5.2f} | "
              f"{phases} | {r['first_loss_rel_err']:>8.1e}")
    if wrong:
        print(f"WRONG: the first losses differ by more than {MAX_REL_ERR:g} (relative) on: {', '.join(wrong)}")
    print(f"worst ratio numpy/torch: {ratio:.2f}")
    return 1 if wrong else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minideeplab.bench.train",
                                description="One side of `minideeplab bench train`, run by it in a subprocess: "
                                            "times training steps and prints one JSON line.")
    p.add_argument("--side", choices=("numpy", "torch"), required=True)
    p.add_argument("--case", choices=sorted(ALL_CASES), required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--weights", required=True, help=".npz written by the parent: the initial state_dict")
    p.add_argument("--batch", required=True, help=".npz written by the parent: x (N, 3, H, W), y (N, H, W)")
    p.add_argument("--masks", required=True, help=".npz of the first step's dropout masks (numpy writes, torch reads)")
    a = p.parse_args(argv)
    print(json.dumps(run_side(a.side, a.case, a.threads, a.repeat, a.weights, a.batch, a.masks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
