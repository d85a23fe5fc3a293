"""Running the study: each row trained by ``train.train`` (the shallow network included, through ``build``),
scored per val image
(with the dense CRF for the ``-crf`` rows), timed, and recorded in OUT/<name>/ (last.pt, result.json,
per_image.npz), so that a rerun skips the finished rows and resumes an interrupted one. ``study``'s docstring
says why each row and the schedule are what they are."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

from minideeplab import train as T
from minideeplab.ablate.measured import configuration
from minideeplab.ablate.results import json_safe, write_results
from minideeplab.training.evaluation import scores as summed_scores
from minideeplab.ablate.study import (BATCH_SIZE, CROP_SIZE, NARROW, ROWS, SCALE_RANGE, SEED, SGD_DEFAULTS,
                                      ShallowFCN, Study, costs, field_of_view, select)

__all__ = ["run_ablation", "row_schedule", "per_image_confusions", "evaluate_crf", "epoch_losses", "loss_curves"]


def build(config, num_classes, device=None):
    """``train.build``, and ``ShallowFCN`` for TrainConfig.model "shallow": the trainer knows only
    ``build_model``'s family; this keeps the ablation's one extra model out of it."""
    if config.model != "shallow":
        return T.build(config, num_classes, device)
    return ShallowFCN(num_classes).to(device=device or config.device, dtype=getattr(torch, config.dtype))


def _schedule(epochs, train_images, val_images, crop_size, batch_size, lr, seed, scale_range=SCALE_RANGE) -> dict:
    return {"epochs": epochs, "train_images": train_images, "val_images": val_images, "crop_size": crop_size,
            "batch_size": batch_size, "lr": lr, "seed": seed, "scale_min": float(scale_range[0]),
            "scale_max": float(scale_range[1])}


@contextlib.contextmanager
def _threads(threads):
    """torch, numba and BLAS on ``threads`` threads inside, as before outside. A row trains, evaluates and is timed
    on them: two studies at one thread each on two cores, each on torch's default (every core), ran 5-9x slower
    than alone, their OpenMP workers spinning for each other's cores; the CRF layer's mean field (numba, and
    NumPy's OpenBLAS) took a second core the same way."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        # numba's first, then torch's: numba's OpenMP layer can set the OpenMP count that torch reads as its own
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads)
            yield
    finally:
        numba.set_num_threads(before[1])
        torch.set_num_threads(before[0])


def _inference_ms(run, images) -> float:
    """Median milliseconds of run(image) over ``images`` after one warm-up call."""
    run(images[0])
    times = []
    for image in images:
        tic = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - tic)
    return 1000 * statistics.median(times)


def _crf_refine(params):
    from minideeplab.scratch.crf import PARAMETER_SETS, dense_crf

    if isinstance(params, str):
        if params not in PARAMETER_SETS:
            raise ValueError(f"crf must be one of {', '.join(map(repr, PARAMETER_SETS))}, got {params!r}")
        params = PARAMETER_SETS[params]

    def refine(probs, image):
        return dense_crf(probs / probs.sum(0, keepdims=True), image, **params)
    return refine


def per_image_confusions(model, dataset, num_classes, crf=None, widths=T.TRIMAP_WIDTHS):
    """Each image's confusion matrix and trimap confusions, single scale, no flip, as ``train.evaluate`` scores
    them (crf: refine the probabilities with the dense CRF first, a PARAMETER_SETS name or a dict of dense_crf's
    arguments) -> (cms (N, C, C) int64, trimaps (N, len(widths), C, C) int64). Their sums over the images are
    ``train.evaluate``'s matrices; kept per image so that differences between rows can be resampled by image."""
    from minideeplab.data.transforms import IGNORE_INDEX
    from minideeplab.metrics import confusion_matrix, trimap_confusion

    refine, C, N = (_crf_refine(crf) if crf is not None else None), num_classes, len(dataset)
    cms = np.zeros((N, C, C), np.int64)
    trimaps = np.zeros((N, len(widths), C, C), np.int64)
    for i in range(N):
        image, label = dataset[i]
        probs = T.predict(model, image)
        pred = (refine(probs.numpy(), image) if refine else probs.numpy()).argmax(0)
        cms[i] = confusion_matrix(pred, label, C, IGNORE_INDEX)
        trimaps[i] = trimap_confusion(pred, label, widths, C, IGNORE_INDEX)
    return cms, trimaps


