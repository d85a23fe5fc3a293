"""Benchmark: the scratch dense CRF (numba permutohedral lattice) against pydensecrf2 (C++) in the same run.

The input is what DeepLab post-processes: a PASCAL-sized photograph (375x500) with 21-label probabilities
that look like a network's at output stride 8. Both sides get the same probabilities, image and
parameters, are checked to agree (argmax agreement, max |dQ|) and are timed whole: lattice construction,
unaries and 10 mean-field iterations, median of ``repeat`` runs after a warm-up. pydensecrf is
single-threaded; the scratch lattice uses ``threads`` numba threads.

``--backward`` times the CRF as a layer instead: ``mean_field`` (float32, 5 iterations, lattice construction
included) against ``mean_field_backward`` on the same input (no other library has this backward to compare
with); the ratio is backward / forward, and the float32 gradient is checked against the float64 one.

``--window`` times the local-window CRF (``method="window"``, ConvCRF's message) for windows of 5, 7 and 11
against the lattice on 128x128 and 513x513 photographs (DeepLab v2's parameters, 21 labels, 10 iterations),
with the share of pixels whose label agrees with the full CRF's (the lattice).

``--backward --window`` runs both; its JSON holds both reports (``"backward"``, ``"window"``). The committed run,
data/bench/crf.json, is what notebook 12 reads (``read_report``, ``format_costs``): the cost of the CRF as
post-processing, as a layer in training and as a ConvCRF.
"""

from __future__ import annotations

import json

import numpy as np

from pathlib import Path

from minideeplab.bench.atrous import median_seconds
from minideeplab.scratch.crf import PARALLEL_MIN_PIXELS, PARAMETER_SETS, PROB_FLOOR

BENCH_SETS = ("deeplab-v2-resnet", "pydensecrf-readme")
MIN_AGREEMENT, MAX_DQ = 0.999, 1e-3  # below / above this a row is wrong, not slow or fast


def pydensecrf_crf(probs, image, n_iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, normalization="symmetric",
                   compat=None):
    """The same CRF through pydensecrf2: unary -log(max(p, 1e-5)), diagonal kernels, the same normalisation
    ("symmetric" is pydensecrf's default, "after" its NORMALIZE_AFTER); Potts, or with a (symmetric) penalty
    matrix `compat` handed to pydensecrf as w * compat per kernel."""
    import pydensecrf.densecrf as dcrf

    C, H, W = probs.shape
    norm = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}[normalization]
    d = dcrf.DenseCRF2D(W, H, C)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs.reshape(C, -1), PROB_FLOOR)), dtype=np.float32))
    def weight(w):
        return w if compat is None else np.ascontiguousarray(w * np.asarray(compat), dtype=np.float32)

    d.addPairwiseGaussian(sxy=pos_xy_std, compat=weight(pos_w), kernel=dcrf.DIAG_KERNEL, normalization=norm)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=weight(bi_w),
                           kernel=dcrf.DIAG_KERNEL, normalization=norm)
    return np.asarray(d.inference(n_iters), dtype=np.float32).reshape(C, H, W)


WINDOWS = (5, 7, 11)


def run(threads=2, repeat=5, as_json=False, quick=False, backward=False, window=False) -> int:
    import numba

    if threads < 1 or repeat < 1:
        raise ValueError(f"bench crf: threads and repeat must be >= 1, got threads={threads}, repeat={repeat}")
    try:
        if not (backward or window):
            import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        print("bench crf needs pydensecrf2 (pip install pydensecrf2, or the locked install: make test)")
        return 2
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    size, n_labels, n_iters = ((60, 80), 21, 10) if quick else ((375, 500), 21, 10)
    if size[0] * size[1] < PARALLEL_MIN_PIXELS:
        threads = 1  # what dense_crf uses on an image this small, whatever it is given
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        if not (backward or window):
            return _run(threads, repeat, as_json, quick, size, n_labels, n_iters)
        reports = {}
        if backward:
            reports["backward"] = _measure_backward(threads, repeat, quick, size, n_labels, n_iters=5)
        if window:
            reports["window"] = _measure_window(repeat, quick, n_labels, threads)
    finally:
        numba.set_num_threads(saved)
    if as_json:  # one part: its object; both: {"threads", "repeat", "quick", "backward": ..., "window": ...}
        print(json.dumps(next(iter(reports.values())) if len(reports) == 1 else
                         dict(threads=threads, repeat=1 if quick else repeat, quick=quick, **reports)))
    else:
        for name, report in reports.items():
            {"backward": _print_backward, "window": _print_window}[name](report)
    return 1 if reports.get("backward", {}).get("agree") is False else 0


