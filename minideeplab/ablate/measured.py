"""A study with several seeds per row, read for its answer: per-row mean mIoU and seed-to-seed spread, the paired
bootstrap over val images against a baseline row, the rows not yet measured, and plain statements that say only
what the numbers support. Notebook 11 reads the attention study (issue 14) with it:

    summary = attention_summary()            # data/ablation/attention.csv (+ per-image file), if present
    print(format_summary(summary)); print("\\n".join(answer_lines(summary)))

The table: one CSV line per (row, seed) with at least ``name``, ``seed``, ``miou``, ``parameters``,
``mult_adds`` and ``trimap_<width>`` columns (the ablation's layout; other columns are kept as numbers or text).
The per-image file (optional; without it there are no intervals): an .npz with ``names`` (R,), ``seeds`` (R,)
and ``cms`` (R, N, C, C), one confusion matrix per val image for each (row, seed) line, images in one order.

What is expected of the attention study lives here once: ``ATTENTION_ROWS`` (names and the seeds the answer
needs), ``ATTENTION_FILES`` and ``ATTENTION_COMMAND``, the command that runs the missing rows.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minideeplab.ablate.stats import mean_ious

__all__ = ["StudyRow", "ATTENTION_ROWS", "ATTENTION_BASELINE", "ATTENTION_COMPARISONS", "ATTENTION_FILES",
           "ATTENTION_COMMAND", "read_seeded_csv", "read_seeded_per_image", "bootstrap_seed_mean_interval",
           "summarise", "attention_summary", "format_summary", "answer_lines"]

# The command that trains the attention study's missing rows (resumable): the one place it is written.
ATTENTION_COMMAND = "minideeplab ablate --study attention"
ATTENTION_FILES = ("attention.csv", "attention_per_image.npz")  # under data/ablation/


@dataclass(frozen=True)
class StudyRow:
    """A row the study must have: its name in the table, what it is, and how many seeds the answer needs."""

    name: str
    about: str
    seeds: int


ATTENTION_ROWS = (
    StudyRow("cnn-v3plus", "the mini CNN DeepLab v3+ (ResNet, ASPP, decoder): the baseline", 3),
    StudyRow("vit-linear", "ViT-mini with a linear head (SETR-naive, Segmenter-linear)", 3),
    StudyRow("vit-aspp", "ViT-mini with ASPP on its stride-16 token map", 3),
    StudyRow("vit-aspp-decoder", "ViT-mini with ASPP and the v3+ decoder", 1),
    StudyRow("segformer-mini", "a SegFormer of the same budget", 1),
    StudyRow("vit-dilated-na", "ViT-mini with dilated neighbourhood attention in some layers", 1),
)
ATTENTION_BASELINE = "cnn-v3plus"
# (a, b, the question a - b answers)
ATTENTION_COMPARISONS = (
    ("vit-aspp", "vit-linear", "does ASPP help on top of attention?"),
    ("vit-linear", "cnn-v3plus", "attention with a linear head against the CNN DeepLab"),
    ("vit-aspp", "cnn-v3plus", "ViT + ASPP against the CNN DeepLab"),
    ("vit-aspp-decoder", "vit-aspp", "does the v3+ decoder help the ViT?"),
    ("vit-dilated-na", "vit-linear", "dilated neighbourhood attention against global attention"),
    ("segformer-mini", "cnn-v3plus", "SegFormer against the CNN DeepLab"),
)

_INTS = ("seed", "parameters", "mult_adds")
_TEXT = ("name", "model", "backbone", "about", "crf")


def read_seeded_csv(path) -> list[dict]:
    """The lines of a study table: name and other text columns as strings, seed, parameters and mult_adds as ints,
    the rest as floats (nan for an empty cell) or, where not a number, as text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_seeded_csv: {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("name", "seed", "miou") if k not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"read_seeded_csv: {path} has no column {missing[0]!r} (columns: {reader.fieldnames})")
        rows = []
        for raw in reader:
            r = {}
            for k, v in raw.items():
                if k in _TEXT:
                    r[k] = v
                elif k in _INTS:
                    r[k] = int(float(v)) if v else None
                else:
                    try:
                        r[k] = float(v) if v else math.nan
                    except ValueError:
                        r[k] = v
            rows.append(r)
    return rows


