"""What notebook 10 shows of the backbones' cost: a committed ``minideeplab bench model --json`` run read back
(``read_model_json``, ``format_model_table``), and timings small enough to repeat in a notebook, scratch against
torch in the same process and thread count: a full conv against its depthwise-separable replacement
(``time_separable``) and one forward pass of a model (``time_model``); and the parameters and multiply-adds of a
model counted from its twin's shapes (``model_costs``), quickly (``meta_modules``).

``read_model_json`` takes the document as ``bench model --json`` writes it: the run's settings (``threads``,
``repeat``, ``quick``, ``dtype``, ``batch``, ...) and ``cases``, one row per case name with ``model``, ``input``
("1x3xHxW"), ``scratch_s``, ``torch_s``, ``ratio``, ``scratch_extra_mb``, ``torch_extra_mb``, ``max_rel_err``
and, in runs that count them, the parameters (``params``) and multiply-adds (``mult_adds``; ``gmacs`` in
billions is read too). A field a run did not write is None in the rows; fields it wrote beyond these are kept.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["MODEL_JSON_COMMAND", "read_model_json", "format_model_table", "meta_modules", "model_costs", "time_model",
           "time_separable"]

MODEL_JSON_COMMAND = "minideeplab bench model --json --threads 2 > data/bench/model.json"

_NUMBERS = ("scratch_s", "torch_s", "ratio", "scratch_extra_mb", "torch_extra_mb", "memory_ratio", "max_rel_err")
_PARAMS = ("params", "parameters", "num_params", "n_params")   # first present wins
_MACS = (("mult_adds", 1), ("macs", 1), ("gmacs", 1e9), ("gmult_adds", 1e9))


def _error(path, msg):
    return ValueError(f"read_model_json: {path}: {msg}")


def _number(path, name, field, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _error(path, f"case {name!r}: {field} must be a number or null, got {v!r}")
    return v


def _size(path, name, text):
    """"1x3x512x512" -> (512, 512)."""
    parts = str(text).split("x")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise _error(path, f"case {name!r}: input must read 'NxCxHxW', got {text!r}")
    return int(parts[2]), int(parts[3])


def read_model_json(path) -> dict:
    """``bench model --json``'s document -> {"settings": the run's top-level fields but ``cases``, "rows": one
    dict per case, in the file's order: ``name``, ``model``, ``kind``, ``size`` (H, W), ``params`` (int or
    None), ``mult_adds`` (int or None), the timings and memory (``scratch_s``, ``torch_s``, ``ratio``,
    ``scratch_extra_mb``, ``torch_extra_mb``, ``memory_ratio``, ``max_rel_err``; None where absent), and any
    other field of the case as written}.

    FileNotFoundError naming the file and the command that makes it; ValueError naming the file and the field
    when the document is not such a run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_model_json: {path} does not exist; make it with `{MODEL_JSON_COMMAND}` "
                                "(minutes: it times every model at full size)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _error(path, f"not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), dict):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise _error(path, f"expected `bench model --json`'s document, an object with 'cases' (one object per "
                           f"case), got {got}")
    rows = []
    for name, case in doc["cases"].items():
        if not isinstance(case, dict):
            raise _error(path, f"case {name!r} must be an object, got {type(case).__name__}")
        row = dict(case)
        row["name"] = name
        row["model"] = case.get("model", name)
        row["kind"] = case.get("kind")
        row["size"] = _size(path, name, case["input"]) if "input" in case else None
        for field in _NUMBERS:
            row[field] = _number(path, name, field, case.get(field))
        params = next((case[k] for k in _PARAMS if case.get(k) is not None), None)
        row["params"] = None if params is None else int(_number(path, name, "params", params))
        macs = next(((case[k], scale) for k, scale in _MACS if case.get(k) is not None), None)
        row["mult_adds"] = None if macs is None else int(round(_number(path, name, "mult_adds", macs[0]) * macs[1]))
        rows.append(row)
    return {"settings": {k: v for k, v in doc.items() if k != "cases"}, "rows": rows}


def _cell(v, fmt, width):
    return f"{'-':>{width}s}" if v is None else f"{v:{width}{fmt}}"


