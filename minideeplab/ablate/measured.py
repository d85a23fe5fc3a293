"""A study over seeds read for its answer (notebooks 11 and 12, "The measured answer"): per configuration (a row
name without its ``-s<seed>``, or the table's ``configuration`` column) the seed means of mIoU and trimap accuracy,
the seed-to-seed spread, parameters and multiply-adds, the paired bootstrap over the val images against a
baseline configuration (``stats.bootstrap_seeds_interval``), the configurations not yet measured or short of
seeds with the command that runs them, and plain statements that say only what the numbers support.

    summary = read_study(ATTENTION_EXPECTED)     # data/ablation/attention.csv (+ attention_per_image.npz)
    print(format_summary(summary)); print("\\n".join(answer_lines(summary)))

What a study expects is an ``Expected`` declared once, beside the runner's rows (``attention.ATTENTION_EXPECTED``,
``crf_study.CRF_EXPECTED``): its configurations and their seeds are read off those rows, so the reader and the
runner cannot disagree. The files are the ones the runners write: <study>.csv (``results.write_table``: one line
per row, with ``name``, ``seed``, ``miou``, ``trimap_<width>``, ``parameters``, ``mult_adds``, ...) and
<study>_per_image.npz (``results.write_per_image``, read by ``results.read_per_image``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minideeplab.ablate.results import read_loss_curves, read_per_image
from minideeplab.ablate.stats import bootstrap_seeds_interval

__all__ = ["Expected", "INTERVAL_WIDTHS", "configuration", "read_seeded_csv", "summarise", "read_study", "read_curves",
           "format_summary", "answer_lines"]

INTERVAL_WIDTHS = (1, 2)  # trimap bands (px) that get a bootstrap interval beside mIoU: where a CRF or a decoder acts


def configuration(name: str) -> str:
    """A row's configuration: its name without the seed ("v3plus-ft-s2" -> "v3plus-ft"; "v3-os16" stays)."""
    base, _, seed = name.rpartition("-s")
    return base if base and seed.isdigit() else name


@dataclass(frozen=True)
class Expected:
    """What a study over seeds must hold, declared beside its rows. name: the study's (``--study NAME``, the files'
    stem); rows: the runner's own rows (``study.Row``, with their seeds); baseline: the configuration every other
    is compared with; comparisons: (a, b, the question a - b answers). ValueError for a configuration that no
    row has."""

    name: str
    rows: tuple
    baseline: str
    comparisons: tuple = ()

    def __post_init__(self):
        known = self.configurations
        for what, config in [("baseline", self.baseline)] + [("comparisons", c) for a, b, _ in self.comparisons
                                                             for c in (a, b)]:
            if config not in known:
                raise ValueError(f"Expected({self.name!r}): {what} names configuration {config!r}, which no row "
                                 f"has; the configurations are {', '.join(known)}")

    @property
    def configurations(self) -> dict:
        """{configuration: {"rows": names, "seeds": seeds, "about": the first row's}} in the rows' first-seen order."""
        out = {}
        for r in self.rows:
            c = out.setdefault(configuration(r.name), {"rows": (), "seeds": (), "about": r.about})
            c["rows"] += (r.name,)
            c["seeds"] += (r.seed,)
        return out

    @property
    def command(self) -> str:
        """The command that runs the study's missing rows into the shipped results (resumable)."""
        return (f"minideeplab ablate --study {self.name} --out runs/{self.name} --results data/ablation "
                f"--data-root runs/synthetic-3000 --val-root data/synthetic")

    def files(self, folder) -> tuple[Path, Path]:
        """(the table, the per-image file) in folder."""
        return Path(folder) / f"{self.name}.csv", Path(folder) / f"{self.name}_per_image.npz"

    def losses(self, folder) -> Path:
        """The rows' training losses per epoch (``results.write_loss_curves``) in folder."""
        return Path(folder) / f"{self.name}_losses.json"