def _run(threads, repeat, as_json, quick, size, n_labels, n_iters):
    from minideeplab.data.photos import coarse_probs, photograph, region_labels
    from minideeplab.scratch.crf import dense_crf

    repeat = 1 if quick else repeat
    image = photograph("coffee", size)
    probs = coarse_probs(region_labels(image, n_labels), n_labels, stride=8, seed=0)
    sets = {}
    for name in BENCH_SETS:
        params = PARAMETER_SETS[name]
        q_s = dense_crf(probs, image, n_iters=n_iters, **params)
        q_p = pydensecrf_crf(probs, image, n_iters, **params)
        t_s = median_seconds(lambda: dense_crf(probs, image, n_iters=n_iters, **params), repeat)
        t_p = median_seconds(lambda: pydensecrf_crf(probs, image, n_iters, **params), repeat)
        sets[name] = dict(params=params, scratch_s=t_s, pydensecrf_s=t_p, ratio=t_s / t_p,
                          argmax_agreement=float(np.mean(q_s.argmax(0) == q_p.argmax(0))),
                          max_abs_dq=float(np.abs(q_s - q_p).max()),
                          crf_changed=float(np.mean(q_p.argmax(0) != probs.argmax(0))))
    wrong = [n for n, r in sets.items() if r["argmax_agreement"] < MIN_AGREEMENT or r["max_abs_dq"] > MAX_DQ]
    summary = dict(ratio=max(r["ratio"] for r in sets.values()),
                   argmax_agreement=min(r["argmax_agreement"] for r in sets.values()),
                   max_abs_dq=max(r["max_abs_dq"] for r in sets.values()))
    if as_json:
        print(json.dumps(dict(threads=threads, pydensecrf_threads=1, repeat=repeat, quick=quick,
                              image=f"coffee {size[0]}x{size[1]}", labels=n_labels, n_iters=n_iters,
                              agree=not wrong, **summary, sets=sets)))
        return 1 if wrong else 0
    print(f"dense CRF, {size[1]}x{size[0]} photograph, {n_labels} labels, {n_iters} iterations; scratch lattice on "
          f"{threads} numba threads, pydensecrf2 single-threaded; median of {repeat}; ratio = scratch / pydensecrf")
    head = f"{'parameters':<20}{'scratch':>10}{'pydensecrf':>12}{'ratio':>7}{'argmax agree':>14}{'max |dQ|':>10}"
    print(head)
    print("-" * len(head))
    for name, r in sets.items():
        print(f"{name:<20}{r['scratch_s']:>9.3f}s{r['pydensecrf_s']:>11.3f}s{r['ratio']:>7.2f}"
              f"{100 * r['argmax_agreement']:>13.3f}%{r['max_abs_dq']:>10.1e}")
    if wrong:
        print(f"WRONG: below {100 * MIN_AGREEMENT}% argmax agreement or above {MAX_DQ:g} max |dQ| on: {', '.join(wrong)}")
    return 1 if wrong else 0


def _measure_backward(threads, repeat, quick, size, n_labels, n_iters):
    from minideeplab.data.photos import coarse_probs, photograph, region_labels
    from minideeplab.scratch.crf import mean_field, mean_field_backward

    repeat = 1 if quick else repeat
    image = photograph("coffee", size)
    probs = coarse_probs(region_labels(image, n_labels), n_labels, stride=8, seed=0)
    logits = np.log(np.maximum(probs.astype(np.float64), PROB_FLOOR))
    dQ = np.random.default_rng(0).standard_normal(logits.shape)
    sets = {}
    for name in BENCH_SETS:
        params = dict(PARAMETER_SETS[name], n_iters=n_iters)
        exact = mean_field_backward(dQ, mean_field(logits, image, **params)[1])  # float64
        x, d = logits.astype(np.float32), dQ.astype(np.float32)
        cache = mean_field(x, image, **params)[1]
        grads = mean_field_backward(d, cache)
        t_f = median_seconds(lambda: mean_field(x, image, **params), repeat)
        t_b = median_seconds(lambda: mean_field_backward(d, cache), repeat)
        err = float(np.abs(grads["logits"] - exact["logits"]).max() / np.abs(exact["logits"]).max())
        w_err = max(abs(grads[k] - exact[k]) / max(abs(exact[k]), 1e-12) for k in ("pos_w", "bi_w"))
        sets[name] = dict(params=params, forward_s=t_f, backward_s=t_b, ratio=t_b / t_f,
                          logits_grad_rel_err=err, weight_grad_rel_err=float(w_err))
    wrong = [n for n, r in sets.items() if r["logits_grad_rel_err"] > 1e-3 or r["weight_grad_rel_err"] > 1e-3]
    return dict(threads=threads, repeat=repeat, quick=quick, image=f"coffee {size[0]}x{size[1]}", labels=n_labels,
                n_iters=n_iters, agree=not wrong, ratio=max(r["ratio"] for r in sets.values()), sets=sets)


