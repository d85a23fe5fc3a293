"""The CRF study's results read back (issue 15; notebook 12's "The measured answer"): post-processing against the
CRF trained as a layer, per configuration over seeds, and the learned compatibility of a trained CRF layer.

    rows = read_table()                                  # data/ablation/crf.csv: name, seed, miou, trimap_<w>, ...
    print(report(rows))                                  # the table, or which rows are not measured yet and how

The study's runner writes the files; everything this module assumes about them (paths, row names, the command
that runs the study) is in STUDY, in one place.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from minideeplab.ablate.stats import bootstrap_interval
from minideeplab.data import DATA_DIR

__all__ = ["STUDY", "study_path", "read_table", "read_per_image", "summarize", "missing_configurations",
           "format_summary", "report", "learned_crf"]

# What the CRF study's runner writes and how to run it. Fix here when the runner lands (names, paths, command).
# Paths are relative to the repository's root (the folder that holds data/); a path passed to a function is not.
STUDY = dict(
    csv="data/ablation/crf.csv",
    # every val image's confusion matrix per (name, seed): arrays names (R,), seeds (R,), cms (R, N, C, C)
    per_image="data/ablation/crf_per_image.npz",
    # a CRF layer trained with the network: its learned compatibility is plotted
    checkpoint="runs/crf/v3plus-mini-crf-finetune/seed0/last.pt",
    baseline="v3plus-mini",
    rows={
        "v3plus-mini": "v3+ mini, no CRF",
        "v3plus-mini-crf-post": "v3+ mini + the dense CRF as post-processing (DeepLab's parameters)",
        "v3plus-mini-crf-finetune": "v3+ mini fine-tuned with the CRF layer from the shipped weights",
        "v3plus-mini-crf-scratch": "v3+ mini trained with the CRF layer from scratch",
    },
    command="minideeplab ablate --study crf --out runs/crf --results data/ablation",
    trimap_widths=(1, 2),
)


def study_path(key, path=None) -> Path:
    """path as given, or STUDY[key] ("csv", "per_image", "checkpoint") under the repository's root."""
    return Path(path) if path is not None else DATA_DIR.parent / STUDY[key]


def _shown(path) -> str:
    """path relative to the repository's root when it lies inside it (as STUDY names it), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(DATA_DIR.parent.resolve()))
    except ValueError:
        return str(path)


def _cell(key, value):
    if key == "name":
        return value
    if key == "seed":
        return int(value)
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        return value


def read_table(path=None) -> list[dict]:
    """crf.csv -> one dict per line: name (str), seed (int), numbers as floats (nan for an empty cell), any other
    text as it is. A missing file raises FileNotFoundError naming it and the command that writes it."""
    path = study_path("csv", path)
    if not path.is_file():
        raise FileNotFoundError(f"read_table: {path} does not exist (the CRF study writes it: {STUDY['command']})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("name", "seed", "miou") if k not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"read_table: {path} is not the CRF study's table (no column {missing[0]!r}; "
                             f"it has {reader.fieldnames})")
        return [{k: _cell(k, v) for k, v in raw.items()} for raw in reader]


def read_per_image(path=None) -> dict:
    """The per-image confusion matrices -> {(name, seed): (N, C, C) int64}; {} when the file does not exist."""
    path = study_path("per_image", path)
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return {(str(n), int(s)): z["cms"][k].astype(np.int64) for k, (n, s) in enumerate(zip(z["names"], z["seeds"]))}


def _trimap_keys(rows, widths):
    keys = {float(k[len("trimap_"):]): k for r in rows for k in r if k.startswith("trimap_")}
    return [(w, keys[float(w)]) for w in widths if float(w) in keys]


def summarize(rows, per_image=None, baseline=None, n_samples=2000, seed=0) -> list[dict]:
    """One record per configuration (the study's order, then any other name in rows): name, seeds, miou (mean over
    seeds), miou_min, miou_max, trimap_<w> means for the study's widths, and vs_baseline: (difference of mIoU,
    low, high), the paired bootstrap over val images of this configuration against the baseline (each image's
    confusion matrices summed over the seeds both have; ``stats.bootstrap_interval``), or None without the
    per-image matrices. Seed spread and bootstrap answer different questions: the luck of the training run, the
    luck of the val images."""
    baseline = STUDY["baseline"] if baseline is None else baseline
    per_image = per_image or {}
    names = [n for n in STUDY["rows"] if any(r["name"] == n for r in rows)]
    names += sorted({r["name"] for r in rows} - set(names))
    trimaps = _trimap_keys(rows, STUDY["trimap_widths"])
    out = []
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        miou = np.array([r["miou"] for r in mine], dtype=np.float64)
        rec = dict(name=name, seeds=sorted(r["seed"] for r in mine), miou=float(np.mean(miou)),
                   miou_min=float(np.min(miou)), miou_max=float(np.max(miou)))
        for _, key in trimaps:
            rec[key] = float(np.mean([r.get(key, math.nan) for r in mine]))
        shared = [s for s in rec["seeds"] if (name, s) in per_image and (baseline, s) in per_image]
        rec["vs_baseline"] = None
        if name != baseline and shared:
            a = sum(per_image[(name, s)] for s in shared)
            b = sum(per_image[(baseline, s)] for s in shared)
            rec["vs_baseline"] = bootstrap_interval(a, b, n_samples=n_samples, seed=seed)
        out.append(rec)
    return out


def missing_configurations(rows) -> list[str]:
    """The study's configurations with no line in rows."""
    have = {r["name"] for r in rows}
    return [n for n in STUDY["rows"] if n not in have]