def evaluate_crf(model, dataset, classes, crf="deeplab-v2-resnet", widths=T.TRIMAP_WIDTHS) -> dict:
    """``train.evaluate`` (one scale, no flip) with each image's probabilities refined by the dense CRF
    (``scratch.crf.dense_crf``; crf: a PARAMETER_SETS name or a dict of its arguments, n_iters included)."""
    cms, trimaps = per_image_confusions(model, dataset, len(classes), crf, widths)
    return summed_scores(cms.sum(0), trimaps.sum(0), classes, widths, len(dataset))


def _train_seconds(metrics, batch_size) -> tuple[float, float]:
    """(wall, CPU) seconds of training from the checkpoint's per-epoch records (a resumed row counts its earlier
    epochs too). CPU: the training process's, all its threads; nan where an epoch was trained before the records
    had it. Wall time also counts the time the process was stopped or waited for a core."""
    seconds, cpu, it = 0.0, 0.0, 0
    for r in metrics:
        seconds += (r["iteration"] - it) * batch_size / r["images_per_s"]
        cpu += r.get("cpu_seconds", math.nan)
        it = r["iteration"]
    return seconds, cpu


def epoch_losses(metrics) -> list[float]:
    """The mean training loss of each epoch, from a checkpoint's per-epoch records (their raw losses)."""
    return [float(np.mean(r["losses"])) if r.get("losses") else float(r["loss"]) for r in metrics]


def loss_curves(out, rows) -> dict[str, list[float]]:
    """{row name: its loss per epoch} of the rows OUT holds a result of and that trained weights of their own (a
    post-processing row has none): from result.json's "loss_curve", else from the row's last.pt (rows measured
    before the curve was recorded)."""
    curves = {}
    for r in rows:
        folder = Path(out) / r.name
        if r.weights_of is not None or not (folder / "result.json").exists():
            continue
        curve = json.loads((folder / "result.json").read_text()).get("loss_curve")
        if curve is None and (folder / "last.pt").exists():
            curve = epoch_losses(T.load_checkpoint(folder / "last.pt")["metrics"])
        if curve is not None:
            curves[r.name] = curve
    return curves


def _record(row, classes, scores, cost, schedule, train_seconds, images, inference_ms, threads, final_loss,
            train_cpu_seconds=math.nan):
    record = {"name": row.name, "model": row.model, "backbone": row.backbone, "output_stride": row.output_stride,
              "atrous_rates": tuple(row.atrous_rates), "image_pooling": row.image_pooling, "decoder": row.decoder,
              "crf": row.crf, "field_of_view": field_of_view(row), **cost,
              "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
              "mean_accuracy": scores["mean_accuracy"]}
    record.update({f"trimap_{w}": a for w, a in scores["trimap_accuracy"].items()})
    record.update({f"iou_{c}": scores["per_class_iou"][c] for c in classes})
    speed = images / train_seconds if train_seconds else math.nan
    record.update({"train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds, "images_per_s": speed,
                   "inference_ms": inference_ms, "threads": threads, "final_loss": final_loss, **SGD_DEFAULTS,
                   **schedule, "about": row.about})
    return record


def _crf_layer_record(row, weights) -> dict:
    """A CRF layer's options and learned parameters (a row with ``crf_layer``)."""
    return {"crf_layer": ",".join(f"{k}={v}" for k, v in sorted(row.crf_layer.items())) or "defaults",
            "crf_pos_w": float(weights["crf.log_pos_w"].float().exp()),
            "crf_bi_w": float(weights["crf.log_bi_w"].float().exp()),
            "crf_compat": weights["crf.compat"].float().tolist()}


def _check_schedule(path, record, schedule):
    differ = {k: (record.get(k), v) for k, v in schedule.items() if record.get(k) != v}
    if differ:
        what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was measured with {what}: one --out folder holds one schedule; use another "
                         f"--out, or delete {path.parent} to measure the row again")


_SCHEDULE_KEYS = {"epochs", "batch_size", "crop_size", "lr", "scale_range", "init_from", "optimizer", "weight_decay",
                  "warmup_iters"}


