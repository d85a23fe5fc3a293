"""The study's results on disk and as text: ablation.csv and ablation.json (one record per row, ``columns``
order), ablation_per_image.npz (each row's per-image confusion matrices), the two plots (``viz.ablation``),
long_runs.json (the table's supplement), and the table and the configurations as aligned text.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from minideeplab import train as T
from minideeplab.ablate.study import ROWS, costs, field_of_view

__all__ = ["columns", "json_safe", "write_table", "write_per_image", "write_results", "write_loss_curves",
           "read_loss_curves", "read_csv", "read_per_image",
           "write_long_runs", "format_table", "format_rows"]

_FIRST = ["name", "model", "backbone", "output_stride", "atrous_rates", "image_pooling", "decoder", "crf",
          "field_of_view", "parameters", "mult_adds", "miou", "pixel_accuracy", "mean_accuracy"]
_LAST = ["train_seconds", "train_cpu_seconds", "images_per_s", "inference_ms", "threads", "final_loss", "epochs",
         "train_images", "val_images", "crop_size", "batch_size", "lr", "optimizer", "weight_decay", "warmup_iters",
         "scale_min", "scale_max", "seed", "about"]
_INTS = {"output_stride", "field_of_view", "parameters", "mult_adds", "threads", "epochs", "train_images",
         "val_images", "crop_size", "batch_size", "seed", "warmup_iters"}


def columns(rows, first=None, last=None) -> list[str]:
    """The CSV's columns: first (default _FIRST), trimap_<width> (increasing), iou_<class> (the data's order),
    last (default _LAST); a study with columns of its own gives its first and last."""
    keys = list(rows[0]) if rows else []
    trimap = sorted((k for k in keys if k.startswith("trimap_")), key=lambda k: float(k[len("trimap_"):]))
    first, last = _FIRST if first is None else first, _LAST if last is None else last
    return [*first, *trimap, *(k for k in keys if k.startswith("iou_")), *last]


def json_safe(x):
    """x with nan as None (JSON's null), tuples as lists, dicts and lists walked."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _csv_cell(key, v):
    if key == "atrous_rates":
        return " ".join(str(r) for r in v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def write_table(rows, path, names) -> Path:
    """One CSV line per record, the columns ``names`` (atrous rates space-separated, nan and None as empty)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for r in rows:
            w.writerow([_csv_cell(k, r.get(k)) for k in names])
    return Path(path)


def write_per_image(rows, path, per_image) -> Path | None:
    """The per-image file of a table, the one layout every study writes and ``read_per_image`` reads: names (R,)
    (the records' order), widths (W,), cms (R, N, C, C) and trimaps (R, N, W, C, C) int32, when per_image (row
    name -> {"cms", "trimaps", "widths"} of ``per_image_confusions``) holds every row; else an earlier file is
    removed (it would no longer match the table) and None returned."""
    path = Path(path)
    if not (rows and per_image and all(r["name"] in per_image for r in rows)):
        path.unlink(missing_ok=True)
        return None
    first = per_image[rows[0]["name"]]
    np.savez_compressed(path, names=np.array([r["name"] for r in rows]), widths=np.asarray(first["widths"]),
                        cms=np.stack([per_image[r["name"]]["cms"] for r in rows]).astype(np.int32),
                        trimaps=np.stack([per_image[r["name"]]["trimaps"] for r in rows]).astype(np.int32))
    return path


def write_results(rows, folder, per_image=None, stem="ablation", title=None, curves=None,
                  configuration=None) -> list[Path]:
    """ablation.csv, ablation.json and the two plots in ``folder``, and ablation_per_image.npz when per_image
    (row name -> {"cms", "trimaps", "widths"} of ``per_image_confusions``) holds every row (else an earlier one
    is removed); returns their paths. stem: the files' names (the study's: "ablation", "attention"); title: the
    mIoU plot's (``Study.title``; None: the ablations'). curves: row name -> its training loss per epoch, written
    to ablation_losses.json (``write_loss_curves``) when given. configuration: a row name -> its configuration
    (``measured.configuration``) for a study over seeds, whose plots then group each configuration's seeds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = columns(rows)
    paths = [write_table(rows, folder / f"{stem}.csv", names), folder / f"{stem}.json"]
    paths[1].write_text(json.dumps(json_safe([{k: r.get(k) for k in names} for r in rows]), indent=1))
    if rows:
        from minideeplab.viz.ablation import plot_miou, plot_seeds, plot_trimap

        titled = {} if title is None else {"title": title}
        miou = folder / f"{stem}_miou.png"
        paths += [plot_miou(rows, miou, **titled) if configuration is None else
                  plot_seeds(rows, miou, configuration, f"{title or stem}, {rows[0]['epochs']} epochs each"),
                  plot_trimap(rows, folder / f"{stem}_trimap.png", configuration)]
    images = write_per_image(rows, folder / f"{stem}_per_image.npz", per_image)
    if curves is not None:
        paths.append(write_loss_curves(curves, folder / f"{stem}_losses.json"))
    return paths + ([images] if images else [])


def write_loss_curves(curves, path) -> Path:
    """{row name: [the mean training loss of each epoch]} as JSON: did each row fit its training data?"""
    path = Path(path)
    path.write_text(json.dumps({name: [float(v) for v in c] for name, c in curves.items()}, indent=1))
    return path