def format_model_table(run: dict, names=None) -> str:
    """The rows of ``read_model_json`` (those in ``names``, in that order, when given) as a table: model, input,
    parameters (millions), multiply-adds (billions), scratch and torch seconds, their ratio, extra memory."""
    rows = run["rows"]
    if names is not None:
        by = {r["name"]: r for r in rows}
        rows = [by[n] for n in names if n in by]
    s = run["settings"]
    head = (f"bench model: batch {s.get('batch', '?')}, {s.get('dtype', '?')}, {s.get('threads', '?')} threads, "
            f"median of {s.get('repeat', '?')}" + (" (--quick)" if s.get("quick") else ""))
    width = max([len(r["model"]) for r in rows] + [5])
    lines = [head, f"{'model':<{width}s} {'input':>9s} {'params':>7s} {'MACs':>7s} | {'scratch':>8s} {'torch':>8s} "
                   f"{'ratio':>6s} | {'extra memory':>17s}",
             f"{'':<{width}s} {'':>9s} {'(M)':>7s} {'(G)':>7s} | {'(s)':>8s} {'(s)':>8s} {'':>6s} | "
             f"{'scratch, torch MB':>17s}"]
    for r in rows:
        size = "-" if r["size"] is None else f"{r['size'][0]}x{r['size'][1]}"
        params = None if r["params"] is None else r["params"] / 1e6
        macs = None if r["mult_adds"] is None else r["mult_adds"] / 1e9
        mem = ("-" if r["scratch_extra_mb"] is None or r["torch_extra_mb"] is None
               else f"{r['scratch_extra_mb']:.0f}, {r['torch_extra_mb']:.0f}")
        lines.append(f"{r['model']:<{width}s} {size:>9s} {_cell(params, '.1f', 7)} {_cell(macs, '.2f', 7)} | "
                     f"{_cell(r['scratch_s'], '.3f', 8)} {_cell(r['torch_s'], '.3f', 8)} "
                     f"{_cell(r['ratio'], '.2f', 6)} | "
                     f"{mem:>17s}")
    return "\n".join(lines)