_INTS = ("seed", "parameters", "mult_adds")
_TEXT = ("name", "configuration", "model", "backbone", "about", "crf", "crf_layer", "schedule", "init_from",
         "atrous_rates")


def read_seeded_csv(path) -> list[dict]:
    """The lines of a study's table: text columns as strings, seed, parameters and mult_adds as ints (None when
    empty), the rest as floats (nan for an empty cell) or, where not a number, as text."""
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


def _trimap_keys(rows) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("trimap_")}
    return sorted(keys, key=lambda k: float(k[len("trimap_"):]))


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def summarise(expected: Expected, rows, per_image=None, baseline=None, n_samples=2000, seed=0) -> dict:
    """rows: the table's lines (``read_seeded_csv``, or the runner's records); per_image: ``read_per_image``'s
    {row name: {"cms", "trimaps"}, "widths": [...]} or None; baseline: a configuration (default the expected one).
    -> {"study", "baseline", "command", "widths" (the trimap_<w> keys), "interval_keys" ("miou" and the
    trimap_<w> of ``INTERVAL_WIDTHS`` that the per-image file holds),
    "configurations": one dict per configuration measured (the expected order, then any other): configuration,
    about, rows, seeds, seeds_expected, miou (seed mean), miou_sd (sample sd; nan for one seed), miou_min,
    miou_max, pixel_accuracy, final_loss (the training loss at the end, the trainer's running average: did it
    fit?) and each trimap_<w> (seed means) with their _sd, parameters, mult_adds (None when the table has none),
    vs_baseline: {key: (difference of seed means, low, high)} or None;
    "missing": {configuration, seeds (measured), seeds_expected, rows (to run)} per expected configuration short
    of seeds; "comparisons": {a, b, question, intervals ({key: (d, lo, hi)} or None), why (when None)}}."""
    baseline = expected.baseline if baseline is None else baseline
    per_image = per_image or {}
    by = {}
    for r in rows:
        by.setdefault(r.get("configuration") or configuration(r["name"]), []).append(r)
    wanted = expected.configurations
    names = [c for c in wanted if c in by] + [c for c in by if c not in wanted]
    widths = _trimap_keys(rows)
    file_widths = per_image.get("widths")
    if file_widths is None and per_image:
        file_widths = list(next(iter(per_image.values())).get("widths", ()))
    narrow = [(f"trimap_{w:g}", list(map(float, file_widths)).index(float(w))) for w in INTERVAL_WIDTHS
              if file_widths is not None and float(w) in map(float, file_widths)]
    keys = ["miou"] + [k for k, _ in narrow]

    def matrices(config):
        lines = by.get(config, ())
        if not all(r["name"] in per_image for r in lines):
            return None
        cms = np.stack([per_image[r["name"]]["cms"] for r in lines])
        return {"miou": cms, **{k: np.stack([per_image[r["name"]]["trimaps"][:, i] for r in lines])
                                for k, i in narrow}}

    def intervals(a, b):
        gone = [c for c in (a, b) if c not in by]
        if gone:
            return None, f"not measured yet: {', '.join(gone)}"
        ma, mb = matrices(a), matrices(b)
        if ma is None or mb is None:
            return None, "no per-image confusion matrices for every seed of both: no interval"
        if ma["miou"].shape[1:] != mb["miou"].shape[1:]:
            return None, (f"scored on different val sets ({ma['miou'].shape[1]} and {mb['miou'].shape[1]} images): "
                          "no paired interval")
        return {k: bootstrap_seeds_interval(ma[k], mb[k], "miou" if k == "miou" else "accuracy", n_samples,
                                            seed=seed) for k in keys}, ""

    out = []
    for config in names:
        lines = sorted(by[config], key=lambda r: -1 if r["seed"] is None else r["seed"])
        m = [r["miou"] for r in lines]
        about = wanted[config]["about"] if config in wanted else lines[0].get("about", "")
        s = {"configuration": config, "about": about, "rows": [r["name"] for r in lines],
             "seeds": [r["seed"] for r in lines],
             "seeds_expected": list(wanted[config]["seeds"]) if config in wanted else None,
             "miou_min": float(min(m)), "miou_max": float(max(m))}
        s["miou"], s["miou_sd"] = _mean_sd(m)
        for k in ["pixel_accuracy", "final_loss"] + widths:
            s[k], s[f"{k}_sd"] = _mean_sd([r.get(k, math.nan) for r in lines])
        for k in ("parameters", "mult_adds"):
            v = lines[0].get(k)
            s[k] = None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
        s["vs_baseline"] = intervals(config, baseline)[0] if config != baseline else None
        out.append(s)
    missing = []
    for config, want in wanted.items():
        have = {r["name"] for r in by.get(config, ())}
        todo = [n for n in want["rows"] if n not in have]
        if todo:
            missing.append({"configuration": config, "seeds": len(have), "seeds_expected": len(want["rows"]),
                            "rows": todo})
    comps = []
    for a, b, question in expected.comparisons:
        iv, why = intervals(a, b)
        comps.append({"a": a, "b": b, "question": question, "intervals": iv, "why": why})
    return {"study": expected.name, "baseline": baseline, "command": expected.command, "widths": widths,
            "interval_keys": keys, "configurations": out, "missing": missing, "comparisons": comps}