def read_seeded_per_image(path) -> dict:
    """{(name, seed): (N, C, C) int64 confusion matrices, one per val image} from an .npz with names, seeds, cms."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_seeded_per_image: {path} does not exist")
    with np.load(path) as z:
        missing = [k for k in ("names", "seeds", "cms") if k not in z.files]
        if missing:
            raise ValueError(f"read_seeded_per_image: {path} has no array {missing[0]!r} (arrays: {z.files})")
        return {(str(n), int(s)): z["cms"][i].astype(np.int64) for i, (n, s) in enumerate(zip(z["names"], z["seeds"]))}


def bootstrap_seed_mean_interval(cms_a, cms_b, n_samples=2000, level=0.95, seed=0) -> tuple[float, float, float]:
    """cms_a (Sa, N, C, C), cms_b (Sb, N, C, C): each row's seeds scored on the same N val images ->
    (difference of the seed-mean mIoUs on all images, and the percentile interval of its paired bootstrap): the
    images resampled with replacement n_samples times, the same sample for every seed of both rows. The interval
    measures the luck of the val images given these seeds; the seeds' own spread is reported beside it."""
    a, b = np.asarray(cms_a), np.asarray(cms_b)
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:] or a.shape[2] != a.shape[3]:
        raise ValueError(f"bootstrap_seed_mean_interval: cms_a and cms_b must be (seeds, N, C, C) with one N and C, "
                         f"got {a.shape} and {b.shape}")
    n = a.shape[1]
    samples = np.random.default_rng(seed).integers(0, n, (n_samples, n))

    def diff(s):
        return np.mean([mean_ious(c, s) for c in a], axis=0) - np.mean([mean_ious(c, s) for c in b], axis=0)

    lo, hi = np.quantile(diff(samples), [(1 - level) / 2, (1 + level) / 2])
    return float(diff(np.arange(n)[None])[0]), float(lo), float(hi)


def _trimap_widths(rows):
    keys = {k for r in rows for k in r if k.startswith("trimap_")}
    return sorted(keys, key=lambda k: float(k[len("trimap_"):]))


def summarise(rows, per_image=None, expected=ATTENTION_ROWS, baseline=ATTENTION_BASELINE,
              comparisons=ATTENTION_COMPARISONS, n_samples=2000, seed=0) -> dict:
    """rows: the table's lines (``read_seeded_csv``); per_image: {(name, seed): cms} or None ->
    {"rows": one dict per name (expected order first, then any other): name, seeds, miou (seed mean), miou_sd
    (sample sd, nan for one seed), miou_min, miou_max, parameters, mult_adds, trimap_<w> (seed means), and
    "vs_baseline": (difference, low, high) of the paired bootstrap or None; "missing": (name, seeds there, seeds
    needed) for each expected row short of seeds; "comparisons": (a, b, question, (d, lo, hi) or None, why);
    "baseline", "command"}."""
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    names = [e.name for e in expected if e.name in by] + [n for n in by if n not in {e.name for e in expected}]
    widths = _trimap_widths(rows)
    per_image = per_image or {}

    def cms(name):
        seeds = sorted(r["seed"] for r in by.get(name, ()))
        have = [per_image[(name, s)] for s in seeds if (name, s) in per_image]
        return np.stack(have) if have and len(have) == len(seeds) else None

    def interval(a, b):
        if a not in by or b not in by:
            gone = [n for n in (a, b) if n not in by]
            return None, f"not measured yet: {', '.join(gone)}"
        ca, cb = cms(a), cms(b)
        if ca is None or cb is None:
            return None, "no per-image confusion matrices for every seed of both rows: no interval"
        if ca.shape[1:] != cb.shape[1:]:
            return None, f"the rows were scored on different val sets ({ca.shape[1]} and {cb.shape[1]} images)"
        return bootstrap_seed_mean_interval(ca, cb, n_samples=n_samples, seed=seed), ""

    out = []
    for name in names:
        lines = sorted(by[name], key=lambda r: r["seed"])
        m = np.array([r["miou"] for r in lines], dtype=np.float64)
        s = {"name": name, "seeds": [r["seed"] for r in lines], "miou": float(m.mean()),
             "miou_sd": float(m.std(ddof=1)) if len(m) > 1 else math.nan, "miou_min": float(m.min()),
             "miou_max": float(m.max()), "parameters": lines[0].get("parameters"),
             "mult_adds": lines[0].get("mult_adds")}
        for w in widths:
            s[w] = float(np.nanmean([r.get(w, math.nan) for r in lines]))
        s["vs_baseline"] = interval(name, baseline)[0] if name != baseline else None
        out.append(s)
    missing = [(e.name, len(by.get(e.name, ())), e.seeds) for e in expected if len(by.get(e.name, ())) < e.seeds]
    comps = [(a, b, q, *interval(a, b)) for a, b, q in comparisons]
    return {"rows": out, "missing": missing, "comparisons": comps, "baseline": baseline, "command": ATTENTION_COMMAND,
            "widths": widths}