def time_model(name, backbone, size=257, repeat=3, threads=1, seed=0, **options) -> dict:
    """One forward pass of ``scratch.build_model(name, backbone, **options)`` (random weights, eval, float32) and
    of its twin holding the same weights, on one seeded (1, 3, size, size) image, ``threads`` threads for torch,
    numba and the BLAS alike, timed in this process: the median of ``repeat`` after a warm-up call each.
    -> {"scratch_s", "torch_s", "ratio" (scratch / torch), "max_rel_err" (max |scratch - torch| / max |torch|),
    "model" (the config's description), "size"}. Seconds, not minutes, for MobileNetV3's models at 257x257;
    ``bench model`` is the benchmark proper (each side in its own process)."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    from minideeplab.bench.atrous import median_seconds
    from minideeplab.reference.deeplab import to_torch
    from minideeplab.scratch.deeplab import build_model

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"time_model: size must be an int >= 1, got {size!r}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"time_model: threads must be an int >= 1, got {threads!r}")
    model = build_model(name, backbone, rng=np.random.default_rng(seed), **options)
    twin = to_torch(model)
    x = np.random.default_rng(seed).standard_normal((1, 3, size, size), dtype=np.float32)
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=threads), torch.inference_mode():
            xt = torch.from_numpy(x)
            out = {"scratch": model(x), "torch": twin(xt)["out"].numpy()}
            seconds = {"scratch": median_seconds(lambda: model(x), repeat),
                       "torch": median_seconds(lambda: twin(xt), repeat)}
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    err = float(np.abs(out["scratch"] - out["torch"]).max() / max(float(np.abs(out["torch"]).max()), 1e-30))
    return {"model": model.config.describe(), "size": size, "scratch_s": seconds["scratch"],
            "torch_s": seconds["torch"], "ratio": seconds["scratch"] / seconds["torch"], "max_rel_err": err}


def time_separable(c_in, c_out, k=3, size=33, rate=1, threads=1, repeat=5, seed=0) -> dict:
    """A full k x k conv (c_in -> c_out) against a depthwise k x k (groups = c_in) then a pointwise 1x1, "same"
    padding, no bias, on one seeded (1, c_in, size, size) float32 map: the scratch convolution
    (``scratch.atrous.atrous_conv2d``) and torch's ``F.conv2d``, ``threads`` threads each, the median of ``repeat``.
    -> {"full": {...}, "separable": {...}}, each {"mult_adds" (counted from torch's modules), "scratch_s",
    "torch_s"}."""
    import numba
    import torch
    import torch.nn.functional as F
    from threadpoolctl import threadpool_limits

    from minideeplab.bench.atrous import median_seconds
    from minideeplab.bench.cost import conv_counts
    from minideeplab.scratch.atrous import atrous_conv2d

    for name, v in (("c_in", c_in), ("c_out", c_out), ("k", k), ("size", size), ("rate", rate), ("threads", threads),
                    ("repeat", repeat)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"time_separable: {name} must be an int >= 1, got {v!r}")
    if k % 2 == 0:
        raise ValueError(f"time_separable: k must be odd ('same' padding), got {k}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, c_in, size, size), dtype=np.float32)
    w = {"full": rng.standard_normal((c_out, c_in, k, k), dtype=np.float32),
         "dw": rng.standard_normal((c_in, 1, k, k), dtype=np.float32),
         "pw": rng.standard_normal((c_out, c_in, 1, 1), dtype=np.float32)}
    wt = {n: torch.from_numpy(v) for n, v in w.items()}
    xt, pad = torch.from_numpy(x), rate * (k - 1) // 2
    runs = {
        "full": (lambda: atrous_conv2d(x, w["full"], None, rate=rate),
                 lambda: F.conv2d(xt, wt["full"], None, 1, pad, rate)),
        "separable": (lambda: atrous_conv2d(atrous_conv2d(x, w["dw"], None, rate=rate, groups=c_in), w["pw"], None),
                      lambda: F.conv2d(F.conv2d(xt, wt["dw"], None, 1, pad, rate, c_in), wt["pw"])),
    }
    with torch.device("meta"):
        nn = torch.nn
        modules = {"full": nn.Conv2d(c_in, c_out, k, 1, pad, rate, bias=False),
                   "separable": nn.Sequential(nn.Conv2d(c_in, c_in, k, 1, pad, rate, groups=c_in, bias=False),
                                              nn.Conv2d(c_in, c_out, 1, bias=False))}
        macs = {n: sum(m for m, _ in conv_counts(mod, torch.empty(1, c_in, size, size)).values())
                for n, mod in modules.items()}
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    out = {}
    try:
        with threadpool_limits(limits=threads), torch.inference_mode():
            for name, (ours, theirs) in runs.items():
                out[name] = {"mult_adds": int(macs[name]), "scratch_s": median_seconds(ours, repeat),
                             "torch_s": median_seconds(theirs, repeat)}
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    return out


_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
          "xavier_normal_", "zeros_", "ones_", "constant_")


@contextmanager
def meta_modules():
    """Build torch modules on the meta device (shapes, no memory) without running ``torch.nn.init``'s
    initialisers, which there compute nothing and cost milliseconds a tensor (ResNet-101's twin: 1 s of 1.1 s,
    measured). The initialisers are restored on exit; modules built inside hold meta tensors only."""
    import torch

    saved = {n: getattr(torch.nn.init, n) for n in _INITS}
    for n in _INITS:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def model_costs(name, backbone=None, output_stride=None, num_classes=21, size=(512, 512), **options) -> dict:
    """The parameters and multiply-adds of the twin of ``build_model(name, backbone, output_stride, num_classes,
    **options)`` for one (3, *size) image, counted from shapes (``meta_modules``, ``bench.cost.mult_adds``)
    -> {"params": int, "mult_adds": {top-level child: int} (backbone, aspp, decoder, classifier, ...)}."""
    from minideeplab.bench.cost import mult_adds
    from minideeplab.reference.deeplab import build_model

    with meta_modules():
        module = build_model(name, backbone, output_stride, num_classes, **options).eval()
    return {"params": sum(p.numel() for p in module.parameters()), "mult_adds": mult_adds(module, (1, 3, *size))}