def row_schedule(row, schedule, schedules=None) -> dict:
    """The schedule a row trains with: the run's, with the row's own seed, and the settings of its named schedule
    (``Row.schedule``, a key of ``schedules``: its study's) with the name; what its result.json must match.
    An unknown name, or a schedule setting something else: ValueError naming it."""
    if row.seed is not None:  # a study repeating a configuration over seeds
        schedule = schedule | {"seed": row.seed}
    if row.schedule is None:
        return schedule
    schedules = {} if schedules is None else schedules
    if row.schedule not in schedules:
        raise ValueError(f"row {row.name}: schedule must be one of its study's ({', '.join(map(repr, schedules))}), "
                         f"got {row.schedule!r}")
    settings = dict(schedules[row.schedule])
    unknown = sorted(set(settings) - _SCHEDULE_KEYS)
    if unknown:
        raise ValueError(f"schedule {row.schedule!r}: {unknown[0]!r} is not a setting a schedule can change; "
                         f"they are {', '.join(sorted(_SCHEDULE_KEYS))}")
    if "scale_range" in settings:
        lo, hi = settings.pop("scale_range")
        settings |= {"scale_min": float(lo), "scale_max": float(hi)}
    return schedule | settings | {"schedule": row.schedule}


def _load_result(path, schedule):
    record = {**SGD_DEFAULTS, **json.loads(path.read_text())}  # rows measured before recipes existed: SGD
    record.pop("loss_curve", None)  # the table's records are its columns; the curves go to <study>_losses.json
    record["atrous_rates"] = tuple(record["atrous_rates"])
    keep = ("image_pooling", "crf", "crf_layer", "crf_compat", "init_from", "schedule")  # None is a value there
    record = {k: math.nan if v is None and k not in keep else v for k, v in record.items()}
    _check_schedule(path, record, schedule)
    return record


def _run_row(row, out, schedule, data_root, val_set, classes, threads, timing_images, log) -> dict:
    """Train (or resume) the row with ``schedule`` (its own: ``row_schedule``), evaluate it and time its inference,
    all on ``threads`` torch threads."""
    with _threads(threads):
        return _train_and_measure(row, out, schedule, data_root, val_set, classes, threads, timing_images, log)


def _train_and_measure(row, out, schedule, data_root, val_set, classes, threads, timing_images, log) -> dict:
    folder = out / row.name
    result = folder / "result.json"
    if result.exists():
        record = _load_result(result, schedule)
        log(f"{row.name}: measured earlier ({result}), skipped")
        return record
    source = out / (row.weights_of or row.name)
    checkpoint = source / "last.pt"
    if row.weights_of is None:
        config = T.TrainConfig(model=row.model, backbone=row.backbone,
                               output_stride=None if row.model == "shallow" else row.output_stride,
                               data_root=str(data_root), out=str(folder), epochs=schedule["epochs"],
                               batch_size=schedule["batch_size"], crop_size=schedule["crop_size"], lr=schedule["lr"],
                               scale_range=(schedule["scale_min"], schedule["scale_max"]), seed=schedule["seed"],
                               eval_every=0, train_images=schedule["train_images"], model_options=row.model_options(),
                               init_from=schedule.get("init_from"),
                               **{k: schedule.get(k, v) for k, v in SGD_DEFAULTS.items()})
        resume = checkpoint.exists()
        n = schedule["epochs"]
        log(f"{row.name}: {'resuming' if resume else 'training'} ({row.about}; {n} epoch{'s' * (n != 1)}"
            f"{f', from {config.init_from}' if config.init_from and not resume else ''})")
        try:
            T.train(config, resume=resume, quiet=True, log=lambda line: log(f"  {row.name}: {line}"), builder=build)
        except ValueError as e:
            hint = f" (or delete {folder} to train it afresh)" if resume else ""
            raise ValueError(f"row {row.name}: {e}{hint}") from None
    elif not checkpoint.exists():
        raise FileNotFoundError(f"row {row.name} evaluates the weights of row {row.weights_of}, but {checkpoint} "
                                f"does not exist: run row {row.weights_of} first")
    ckpt = T.load_checkpoint(checkpoint)
    if ckpt["iteration"] != schedule["epochs"] * (schedule["train_images"] // schedule["batch_size"]):
        raise ValueError(f"row {row.name}: {checkpoint} is at iteration {ckpt['iteration']}, not the end of "
                         f"{schedule['epochs']} epochs: run row {row.weights_of or row.name} to the end first")
    model, ckpt_classes = T.load_model(checkpoint, builder=build)
    if ckpt_classes != classes:
        raise ValueError(f"{checkpoint} was trained on classes {ckpt_classes}, the data root has {classes}")
    log(f"{row.name}: evaluating on {len(val_set)} val images" + (f" with the dense CRF ({row.crf})" * bool(row.crf)))
    cms, trimaps = per_image_confusions(model, val_set, len(classes), row.crf)
    scores = summed_scores(cms.sum(0), trimaps.sum(0), classes, T.TRIMAP_WIDTHS, len(val_set))
    if row.crf:
        refine = _crf_refine(row.crf)
        run = lambda image: refine(T.predict(model, image).numpy(), image)  # noqa: E731
    else:
        run = lambda image: T.predict(model, image)  # noqa: E731
    images = [val_set[i][0] for i in range(min(timing_images, len(val_set)))]
    ms = _inference_ms(run, images)
    seconds, cpu = _train_seconds(ckpt["metrics"], schedule["batch_size"])
    record = _record(row, classes, scores, costs(row, len(classes)), schedule, seconds,
                     ckpt["iteration"] * schedule["batch_size"], ms, threads, ckpt["metrics"][-1]["loss"], cpu)
    record["loss_curve"] = epoch_losses(ckpt["metrics"]) if row.weights_of is None else None
    if row.crf_layer is not None:  # the CRF trained as a layer: what it learned
        record.update(_crf_layer_record(row, ckpt["model"]))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "per_image.npz", cms=cms, trimaps=trimaps, widths=np.asarray(T.TRIMAP_WIDTHS))
    tmp = result.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(record), indent=1))
    tmp.replace(result)
    log(f"{row.name}: mIoU {100 * record['miou']:.1f}  trimap@{NARROW}px {100 * record[f'trimap_{NARROW}']:.1f}  "
        f"trained {seconds:.0f} s  {ms:.1f} ms/image")
    return record