def attention_summary(folder=None, **kw) -> dict:
    """``summarise`` of the attention study in folder (default data/ablation): an absent table is a study with
    no row measured yet; an absent per-image file leaves out the intervals."""
    if folder is None:
        from minideeplab.data import DATA_DIR

        folder = Path(DATA_DIR) / "ablation"
    table, images = (Path(folder) / f for f in ATTENTION_FILES)
    rows = read_seeded_csv(table) if table.is_file() else []
    per_image = read_seeded_per_image(images) if images.is_file() else None
    return summarise(rows, per_image, **kw)


def _pts(x, signed=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def format_summary(summary) -> str:
    """The summary as aligned text: one line per row (seeds, mean mIoU, seed sd and range, trimap accuracy,
    parameters, multiply-adds and their ratio to the baseline's, the difference to the baseline with its 95 %
    interval), then the rows not yet measured and the command that runs them."""
    rows, base = summary["rows"], summary["baseline"]
    ref = next((r for r in rows if r["name"] == base), None)
    head = ["name", "seeds", "mIoU", "sd", "range"] + [f"tri{w[len('trimap_'):]}" for w in summary["widths"]] + \
           ["params", "MACs", "x base", f"- {base} [95 % interval]"]
    lines = []
    for r in rows:
        ratio = "-"
        if ref and r.get("mult_adds") and ref.get("mult_adds") and r.get("parameters") and ref.get("parameters"):
            ratio = f"{r['parameters'] / ref['parameters']:.2f}/{r['mult_adds'] / ref['mult_adds']:.2f}"
        v = r["vs_baseline"]
        vs = "(baseline)" if r["name"] == base else "-" if v is None else \
            f"{_pts(v[0], True)} [{_pts(v[1], True)}, {_pts(v[2], True)}]"
        lines.append([r["name"], str(len(r["seeds"])), _pts(r["miou"]), _pts(r["miou_sd"]),
                      f"{_pts(r['miou_min'])}-{_pts(r['miou_max'])}"] + [_pts(r[w]) for w in summary["widths"]] +
                     [f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "-",
                      f"{r['mult_adds'] / 1e9:.3f}G" if r.get("mult_adds") else "-", ratio, vs])
    out = []
    if rows:
        size = [max(len(c) for c in col) for col in zip(head, *lines)]
        fmt = lambda cells: "  ".join(c.ljust(n) if i == 0 else c.rjust(n)  # noqa: E731
                                      for i, (c, n) in enumerate(zip(cells, size))).rstrip()
        out += [fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines]
        out.append("mIoU, sd (seed to seed), range and trimap accuracy in points (%); 'x base': parameters/MACs "
                   f"over {base}'s.")
    else:
        out.append("No row of the study is measured yet.")
    if summary["missing"]:
        out.append("Not yet measured (seeds there / seeds the answer needs):")
        out += [f"  {name}: {have} of {need}" for name, have, need in summary["missing"]]
        out.append(f"Run them with: {summary['command']}  (resumable: finished rows are kept)")
    return "\n".join(out)


def answer_lines(summary) -> list[str]:
    """One plain statement per comparison of ``summary`` (a - b in mIoU points, its 95 % interval over the val
    images, each row's seeds and seed spread), with what the numbers allow: the interval above zero, below zero,
    or straddling it; and a warning where the difference is within the seed-to-seed spread or a row has one seed.
    "not measured yet" where a row is missing."""
    by = {r["name"]: r for r in summary["rows"]}
    out = []
    for a, b, question, iv, why in summary["comparisons"]:
        if a not in by or b not in by:
            out.append(f"{question} ({a} - {b}): {why}; run {summary['command']}")
            continue
        ra, rb = by[a], by[b]
        d = ra["miou"] - rb["miou"]
        seeds = f"{len(ra['seeds'])} and {len(rb['seeds'])} seeds"
        line = f"{question} {a} - {b}: {_pts(d, True)} points ({seeds}"
        if iv is None:
            line += f"; {why})"
        else:
            _, lo, hi = iv
            where = "above zero: a gain here" if lo > 0 else "below zero: a loss here" if hi < 0 else \
                "straddles zero: not told apart from no change on these images"
            line += f"; 95 % interval over the val images [{_pts(lo, True)}, {_pts(hi, True)}], {where})"
        spread = [r["miou_sd"] for r in (ra, rb) if not math.isnan(r["miou_sd"])]
        if len(ra["seeds"]) < 2 or len(rb["seeds"]) < 2:
            line += "; one seed on a side: the seed-to-seed luck is not measured"
        elif abs(d) <= max(spread):
            line += f"; within the seed-to-seed spread (sd up to {_pts(max(spread))} points): not settled by 3 seeds"
        out.append(line)
    return out