def _pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def format_summary(summary) -> str:
    """``summarize``'s records as aligned text, in percent."""
    trimap = [k for k in (summary[0] if summary else {}) if k.startswith("trimap_")]
    head = ["configuration", "seeds", "mIoU", "seed range"] + [f"trimap {k[len('trimap_'):]} px" for k in trimap] + \
           ["mIoU - baseline [95% bootstrap]"]
    lines = []
    for r in summary:
        vs = r["vs_baseline"]
        lines.append([r["name"], str(len(r["seeds"])), _pct(r["miou"]),
                      f"{_pct(r['miou_min'])}-{_pct(r['miou_max'])}" if len(r["seeds"]) > 1 else "-"] +
                     [_pct(r[k]) for k in trimap] +
                     ["-" if vs is None else f"{100 * vs[0]:+.1f} [{100 * vs[1]:+.1f}, {100 * vs[2]:+.1f}]"])
    size = [max(len(c) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(n) if i == 0 else c.rjust(n)  # noqa: E731
                                  for i, (c, n) in enumerate(zip(cells, size))).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines])


def report(path=None, per_image_path=None) -> str:
    """What the CRF study has measured, as text: the table (``format_summary``) and, plainly, the configurations
    not measured yet and the command that measures them; when the table does not exist, only that."""
    path = study_path("csv", path)
    run = f"Run the study (CPU hours; resumable, measured rows are kept): {STUDY['command']}"
    if not path.is_file():
        wanted = "\n".join(f"  {n}: {about}" for n, about in STUDY["rows"].items())
        return (f"Not measured yet: {_shown(path)} does not exist, so none of the study's configurations has a "
                f"number:\n{wanted}\n{run}")
    rows = read_table(path)
    summary = summarize(rows, read_per_image(per_image_path))
    text = [format_summary(summary)]
    if not any(r["vs_baseline"] for r in summary):
        text.append(f"No bootstrap intervals: {_shown(study_path('per_image', per_image_path))} "
                    f"(every val image's confusion matrix) is missing, or has no {STUDY['baseline']} rows.")
    missing = missing_configurations(rows)
    if missing:
        text.append("Not measured yet: " + "; ".join(f"{n} ({STUDY['rows'][n]})" for n in missing) + f".\n{run}")
    return "\n".join(text)


def learned_crf(path=None) -> dict:
    """A trained CRF layer's parameters from a checkpoint: {"compat": (C, C) float64, "classes": [...], and the
    kernel weights found (a ``log_<name>`` parameter as ``<name>`` = exp of it)}. The compatibility is the one
    state_dict entry whose name ends in "compat"."""
    from minideeplab.training.checkpoint import load_checkpoint

    path = study_path("checkpoint", path)
    ckpt = load_checkpoint(path)
    found = [k for k in ckpt["model"] if k.split(".")[-1] == "compat"]
    if len(found) != 1:
        raise ValueError(f"learned_crf: {path} has {len(found)} compatibility matrices ({found}); expected one, "
                         "a model with a CRF layer")
    out = {"compat": ckpt["model"][found[0]].double().numpy(), "classes": list(ckpt["classes"])}
    prefix = found[0][:-len("compat")]
    for k, v in ckpt["model"].items():
        if k.startswith(prefix + "log_") and v.numel() == 1:
            out[k[len(prefix) + len("log_"):]] = float(v.double().exp())
    return out