def read_study(expected: Expected, folder=None, **kw) -> dict:
    """``summarise`` of the study's files in folder (default data/ablation): an absent table is a study with no
    row measured yet; an absent per-image file leaves out the intervals. kw: ``summarise``'s."""
    if folder is None:
        from minideeplab.data import DATA_DIR

        folder = Path(DATA_DIR) / "ablation"
    table, images = expected.files(folder)
    rows = read_seeded_csv(table) if table.is_file() else []
    per_image = read_per_image(images) if images.is_file() else None
    return summarise(expected, rows, per_image, **kw)


def read_curves(expected: Expected, folder=None) -> dict[str, list[float]]:
    """The training loss per epoch of each row of the study measured so far, in the study's order: {row name:
    [loss, ...]} from <study>_losses.json in folder (default data/ablation); {} when none is measured."""
    if folder is None:
        from minideeplab.data import DATA_DIR

        folder = Path(DATA_DIR) / "ablation"
    curves = read_loss_curves(expected.losses(folder))
    order = [r.name for r in expected.rows]
    return {n: curves[n] for n in order if n in curves} | {n: c for n, c in curves.items() if n not in order}


def _pts(x, signed=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _interval(iv) -> str:
    return f"{_pts(iv[0], True)} [{_pts(iv[1], True)}, {_pts(iv[2], True)}]"


def _loss(x):
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def format_summary(summary) -> str:
    """The summary as aligned text: one line per configuration (seeds measured of expected, mean mIoU, seed sd and
    range, final training loss, trimap accuracies, parameters, multiply-adds and their ratio to the baseline's,
    the mIoU difference to the baseline with its 95 % interval), then the configurations short of seeds and the
    command that runs them."""
    rows, base = summary["configurations"], summary["baseline"]
    ref = next((r for r in rows if r["configuration"] == base), None)
    head = ["configuration", "seeds", "mIoU", "sd", "range", "loss"] + \
           [f"tri{w[len('trimap_'):]}" for w in summary["widths"]] + ["params", "MACs", "x base",
                                                                       f"- {base} [95 % interval]"]
    lines = []
    for r in rows:
        ratio = "-"
        if ref and r["parameters"] and ref["parameters"] and r["mult_adds"] and ref["mult_adds"]:
            ratio = f"{r['parameters'] / ref['parameters']:.2f}/{r['mult_adds'] / ref['mult_adds']:.2f}"
        v = r["vs_baseline"]
        vs = "(baseline)" if r["configuration"] == base else "-" if v is None else _interval(v["miou"])
        seeds = f"{len(r['seeds'])}" + (f"/{len(r['seeds_expected'])}" if r["seeds_expected"] else "")
        lines.append([r["configuration"], seeds, _pts(r["miou"]), _pts(r["miou_sd"]),
                      f"{_pts(r['miou_min'])}-{_pts(r['miou_max'])}", _loss(r["final_loss"])] +
                     [_pts(r[w]) for w in summary["widths"]] +
                     [f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] else "-",
                      f"{r['mult_adds'] / 1e9:.3f}G" if r["mult_adds"] else "-", ratio, vs])
    out = []
    if rows:
        size = [max(len(c) for c in col) for col in zip(head, *lines)]
        fmt = lambda cells: "  ".join(c.ljust(n) if i == 0 else c.rjust(n)  # noqa: E731
                                      for i, (c, n) in enumerate(zip(cells, size))).rstrip()
        out += [fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines]
        out.append("seeds: measured/expected; mIoU, sd (seed to seed), range and trimap accuracy (tri<px>) in points "
                   "(%); loss: the training loss at the end (its running average, about the last ten iterations; seed "
                   "mean: did it fit?); "
                   f"'x base': parameters/MACs over {base}'s; the interval: paired bootstrap over the val images.")
    else:
        out.append(f"No row of the {summary['study']} study is measured yet.")
    if summary["missing"]:
        out.append("Not yet measured (seeds there of seeds expected: rows to run):")
        out += [f"  {m['configuration']}: {m['seeds']} of {m['seeds_expected']}: {', '.join(m['rows'])}"
                for m in summary["missing"]]
        out.append(f"Run them with: {summary['command']}  (resumable: finished rows are kept)")
    return "\n".join(out)