def _print_backward(report):
    sets, size = report["sets"], report["image"].split()[1].split("x")
    print(f"the CRF as a layer, {size[1]}x{size[0]} photograph, {report['labels']} labels, {report['n_iters']} "
          f"iterations, float32, {report['threads']} numba threads; median of {report['repeat']}; ratio = backward / "
          f"forward (lattice construction in the forward); gradient error: float32 against float64, relative to the "
          f"largest")
    head = f"{'parameters':<20}{'forward':>10}{'backward':>10}{'ratio':>7}{'dlogits err':>13}{'dw err':>9}"
    print(head)
    print("-" * len(head))
    for name, r in sets.items():
        print(f"{name:<20}{r['forward_s']:>9.3f}s{r['backward_s']:>9.3f}s{r['ratio']:>7.2f}"
              f"{r['logits_grad_rel_err']:>13.1e}{r['weight_grad_rel_err']:>9.1e}")
    if not report["agree"]:
        wrong = [n for n, r in sets.items() if r["logits_grad_rel_err"] > 1e-3 or r["weight_grad_rel_err"] > 1e-3]
        print(f"WRONG: the float32 gradients differ from the float64 ones by more than 1e-3 on: {', '.join(wrong)}")


def _measure_window(repeat, quick, n_labels, threads):
    from minideeplab.data.photos import coarse_probs, photograph, region_labels
    from minideeplab.scratch.crf import dense_crf

    repeat = 1 if quick else repeat
    params = dict(PARAMETER_SETS["deeplab-v2-resnet"], n_iters=10)
    rows = []
    for side in ((48,) if quick else (128, 513)):
        image = photograph("coffee", (side, side))
        probs = coarse_probs(region_labels(image, n_labels), n_labels, stride=8, seed=0)
        full = dense_crf(probs, image, **params).argmax(0)
        t_lattice = median_seconds(lambda: dense_crf(probs, image, **params), repeat)
        for k in WINDOWS:
            labels = dense_crf(probs, image, method="window", window=k, **params).argmax(0)
            t = median_seconds(lambda: dense_crf(probs, image, method="window", window=k, **params), repeat)
            rows.append(dict(size=side, window=k, window_s=t, lattice_s=t_lattice, ratio=t / t_lattice,
                             agreement=float(np.mean(labels == full)),
                             changed_by_full=float(np.mean(full != probs.argmax(0)))))
    return dict(threads=threads, repeat=repeat, quick=quick, labels=n_labels, params=params, rows=rows)


def _print_window(report):
    rows = report["rows"]
    print(f"the local-window CRF against the lattice (the full CRF), coffee photograph, {report['labels']} labels, "
          f"10 iterations, DeepLab v2's parameters, {report['threads']} numba threads; median of {report['repeat']}; "
          f"ratio = window / lattice; agreement = pixels labelled as the full CRF labels them")
    head = f"{'size':>8}{'window':>8}{'time':>10}{'lattice':>10}{'ratio':>8}{'agreement':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:>4}^2  {r['window']:>6}{r['window_s']:>9.3f}s{r['lattice_s']:>9.3f}s{r['ratio']:>8.2f}"
              f"{100 * r['agreement']:>10.2f}%")


def read_report(path) -> dict:
    """The JSON of ``minideeplab bench crf --backward --window --json`` (both parts) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_report: {path} does not exist (write it with 'minideeplab bench crf "
                                "--backward --window --json > data/bench/crf.json')")
    report = json.loads(path.read_text())
    missing = [k for k in ("backward", "window") if k not in report]
    if missing:
        raise ValueError(f"read_report: {path} has no {missing[0]!r} part: it is not the output of "
                         "'bench crf --backward --window --json'")
    return report


def format_costs(report) -> str:
    """The three ways to run a CRF, from ``read_report``'s dict, as aligned text: post-processing (dense_crf,
    10 iterations), the layer in training (mean_field's forward and backward, 5 iterations) and the ConvCRF
    (windows 5, 7, 11, 10 iterations, with its label agreement with the full CRF); seconds per image."""
    back, win = report["backward"], report["window"]
    lines = [f"seconds per image, {win['labels']} labels, {report['threads']} numba threads, median of "
             f"{report['repeat']}", ""]
    sizes = sorted({r["size"] for r in win["rows"]})
    lattice = {r["size"]: r["lattice_s"] for r in win["rows"]}
    lines.append("post-processing, dense_crf (lattice), 10 iterations: " +
                 ", ".join(f"{lattice[s]:.3f} s at {s}x{s}" for s in sizes))
    size = back["image"].split()[-1]
    for name, r in back["sets"].items():
        lines.append(f"the layer ({name}), mean_field at {size}, {back['n_iters']} iterations, float32: forward "
                     f"{r['forward_s']:.3f} s, backward {r['backward_s']:.3f} s (backward / forward {r['ratio']:.2f})")
    lines += ["", "ConvCRF (method='window'), 10 iterations, against the lattice:",
              f"{'size':>9}{'window':>8}{'time':>10}{'x lattice':>11}{'same label as full CRF':>24}"]
    for r in win["rows"]:
        lines.append(f"{r['size']:>4}x{r['size']:<4}{r['window']:>8}{r['window_s']:>9.3f}s{r['ratio']:>11.2f}"
                     f"{100 * r['agreement']:>23.2f}%")
    return "\n".join(lines)
