"""The CRF study (issue 15): the dense CRF as post-processing (DeepLab v1/v2) against the CRF trained as the
network's last layer (CRF-as-RNN), on the synthetic set, several seeds, run by ``ablate.run``'s machinery
(``_run_row``: OUT/<name>/last.pt, result.json, per_image.npz; a finished row is skipped, an interrupted one
resumes). ``minideeplab ablate --study crf`` runs it; ``--list`` prints the rows and their expected CPU time.

Rows (every one the mini v3+ at output stride 16 with the ablation's rates (2, 4, 6), as the shipped model;
``-s<seed>`` names the seed):

    v3plus-mini-s{0,1,2}            trained from scratch, schedule "ablation" (``ablate.EPOCHS`` epochs of the
                                    ablation's 3,000 images, lr ``LR``: 3,000 iterations of 8 crops)
    v3plus-mini-crfpost-s{0,1,2}    their weights + the dense CRF as post-processing (``scratch.crf.dense_crf``,
                                    DeepLab v2's parameters, 10 iterations): nothing is trained
    v3plus-mini-crflayer-s0         trained from scratch with the CRF layer (5 mean-field iterations, learned
                                    kernel weights and compatibility), schedule "ablation"
    v3plus-ft-s{0,1,2}              the shipped weights (data/models/mini_v3plus.pt) fine-tuned without a CRF,
                                    schedule "finetune" (5 epochs: 1,875 iterations, lr 0.01): the control, so
                                    that what fine-tuning alone does is not credited to the CRF layer
    v3plus-ft-crfpost-s{0,1,2}      their weights + the dense CRF as post-processing
    v3plus-ft-crflayer-s{0,1,2}     the shipped weights fine-tuned with the CRF layer (initialised from DeepLab's
                                    kernel weights and Potts), schedule "finetune"

The "ablation" schedule is the one of the ablation's table, by name, so that another study (issue 14's attention
rows) can share the v3plus-mini rows: same OUT, same names, and result.json's schedule check refuses a mix.
v3plus-mini-s0 is the ablation's v3plus-os16 row (same config, seed and schedule).

Results (``write_crf_results``): crf.csv (one line per row: configuration and seed), crf.json (the rows with the
learned compatibility matrices, and ``measured.summarise``'s reading of them: per configuration the mean and
spread over seeds, the configurations not yet measured, and COMPARISONS: the difference of the seed means in
mIoU and in trimap accuracy at 1 and 2 px with its paired-bootstrap interval over the val images),
crf_per_image.npz (``results.write_per_image``'s layout, as every study's) and crf_miou.png. Notebook 12 reads
them with ``measured.read_study(CRF_EXPECTED)`` and ``learned_compat``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from minideeplab import train as T
from minideeplab.ablate.measured import Expected, configuration, summarise
from minideeplab.ablate.results import columns, json_safe, write_loss_curves, write_per_image, write_table
from minideeplab.ablate.run import _load_result, _run_row, _schedule, loss_curves, row_schedule
from minideeplab.ablate.study import BATCH_SIZE, CROP_SIZE, EPOCHS, LR, SCALE_RANGE, SEED, Row, Study, select

__all__ = ["CRF", "SCHEDULES", "CRF_ROWS", "COMPARISONS", "CRF_EXPECTED", "SEEDS", "SHIPPED", "STEP_SECONDS",
           "run_crf_study", "write_crf_results", "format_crf_rows", "configuration", "learned_compat",
           "learned_crf"]

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "models" / "mini_v3plus.pt"
MAX_FINETUNE_ITERATIONS = 2000
SCHEDULES = {  # the rows' schedules (Row.schedule, ``Study.schedules``), each setting given; init_from: the start
    "ablation": dict(epochs=EPOCHS, batch_size=BATCH_SIZE, crop_size=CROP_SIZE, lr=LR, scale_range=SCALE_RANGE,
                     init_from=None),
    "finetune": dict(epochs=5, batch_size=BATCH_SIZE, crop_size=CROP_SIZE, lr=0.01, scale_range=SCALE_RANGE,
                     init_from=str(SHIPPED)),
}
TRAIN_IMAGES = 3000  # the shipped study's generated train set (see ``study``)
SEEDS = (0, 1, 2)
CRF_LAYER = {"n_iters": 5}
POST = "deeplab-v2-resnet"
# seconds per training step of 8 128x128 crops, torch trainer, one thread, for --list's estimates. plain: measured
# in this study's own run (2026-12-06: 17 img/s, data loading included, with the attention study running beside
# it at one thread on the other core; 'bench train --threads 1' alone on a quiet machine: 0.27 s). The shipped
# ablation's 0.154 s a step (3,000 steps in 461 s) was on torch's default two threads. crf_layer: plain times the
# ratio measured by 'minideeplab bench train --crf --threads 1' (2026-12-06 19:45, both cases in one run beside the
# two studies: torch 3.64 s / 1.16 s a step = 3.1; the numpy trainer: 4.44 / 2.26 s; before OpenMP waited passively
# (scratch.runtime) torch's CRF step was 4.5x its plain one and slower than numpy's).
STEP_SECONDS = {"plain": 0.47, "crf_layer": 1.5}
EVAL_SECONDS = {"plain": 5.0, "crfpost": 15.0, "crf_layer": 10.0}  # 100 val images: rough guesses, not measured


def _row(name, seed, schedule, about, **kw):
    return Row(f"{name}-s{seed}", "v3plus", 16, (2, 4, 6), True, seed=seed, schedule=schedule, about=about, **kw)


_ORDER = ["v3plus-mini", "v3plus-mini-crfpost", "v3plus-mini-crflayer", "v3plus-ft", "v3plus-ft-crfpost",
          "v3plus-ft-crflayer"]


def _rows():
    """The rows, configuration by configuration (``_ORDER``), seed by seed."""
    made = {
        "v3plus-mini": lambda s: _row("v3plus-mini", s, "ablation", "v3+ mini from scratch"),
        "v3plus-mini-crfpost": lambda s: _row("v3plus-mini-crfpost", s, "ablation", "+ dense CRF post-processing "
                                              "(DeepLab v2's)", crf=POST, weights_of=f"v3plus-mini-s{s}"),
        "v3plus-mini-crflayer": lambda s: _row("v3plus-mini-crflayer", s, "ablation", "from scratch with the CRF "
                                               "layer (5 iterations)", crf_layer=CRF_LAYER),
        "v3plus-ft": lambda s: _row("v3plus-ft", s, "finetune", "shipped weights fine-tuned, no CRF (control)"),
        "v3plus-ft-crfpost": lambda s: _row("v3plus-ft-crfpost", s, "finetune", "+ dense CRF post-processing "
                                            "(DeepLab v2's)", crf=POST, weights_of=f"v3plus-ft-s{s}"),
        "v3plus-ft-crflayer": lambda s: _row("v3plus-ft-crflayer", s, "finetune", "shipped weights fine-tuned "
                                             "with the CRF layer", crf_layer=CRF_LAYER),
    }
    seeds = {"v3plus-mini-crflayer": (0,)}  # the most expensive row: one seed (the "1 seed or more")
    return tuple(made[c](s) for c in _ORDER for s in seeds.get(c, SEEDS))


CRF_ROWS = _rows()
# (a, b, the question): a - b, the seed means over the same val images
COMPARISONS = (
    ("v3plus-mini-crfpost", "v3plus-mini", "does the dense CRF as post-processing help the network from scratch?"),
    ("v3plus-mini-crflayer", "v3plus-mini", "does training with the CRF layer from scratch help?"),
    ("v3plus-mini-crflayer", "v3plus-mini-crfpost", "from scratch, the CRF layer against post-processing:"),
    ("v3plus-ft-crfpost", "v3plus-ft", "does post-processing help the fine-tuned network?"),
    ("v3plus-ft-crflayer", "v3plus-ft", "does fine-tuning with the CRF layer beat fine-tuning without it?"),
    ("v3plus-ft-crflayer", "v3plus-ft-crfpost", "fine-tuned, the CRF layer against post-processing:"),
)
# what the study's reader (``measured``, notebook 12, crf.json's summary) expects: the rows above, the baseline
CRF_EXPECTED = Expected("crf", CRF_ROWS, baseline="v3plus-mini", comparisons=COMPARISONS)


def _iterations(schedule, train_images=TRAIN_IMAGES):
    return schedule["epochs"] * (train_images // schedule["batch_size"])


assert _iterations(SCHEDULES["finetune"]) <= MAX_FINETUNE_ITERATIONS  # the budget for the fine-tuning


_NO_CRF_LAYER = {"crf_layer": None, "crf_pos_w": math.nan, "crf_bi_w": math.nan, "crf_compat": None}  # the table's


def _schedule_of(row, schedules, train_images, val_images) -> dict:
    """A row's schedule: its named one (every setting given) over the ablation's."""
    base = _schedule(EPOCHS, train_images, val_images, CROP_SIZE, BATCH_SIZE, LR, SEED, SCALE_RANGE)
    return row_schedule(row, base, schedules)


def run_crf_study(out="runs/crf", only=None, *, data_root="data/synthetic", val_root=None, train_images=None,
                  val_images=None, results=None, threads=1, timing_images=5, schedules=None, log=print) -> list[dict]:
    """Train and measure the rows of ``CRF_ROWS`` named in ``only`` (all when None; a post-processing row brings
    the row whose weights it uses) that OUT does not hold yet, then write the table of every row OUT holds to
    RESULTS (default OUT): crf.csv, crf.json, crf_per_image.npz, crf_miou.png. schedules: replaces some of
    ``SCHEDULES`` (the tests' tiny ones). Other arguments as ``run_ablation``. Returns the table's records."""
    out = Path(out)
    schedules = {**SCHEDULES, **(schedules or {})}
    rows = select(only, CRF_ROWS)
    if only is not None:
        named = [only] if isinstance(only, str) else list(only)
        for r in rows:
            if r.name not in named:
                log(f"{r.name}: added (a post-processing row evaluates its weights)")
    train_set = T.FirstN(T.open_split(data_root, "train"), train_images)
    classes = list(train_set.dataset.classes)
    val_set = T.FirstN(T.open_val(T.TrainConfig(data_root=str(data_root), val_root=val_root), classes), val_images)
    for name, s in schedules.items():
        if s["batch_size"] > len(train_set):
            raise ValueError(f"schedule {name}: batch size {s['batch_size']} is larger than the {len(train_set)} "
                             f"training images")
        if s["init_from"] is not None and not Path(s["init_from"]).is_file():
            raise FileNotFoundError(f"schedule {name} starts from {s['init_from']}, which does not exist")
    for k, row in enumerate(rows, start=1):
        log(f"[{k}/{len(rows)}] {row.name} (schedule {row.schedule})")
        _run_row(row, out, _schedule_of(row, schedules, len(train_set), len(val_set)), data_root, val_set, classes,
                 threads, timing_images, log)
    table = [{**_NO_CRF_LAYER, **_load_result(out / r.name / "result.json",
                                              _schedule_of(r, schedules, len(train_set), len(val_set)))}
             for r in CRF_ROWS if (out / r.name / "result.json").exists()]
    per_image = {r["name"]: dict(np.load(out / r["name"] / "per_image.npz")) for r in table}
    write_crf_results(table, out if results is None else results, per_image, loss_curves(out, CRF_ROWS))
    return table


# ---------------------------------------------------------------------------------------------- results

_FIRST = ["name", "configuration", "seed", "schedule", "crf", "crf_layer", "miou", "pixel_accuracy", "mean_accuracy"]
_LAST = ["crf_pos_w", "crf_bi_w", "parameters", "mult_adds", "train_seconds", "train_cpu_seconds", "images_per_s",
         "inference_ms", "threads", "final_loss", "epochs", "train_images", "val_images", "crop_size", "batch_size",
         "lr", "scale_min", "scale_max", "init_from", "about"]


def write_crf_results(rows, folder, per_image, curves=None) -> list[Path]:
    """crf.csv, crf.json (the rows, their learned CRF parameters, and ``measured.summarise``'s reading:
    "summary" {configuration: its seed means and spreads}, "missing", "comparisons"), crf_per_image.npz (when
    every row has its per-image matrices), crf_miou.png, and crf_losses.json when curves (row name -> its loss per
    epoch, ``run.loss_curves``) are given. per_image: row name -> {"cms", "trimaps", "widths"}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "configuration": configuration(r["name"]), "init_from": _portable(r.get("init_from"))}
            for r in rows]
    names = columns(rows, _FIRST, _LAST)
    paths = [write_table(rows, folder / "crf.csv", names), folder / "crf.json"]
    reading = summarise(CRF_EXPECTED, rows, per_image)
    report = {"rows": [{k: r.get(k) for k in names + ["crf_compat"]} for r in rows],
              "summary": {c["configuration"]: c for c in reading["configurations"]},
              "missing": reading["missing"], "comparisons": reading["comparisons"],
              "schedules": {k: {**v, "init_from": _portable(v["init_from"]), "iterations": _iterations(v)}
                            for k, v in SCHEDULES.items()}}
    paths[1].write_text(json.dumps(json_safe(report), indent=1))
    images = write_per_image(rows, folder / "crf_per_image.npz", per_image)
    paths += [images] if images else []
    if curves is not None:
        paths.append(write_loss_curves(curves, folder / "crf_losses.json"))
    if rows:
        from minideeplab.viz.ablation import plot_seeds

        paths.append(plot_seeds(rows, folder / "crf_miou.png", configuration,
                                "The dense CRF: post-processing against the trained layer"))
    return paths