def answer_lines(summary) -> list[str]:
    """One plain statement per comparison of ``summary``: a - b in mIoU points (seed means), its 95 % interval over
    the val images and where it lies (above zero, below zero, or straddling it), each side's seeds, the same for
    the narrow trimap bands, and a warning where the difference is within the seed-to-seed spread or a side has
    one seed; "not measured yet" where a side is missing, and then a last line with the command that runs it."""
    by = {r["configuration"]: r for r in summary["configurations"]}
    out = []
    for c in summary["comparisons"]:
        a, b, question, iv = c["a"], c["b"], c["question"], c["intervals"]
        if a not in by or b not in by:
            out.append(f"{question} ({a} - {b}): {c['why']}")
            continue
        ra, rb = by[a], by[b]
        d = ra["miou"] - rb["miou"]
        line = f"{question} {a} - {b}: {_pts(d, True)} mIoU points ({len(ra['seeds'])} and {len(rb['seeds'])} seeds"
        if iv is None:
            line += f"; {c['why']})"
        else:
            _, lo, hi = iv["miou"]
            where = "above zero: a gain here" if lo > 0 else "below zero: a loss here" if hi < 0 else \
                "straddles zero: not told apart from no change on these images"
            line += f"; 95 % interval over the val images [{_pts(lo, True)}, {_pts(hi, True)}], {where})"
            trimaps = [f"{k[len('trimap_'):]} px {_interval(v)}" for k, v in iv.items() if k != "miou"]
            if trimaps:
                line += "; trimap accuracy " + ", ".join(trimaps)
        spread = [r["miou_sd"] for r in (ra, rb) if not math.isnan(r["miou_sd"])]
        if len(ra["seeds"]) < 2 or len(rb["seeds"]) < 2:
            line += "; one seed on a side: the seed-to-seed luck is not measured"
        elif abs(d) <= max(spread):
            line += (f"; within the seed-to-seed spread (sd up to {_pts(max(spread))} points): not settled by "
                     f"{min(len(ra['seeds']), len(rb['seeds']))} seeds")
        out.append(line)
    if any(c["a"] not in by or c["b"] not in by for c in summary["comparisons"]):
        out.append(f"Run the rows not yet measured with: {summary['command']}")
    return out