def read_loss_curves(path) -> dict[str, list[float]]:
    """``write_loss_curves``'s file -> {row name: [loss per epoch]}; {} when there is no such file (no row
    measured yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_per_image(path) -> dict:
    """A study's <study>_per_image.npz (``write_per_image``) -> {row name: {"cms": (N, C, C), "trimaps":
    (N, len(widths), C, C)}} (int64, one matrix per val image, in the val split's order) and the widths under the
    key "widths"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_per_image: {path} does not exist (write it with 'minideeplab ablate')")
    with np.load(path) as z:
        missing = [k for k in ("names", "widths", "cms", "trimaps") if k not in z.files]
        if missing:
            raise ValueError(f"read_per_image: {path} has no array {missing[0]!r} (arrays: {z.files}); the layout "
                             "is write_per_image's: names, widths, cms, trimaps")
        out = {str(n): {"cms": z["cms"][k].astype(np.int64), "trimaps": z["trimaps"][k].astype(np.int64)}
               for k, n in enumerate(z["names"])}
        out["widths"] = z["widths"].tolist()
    return out


def read_csv(path) -> list[dict]:
    """The records of an ablation.csv, typed as ``run_ablation`` returns them (ints, floats with nan for empty
    cells, atrous_rates a tuple, image_pooling True/False/None, crf a name or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_csv: {path} does not exist (write it with 'minideeplab ablate')")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("name", "miou", "atrous_rates") if k not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"read_csv: {path} is not an ablation table (no column {missing[0]!r})")
        rows = []
        for raw in reader:
            r = {}
            for k, v in raw.items():
                if k == "atrous_rates":
                    r[k] = tuple(int(x) for x in v.split())
                elif k in ("name", "model", "backbone", "about", "optimizer"):
                    r[k] = v
                elif k == "crf":
                    r[k] = v or None
                elif k in ("image_pooling", "decoder"):
                    r[k] = {"True": True, "False": False, "": None}[v]
                elif k in _INTS:
                    r[k] = int(v) if v else math.nan  # a ViT's field of view: no number (nan in the records)
                else:
                    r[k] = float(v) if v else math.nan
            rows.append(r)
    return rows


def write_long_runs(checkpoints: dict, path) -> Path:
    """Summarise training runs for the table's supplement: checkpoints maps a row name to (about, checkpoint
    path); writes {name: {"about", "config", "metrics": [{"epoch", "iteration", "miou", "pixel_accuracy",
    "trimap_accuracy"} of each evaluation]}} as JSON (nan as null) to path."""
    out = {}
    for name, (about, checkpoint) in checkpoints.items():
        ckpt = T.load_checkpoint(checkpoint)
        keep = ("epoch", "iteration", "miou", "pixel_accuracy", "trimap_accuracy")
        out[name] = {"about": about, "config": ckpt["config"],
                     "metrics": [{k: r[k] for k in keep} for r in ckpt["metrics"] if "miou" in r]}
    path = Path(path)
    path.write_text(json.dumps(json_safe(out), indent=1))
    return path



def _pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def format_table(rows) -> str:
    """The table as aligned text: configuration, cost, mIoU and trimap accuracy (%), time."""
    widths = sorted(float(k[len("trimap_"):]) for k in (rows[0] if rows else {}) if k.startswith("trimap_"))
    tri = [f"{w:g}" for w in widths]
    head = ["name", "model", "OS", "rates", "pool", "dec", "crf", "FOV", "params", "MACs", "mIoU"] + \
           [f"tri{w}" for w in tri] + ["train s", "img/s", "ms/img"]
    lines = []
    for r in rows:
        pool = {True: "yes", False: "no", None: "-"}[r["image_pooling"]]
        lines.append([r["name"], r["model"], str(r["output_stride"]), ",".join(map(str, r["atrous_rates"])) or "-",
                      pool, "yes" if r["decoder"] else "no", "yes" if r["crf"] else "no", str(r["field_of_view"]),
                      f"{r['parameters'] / 1e6:.2f}M", f"{r['mult_adds'] / 1e9:.3f}G", _pct(r["miou"])] +
                     [_pct(r[f"trimap_{w}"]) for w in tri] +
                     [f"{r['train_seconds']:.0f}", f"{r['images_per_s']:.1f}", f"{r['inference_ms']:.1f}"])
    cols = list(zip(head, *lines))
    size = [max(len(c) for c in col) for col in cols]
    left = {"name", "model", "rates", "pool", "dec", "crf"}
    fmt = lambda cells: "  ".join(c.ljust(n) if h in left else c.rjust(n)  # noqa: E731
                                  for c, n, h in zip(cells, size, head)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines])


def format_rows(rows=ROWS, num_classes=7) -> str:
    """The configurations (``--list``): name, model, OS, rates, pooling, decoder, CRF, field of view,
    parameters and multiply-adds at 128x128, and what the row is."""
    lines = []
    for r in rows:
        c = costs(r, num_classes)
        pool = {True: "yes", False: "no", None: "-"}[r.image_pooling]
        fov = field_of_view(r)
        lines.append([r.name, r.model, r.backbone, str(r.output_stride), ",".join(map(str, r.atrous_rates)) or "-",
                      pool, "yes" if r.decoder else "no", r.crf or "-", "-" if fov is None else f"{fov}",
                      f"{c['parameters'] / 1e6:.2f}M", f"{c['mult_adds'] / 1e9:.3f}G", r.about])
    head = ["name", "model", "backbone", "OS", "rates", "pool", "dec", "crf", "FOV px", "params", "MACs", "what"]
    size = [max(len(x) for x in col) for col in zip(head, *lines)]
    right = {"OS", "FOV px", "params", "MACs"}
    fmt = lambda cells: "  ".join(c.rjust(n) if h in right else c.ljust(n)  # noqa: E731
                                  for c, n, h in zip(cells, size, head)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines])