def _portable(path):
    """A path inside the repository as relative to it (the committed table names no one's home folder)."""
    if not isinstance(path, str):
        return path
    try:
        return str(Path(path).resolve().relative_to(SHIPPED.parents[2]))
    except ValueError:
        return path


def learned_compat(folder=None) -> dict:
    """The CRF layers the study trained, from its crf.json in folder (default data/ablation: no checkpoint
    needed) -> {row name: {"compat": (C, C) float64, "pos_w", "bi_w", "classes": the iou_<class> columns'
    names}}, in the table's order; {} when no CRF-layer row is measured yet (no crf.json: a study not run, as
    ``measured.read_study`` reads it)."""
    if folder is None:
        from minideeplab.data import DATA_DIR

        folder = Path(DATA_DIR) / "ablation"
    path = Path(folder) / "crf.json"
    if not path.is_file():
        return {}
    out = {}
    for r in json.loads(path.read_text())["rows"]:
        if r.get("crf_compat") is not None:
            out[r["name"]] = {"compat": np.asarray(r["crf_compat"], dtype=np.float64), "pos_w": r.get("crf_pos_w"),
                              "bi_w": r.get("crf_bi_w"),
                              "classes": [k[len("iou_"):] for k in r if k.startswith("iou_")]}
    return out