def run_ablation(out="runs/ablation", only=None, *, study=None, epochs=None, train_images=None,
                 val_images=None, crop_size=CROP_SIZE, batch_size=BATCH_SIZE, lr=None, seed=SEED,
                 scale_range=SCALE_RANGE, data_root="data/synthetic", val_root=None, results=None, threads=1,
                 timing_images=5, log=print) -> list[dict]:
    """Train and measure the rows of ``study`` (a ``study.Study``, as ``studies.get_study`` gives; None: the
    ablation's rows and schedule) named in ``only`` (all when None) that OUT does not hold yet, then write the
    table of every row of the study OUT holds (in the study's order) to RESULTS (default OUT): <study>.csv,
    <study>.json, <study>_miou.png, <study>_trimap.png. Rows train on data_root's train split and are scored on
    val_root's val split (val_root None: data_root's). epochs, lr: None, the study's. train_images / val_images:
    the first N (None: all). seed: of the rows without a seed of their own. threads: torch's and numba's, for
    each row's training, evaluation and timing. Returns the table's records."""
    out = Path(out)
    spec = Study("ablation", ROWS) if study is None else study
    if not isinstance(spec, Study):
        raise TypeError(f"run_ablation: study must be a Study (studies.get_study(name)) or None, got {study!r}")
    epochs = spec.epochs if epochs is None else epochs
    lr = spec.lr if lr is None else lr
    only = [only] if isinstance(only, str) else (None if only is None else list(only))
    rows = select(only, spec.rows)
    if only is not None:
        for r in rows:
            if r.weights_of and r.weights_of not in only:
                log(f"{r.weights_of}: added ({r.name} evaluates its weights)")
    train_set = T.FirstN(T.open_split(data_root, "train"), train_images)
    classes = list(train_set.dataset.classes)
    val_set = T.FirstN(T.open_val(T.TrainConfig(data_root=str(data_root), val_root=val_root), classes), val_images)
    T.TrainConfig(epochs=epochs, batch_size=batch_size, crop_size=crop_size, lr=lr, seed=seed,
                  scale_range=scale_range)  # its errors, early
    schedule = _schedule(epochs, len(train_set), len(val_set), crop_size, batch_size, lr, seed, scale_range)
    if batch_size > len(train_set):
        raise ValueError(f"batch size {batch_size} is larger than the {len(train_set)} training images")
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    for k, row in enumerate(rows, start=1):
        log(f"[{k}/{len(rows)}] {row.name}")
        _run_row(row, out, row_schedule(row, schedule, spec.schedules), data_root, val_set, classes, threads,
                 timing_images, log)
    table = [_load_result(out / r.name / "result.json", row_schedule(r, schedule, spec.schedules))
             for r in spec.rows if (out / r.name / "result.json").exists()]
    per_image = {r["name"]: dict(np.load(out / r["name"] / "per_image.npz")) for r in table
                 if (out / r["name"] / "per_image.npz").exists()}
    over_seeds = any(r.seed is not None for r in spec.rows)  # one plot line per configuration, a dot per seed
    write_results(table, out if results is None else results, per_image, spec.name, spec.title,
                  curves=loss_curves(out, spec.rows), configuration=configuration if over_seeds else None)
    return table