def learned_crf(path) -> dict:
    """A trained CRF layer's parameters from a checkpoint (OUT/<row>/last.pt of a CRF-layer row): {"compat":
    (C, C) float64, "classes": [...], and the kernel weights found (a ``log_<name>`` parameter as ``<name>`` =
    exp of it)}. The compatibility is the one state_dict entry whose name ends in "compat"."""
    from minideeplab.training.checkpoint import load_checkpoint

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


def _hours(row, schedule) -> float:
    """Expected CPU hours of a row: its training steps (none for a post-processing row) and its evaluation."""
    steps = 0 if row.weights_of else _iterations(schedule)
    step = STEP_SECONDS["crf_layer" if row.crf_layer else "plain"]
    ev = EVAL_SECONDS["crfpost" if row.crf else "crf_layer" if row.crf_layer else "plain"]
    return (steps * step + ev) / 3600


def format_crf_rows(rows=CRF_ROWS) -> str:
    """--list: name, seed, schedule, what is trained, the CRF, expected CPU hours (one thread), what it is."""
    lines, total = [], 0.0
    for r in rows:
        s = SCHEDULES[r.schedule]
        h = _hours(r, s)
        total += h
        trained = "-" if r.weights_of else f"{_iterations(s)} it" + (" from shipped" if s["init_from"] else "")
        crf = f"post ({r.crf})" if r.crf else f"layer ({r.crf_layer['n_iters']} it)" if r.crf_layer else "-"
        lines.append([r.name, str(r.seed), r.schedule, trained, crf, f"{h:.2f}", r.about])
    head = ["name", "seed", "schedule", "trained", "CRF", "CPU h", "what"]
    size = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(n) for c, n in zip(cells, size)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * n for n in size])] + [fmt(line) for line in lines] +
                     [f"total: {total:.1f} CPU hours (one thread a row; STEP_SECONDS: this study's measured v3+ step, "
                      f"two studies side by side, and 'minideeplab bench train --crf --threads 1''s CRF/plain ratio; "
                      f"evaluation times guessed)"])


# ---------------------------------------------------------------------------------------------- the study


def _run(out, only=None, *, study=None, epochs=None, crop_size=CROP_SIZE, **options) -> list[dict]:
    """``studies.run_study``'s runner: ``run_crf_study``, which has its schedules (epochs, crop size) fixed."""
    if epochs not in (None, EPOCHS) or crop_size != CROP_SIZE:
        raise ValueError(f"--study crf: its schedules are fixed (see --list: 'ablation' and 'finetune'); --epochs "
                         f"and --crop-size apply to the ablation, got epochs={epochs}, crop_size={crop_size}")
    return run_crf_study(out, only, **options)


def _report(rows) -> str:
    """After a run: each row's mIoU and trimap accuracies (the answer, over seeds: ``measured``, notebook 12)."""
    return "\n".join(f"{r['name']:<28} mIoU {100 * r['miou']:5.1f}  trimap 1px {100 * r['trimap_1']:5.1f}  "
                     f"2px {100 * r['trimap_2']:5.1f}" for r in rows)


CRF = Study("crf", CRF_ROWS, about="the dense CRF as post-processing against the CRF layer trained with the network",
            title="The dense CRF: post-processing or a trained layer", runner=_run, listing=format_crf_rows,
            report=_report, schedules=SCHEDULES)
