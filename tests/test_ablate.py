"""minideeplab.ablate and `minideeplab ablate`: a tiny study (1 epoch, 16 train / 8 val images, 64 px crops) writes
the table, the JSON and the plots with the model's own counts; a rerun trains nothing; an interrupted row resumes;
another schedule in the same folder, an unknown row and a missing base are clear errors; ``trends`` says "holds"
and "does not hold" where it should."""

import csv
import json
import math
import shutil
from pathlib import Path

import numba
import numpy as np
import pytest
import threadpoolctl
import torch
from PIL import Image

from minideeplab import ablate as A
from minideeplab.ablate import results as A_results
from minideeplab.ablate import run as A_run
from minideeplab.ablate import study as A_study
from minideeplab import train as T
from minideeplab.bench.cost import model_mult_adds
from minideeplab.cli import build_parser, main
from minideeplab.reference.deeplab import build_model

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"
# lr and scales of the schedule these tests were written for: after 2 steps at lr 0.05 the model predicts one
# class everywhere, and the CRF can change nothing
TINY = dict(epochs=1, train_images=16, val_images=8, crop_size=64, data_root=str(DATA), timing_images=2, lr=0.01,
            scale_range=(0.5, 2.0))
ONLY = ["shallow", "fcn", "v3plus-os16-crf"]  # the CRF row brings v3plus-os16
CLASSES = ["background", "disc", "square", "triangle", "ring", "cross", "star"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("ablation")
    lines = []
    rows = A.run_ablation(out, ONLY, log=lines.append, **TINY)
    return out, rows, lines


def _same(a, b):
    """Records equal, nan equal to nan."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), k
        else:
            assert x == y, (k, x, y)


# ---------------------------------------------------------------- the tiny study


def test_tiny_study_writes_the_table_with_the_models_own_counts(study):
    out, rows, lines = study
    assert [r["name"] for r in rows] == ["shallow", "fcn", "v3plus-os16", "v3plus-os16-crf"]  # table order
    assert "v3plus-os16: added (v3plus-os16-crf evaluates its weights)" in lines
    assert any(line.startswith("  fcn: epoch 1/1") for line in lines), lines  # the trainer's lines, per row

    with open(out / "ablation.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == (A_results._FIRST + [f"trimap_{w}" for w in (1, 2, 4, 8, 16)] + [f"iou_{c}" for c in CLASSES]
                      + A_results._LAST)
    assert header[:5] == ["name", "model", "backbone", "output_stride", "atrous_rates"]
    for back, row in zip(A.read_csv(out / "ablation.csv"), rows, strict=True):
        _same(back, row)
    for back, row in zip(json.loads((out / "ablation.json").read_text()), rows, strict=True):
        assert list(back) == header
        assert back["atrous_rates"] == list(row["atrous_rates"]) and back["miou"] == row["miou"]
    for name in ("ablation_miou.png", "ablation_trimap.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200

    by = {r["name"]: r for r in rows}
    v3plus = {"atrous_rates": (2, 4, 6), "image_pooling": True}
    for name, model, os_, options in [("fcn", "v2", 32, {"atrous_rates": (1,)}), ("v3plus-os16", "v3plus", 16, v3plus)]:
        module = build_model(model, "mini", os_, 7, **options)
        assert by[name]["parameters"] == sum(p.numel() for p in module.parameters())
        macs = model_mult_adds(model, "mini", os_, 7, (128, 128), **options)
        assert by[name]["mult_adds"] == sum(macs.values())
    shallow = A.ShallowFCN(7)
    assert by["shallow"]["parameters"] == sum(p.numel() for p in shallow.parameters()) < 20_000
    state = torch.load(out / "shallow" / "last.pt", weights_only=True)["model"]
    assert state.keys() == shallow.state_dict().keys()
    for r in rows:
        assert 0 <= r["miou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1, r
        assert all(0 <= r[f"trimap_{w}"] <= 1 for w in (1, 2, 4, 8, 16)), r
        assert r["train_seconds"] > 0 and r["images_per_s"] > 0 and r["inference_ms"] > 0 and r["threads"] == 1
        assert 0 < r["train_cpu_seconds"] < 3 * r["train_seconds"]  # one thread: about the wall time, not 0
        assert (r["epochs"], r["train_images"], r["val_images"], r["crop_size"]) == (1, 16, 8, 64)
    # the CRF row: v3plus-os16's weights (nothing trained for it), its time, the CRF's own inference time
    crf, base = by["v3plus-os16-crf"], by["v3plus-os16"]
    assert not (out / "v3plus-os16-crf" / "last.pt").exists()
    assert crf["crf"] == "deeplab-v2-resnet" and base["crf"] is None
    assert (crf["train_seconds"], crf["parameters"], crf["final_loss"]) == (base["train_seconds"], base["parameters"],
                                                                            base["final_loss"])
    assert crf["inference_ms"] > base["inference_ms"]


def test_per_image_confusions_sum_to_the_table(study):
    """ablation_per_image.npz holds every row's val images' confusion matrices, in table order: summed, they
    give the row's mIoU and trimap accuracies exactly."""
    from minideeplab.metrics import mean_iou, pixel_accuracy

    out, rows, _ = study
    per_image = A.read_per_image(out / "ablation_per_image.npz")
    assert list(per_image) == [r["name"] for r in rows] + ["widths"] and per_image["widths"] == [1, 2, 4, 8, 16]
    for r in rows:
        cms, trimaps = per_image[r["name"]]["cms"], per_image[r["name"]]["trimaps"]
        assert cms.shape == (8, 7, 7) and trimaps.shape == (8, 5, 7, 7) and cms.dtype == np.int64
        assert mean_iou(cms.sum(0)) == r["miou"]
        assert [pixel_accuracy(t) for t in trimaps.sum(0)] == [r[f"trimap_{w}"] for w in (1, 2, 4, 8, 16)]
    with pytest.raises(FileNotFoundError, match="nowhere.npz does not exist"):
        A.read_per_image(out / "nowhere.npz")
    # a table without every row's matrices removes an earlier file rather than leave one that does not match
    A.write_results(rows, out / "again", {r["name"]: per_image[r["name"]] | {"widths": np.array(per_image["widths"])}
                                          for r in rows})
    assert (out / "again" / "ablation_per_image.npz").exists()
    A.write_results(rows, out / "again", {rows[0]["name"]: per_image[rows[0]["name"]]})
    assert not (out / "again" / "ablation_per_image.npz").exists()


def test_crf_evaluation_without_iterations_is_the_plain_evaluation(study):
    """evaluate_crf's loop with n_iters=0 (the CRF returns its normalised input) scores as train.evaluate."""
    out, _, _ = study
    model, classes = T.load_model(out / "v3plus-os16" / "last.pt")
    data = T.FirstN(T.open_split(DATA, "val"), 2)
    plain = T.evaluate(model, data, classes, quiet=True)
    none = A.evaluate_crf(model, data, classes, crf={"n_iters": 0})
    assert none["miou"] == plain["miou"] and none["trimap_accuracy"] == plain["trimap_accuracy"]
    by = {r["name"]: r for r in study[1]}  # with its ten iterations the CRF does change the scores
    assert [by["v3plus-os16-crf"][f"trimap_{w}"] for w in (1, 2, 4, 8, 16)] != \
           [by["v3plus-os16"][f"trimap_{w}"] for w in (1, 2, 4, 8, 16)]


def test_rerun_skips_finished_rows(study, monkeypatch):
    out, rows, _ = study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*")}

    def refuse(*a, **k):
        raise AssertionError("a finished row was trained or evaluated again")

    monkeypatch.setattr(T, "train", refuse)
    monkeypatch.setattr(T, "evaluate", refuse)
    monkeypatch.setattr(A_run, "evaluate_crf", refuse)
    lines = []
    again = A.run_ablation(out, ONLY, log=lines.append, **TINY)
    for a, b in zip(again, rows, strict=True):
        _same(a, b)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*")} == stamps
    assert sum("skipped" in line for line in lines) == 4


def test_an_interrupted_row_resumes_from_its_checkpoint(study, tmp_path, monkeypatch):
    """A row with last.pt and no result.json (stopped after training, or mid-training) goes through train(...,
    resume=True), which here has nothing left to do; the scores are those of the first run."""
    out, rows, _ = study
    (tmp_path / "shallow").mkdir()
    shutil.copy(out / "shallow" / "last.pt", tmp_path / "shallow" / "last.pt")
    calls, original = [], T.train

    def spy(config, resume=False, **kw):
        calls.append(resume)
        return original(config, resume=resume, **kw)

    monkeypatch.setattr(T, "train", spy)
    lines = []
    (row,) = A.run_ablation(tmp_path, ["shallow"], log=lines.append, **TINY)
    assert calls == [True] and "shallow: resuming" in lines[1]
    first = next(r for r in rows if r["name"] == "shallow")
    assert (row["miou"], row["trimap_2"], row["train_seconds"]) == (first["miou"], first["trimap_2"],
                                                                    first["train_seconds"])


def test_a_row_trains_on_the_threads_it_is_given(tmp_path, monkeypatch):
    """--threads is the row's training's thread count too, torch's, numba's and BLAS's (two studies side by side
    at one thread each; the CRF layer's mean field is numba and NumPy), and the counts before come back
    afterwards, whatever happened in between."""
    seen = []

    def stop(config, resume=False, **kw):
        blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        seen.append((torch.get_num_threads(), numba.get_num_threads(), blas))
        raise KeyboardInterrupt  # stopped mid-training

    monkeypatch.setattr(T, "train", stop)
    saved = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(1)  # (numba's first: its OpenMP layer can set OpenMP's count, which is torch's)
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            before = torch.get_num_threads(), numba.get_num_threads()
            threads = 2  # differs from every count before (numba's where numba may use two)
            with pytest.raises(KeyboardInterrupt):
                A.run_ablation(tmp_path, ["shallow"], log=lambda line: None, threads=threads, **TINY)
            blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert seen == [(threads, min(threads, numba.config.NUMBA_NUM_THREADS), [threads] * len(blas))]
        assert blas == [1] * len(blas) and (torch.get_num_threads(), numba.get_num_threads()) == before
    finally:
        numba.set_num_threads(saved[1])
        torch.set_num_threads(saved[0])


def test_val_root_scores_the_rows_on_another_folder(study, tmp_path, capsys):
    """A finished row re-scored against another val folder is a new schedule (val_images differs), so it goes in
    a new OUT; there the rows train on --data-root and score on --val-root's val split. A val root with other
    classes is refused."""
    from minideeplab.data.synthetic import generate

    other = generate(tmp_path / "other", seed=3, n_train=0, n_val=3, size=64, progress=False)
    (row,) = A.run_ablation(tmp_path / "out", ["shallow"], log=lambda _: None,
                            **{**TINY, "val_images": None, "val_root": str(other)})
    assert row["val_images"] == 3 and row["train_images"] == 16
    assert (row["scale_min"], row["scale_max"], row["lr"]) == (0.5, 2.0, 0.01)
    (other / "classes.txt").write_text("background\ncat\n")
    assert main(["ablate", "--out", str(tmp_path / "x"), "--data-root", str(DATA), "--val-root", str(other),
                 "--only", "shallow"]) == 2
    assert f"val root {other} has classes ['background', 'cat']" in capsys.readouterr().err


def test_one_folder_holds_one_schedule(study, monkeypatch):
    out, _, _ = study
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("trained before checking the schedule"))
    with pytest.raises(ValueError, match=r"result.json was measured with epochs=1 \(now 2\): one --out folder"):
        A.run_ablation(out, ["fcn"], log=lambda _: None, **{**TINY, "epochs": 2})


def test_a_row_schedule_is_the_runs_with_the_rows_own_settings():
    """One mechanism for every study's rows of their own (the CRF study's fine-tuning, the attention study's
    AdamW): Row.schedule names one of its study's schedules, merged over the run's, the name recorded."""
    base = A_run._schedule(8, 3000, 100, 128, 8, 0.05, 0)
    assert A_run.row_schedule(A.Row("a", "v3", 16), base, {"x": {"lr": 1.0}}) == base  # no schedule: the run's
    assert A_run.row_schedule(A.Row("a", "v3", 16, seed=2), base) == base | {"seed": 2}
    own = A.Row("a-s1", "v3", 16, seed=1, schedule="ft")
    settings = {"ft": dict(epochs=5, lr=0.01, scale_range=(0.5, 2), init_from="w.pt", optimizer="adamw")}
    assert A_run.row_schedule(own, base, settings) == base | dict(
        seed=1, epochs=5, lr=0.01, scale_min=0.5, scale_max=2.0, init_from="w.pt", optimizer="adamw", schedule="ft")
    with pytest.raises(ValueError, match=r"row a-s1: schedule must be one of its study's \('x'\), got 'ft'"):
        A_run.row_schedule(own, base, {"x": {}})
    with pytest.raises(ValueError, match=r"row a-s1: schedule must be one of its study's \(\), got 'ft'"):
        A_run.row_schedule(own, base)
    with pytest.raises(ValueError, match="schedule 'ft': 'momentum' is not a setting a schedule can change"):
        A_run.row_schedule(own, base, {"ft": {"momentum": 0.5}})
    # the studies' own: the CRF study's fine-tuning and the attention study's AdamW, through the same function
    crf, attention = A.get_study("crf"), A.get_study("attention")
    ft = next(r for r in crf.rows if r.name == "v3plus-ft-s2")
    got = A_run.row_schedule(ft, base, crf.schedules)
    assert (got["epochs"], got["lr"], got["seed"], got["schedule"], got["init_from"]) == (
        5, 0.01, 2, "finetune", crf.schedules["finetune"]["init_from"])
    adamw = next(r for r in attention.rows if r.schedule)
    assert A_run.row_schedule(adamw, base, attention.schedules) == base | attention.schedules["adamw"] | {
        "schedule": "adamw"}


def test_a_crf_row_needs_its_base_weights(tmp_path):
    crf = A_study._BY_NAME["v3plus-os16-crf"]
    schedule = A_run._schedule(1, 16, 8, 64, 8, 0.01, 0)
    with pytest.raises(FileNotFoundError, match="evaluates the weights of row v3plus-os16, but .* does not exist"):
        A_run._run_row(crf, tmp_path, schedule, DATA, None, CLASSES, 1, 2, lambda _: None)


# ---------------------------------------------------------------- the table of configurations


def test_rows_read_as_the_papers_table():
    names = [r.name for r in A.ROWS]
    assert len(set(names)) == len(names)
    assert {"fcn", "v1", "v2", "v3-os32", "v3-os16", "v3-os8", "v3-os16-nopool", "v3plus-os16",
            "v3plus-os16-crf", "shallow"} <= set(names)
    by = A_study._BY_NAME
    assert by["fcn"].model_options() == {"atrous_rates": (1,)} and by["fcn"].output_stride == 32
    assert by["v1"].model_options() == {"atrous_rates": (4,), "fc_channels": 256}
    assert by["v3-os16-nopool"].model_options()["image_pooling"] is False
    assert [by[f"v3-os{s}"].atrous_rates for s in (32, 16, 8)] == [(1, 2, 3), (2, 4, 6), (4, 8, 12)]
    for r in A.ROWS:
        assert (r.crf is None) == (r.weights_of is None)
        if r.weights_of:  # the same model as its base
            assert by[r.weights_of][1:5] == r[1:5] and by[r.weights_of].crf is None
    assert build_parser().parse_args(["ablate"]).epochs is None  # the study's: A.EPOCHS for this one
    assert A.get_study("ablation").epochs == A.EPOCHS


def test_select_keeps_table_order_and_brings_a_crf_rows_base():
    assert [r.name for r in A.select(["v3plus-os16-crf", "fcn"])] == ["fcn", "v3plus-os16", "v3plus-os16-crf"]
    assert A.select(None) == list(A.ROWS)
    with pytest.raises(ValueError, match=r"--only: unknown row 'v4'; the rows are shallow, fcn, v1, "):
        A.select(["fcn", "v4"])


def test_unknown_row_on_the_command_line(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path / "x"), "--data-root", str(DATA), "--only", "v3", "fcn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minideeplab ablate: error: --only: unknown row 'v3'; the rows are shallow, fcn")
    assert not (tmp_path / "x").exists()


def test_field_of_view():
    """By hand for the mini ResNet (stem 7x7/2, max pool 3x3/2, one 3x3 per bottleneck): shallow 7 + 2*2
    (pool) + 2*4 (layer1) + 2*4 (head) = 27; fcn at OS 32 reaches 235 after layer4, + 2*32 (head) = 299."""
    by = A_study._BY_NAME
    assert A.field_of_view(by["shallow"]) == 27
    assert A.field_of_view(by["fcn"]) == 299
    assert A.field_of_view(by["v3plus-os16"]) == A.field_of_view(by["v3-os16"]) - 2 * 16 + 16


def test_shallow_network_sees_27_pixels():
    """The measured field: the input gradient of one class score of ShallowFCN (before the x4 resize) spans
    exactly 27 x 27 pixels. All-positive weights, so that no ReLU cuts a path, and the max pool replaced by an
    average pool of its shape (3x3, stride 2, padding 1), whose gradient reaches its whole window."""
    torch.manual_seed(0)
    net = A.ShallowFCN(7).eval()
    for p in net.parameters():
        p.data.abs_().add_(0.01)
    net.backbone.maxpool = torch.nn.AvgPool2d(3, 2, 1)
    x = torch.zeros(1, 3, 96, 96, requires_grad=True)
    b = net.backbone
    s = net.classifier(b.layer1(b.maxpool(torch.relu(b.bn1(b.conv1(x + 1))))))
    s[0, 0, 12, 12].backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (27, 27)


def test_list_prints_every_configuration(capsys):
    assert main(["ablate", "--list"]) == 0
    text = capsys.readouterr().out
    for r in A.ROWS:
        assert f"\n{r.name} " in text
    assert "27" in text.splitlines()[2]  # shallow's field of view


# ---------------------------------------------------------------- trends


def _rows(**values):
    """Hand-made records: name -> (mIoU, trimap accuracy at 2 px), as fractions."""
    return [{"name": n.replace("_", "-"), "miou": m, "trimap_2": t, "seed": 0} for n, (m, t) in values.items()]


PAPERLIKE = dict(shallow=(0.30, 0.50), fcn=(0.35, 0.45), v1=(0.40, 0.52), v2=(0.45, 0.55),
                 v3_os32=(0.44, 0.50), v3_os16=(0.50, 0.58), v3_os8=(0.52, 0.62), v3_os16_nopool=(0.48, 0.57),
                 v3_os16_paper_rates=(0.47, 0.56), v3_os8_paper_rates=(0.49, 0.60), v3plus_os16=(0.55, 0.66),
                 v3plus_os8=(0.56, 0.70), v3plus_os16_crf=(0.56, 0.68))


def test_trends_hold_on_a_table_that_shows_them():
    lines = A.trends(_rows(**PAPERLIKE))
    assert lines[0] == "v3plus-os16 beats fcn by 20.0 mIoU points (55.0 vs 35.0; the course asks >= 10: holds)"
    assert lines[1] == ("output stride (v3), trimap accuracy at 2 px: v3-os8 62.0, v3-os16 58.0, v3-os32 50.0 "
                        "(a smaller output stride places boundaries better: holds)")
    assert "v3plus-os16 beats v3-os16 by 8.0 trimap-2px points (66.0 vs 58.0; the decoder improves boundary " \
           "accuracy: holds)" in lines
    assert any(line.startswith("CRF on v3plus-os16: mIoU +1.0 points") and line.endswith("holds)") for line in lines)
    assert lines[-2] == ("v3plus-os16 beats shallow by 25.0 mIoU points (55.0 vs 30.0; a small field of view does "
                         "clearly worse, >= 10 points: holds)")
    assert not [line for line in lines if "does not hold" in line or "not measured" in line]


def test_trends_say_where_they_do_not_hold():
    worse = {**PAPERLIKE, "fcn": (0.50, 0.45), "v3_os16": (0.50, 0.49), "shallow": (0.49, 0.50),
             "v3plus_os16_crf": (0.54, 0.69)}
    lines = A.trends(_rows(**worse))
    assert lines[0] == "v3plus-os16 beats fcn by 5.0 mIoU points (55.0 vs 50.0; the course asks >= 10: does not hold)"
    assert lines[1] == ("output stride (v3), trimap accuracy at 2 px: v3-os8 62.0, v3-os16 49.0, v3-os32 50.0 "
                        "(a smaller output stride places boundaries better: does not hold; not where v3-os32 50.0 "
                        ">= v3-os16 49.0)")
    assert any(line.startswith("CRF on v3plus-os16: mIoU -1.0 points") and line.endswith("does not hold)")
               for line in lines)
    assert "a small field of view does clearly worse, >= 10 points: does not hold)" in lines[-2]
    fewer = A.trends(_rows(fcn=(0.3, 0.4), v3plus_os16=(0.2, 0.5)))
    assert fewer[0] == "v3plus-os16 trails fcn by 10.0 mIoU points (20.0 vs 30.0; the course asks >= 10: does not hold)"
    assert "v3plus-os16 vs shallow, mIoU: not measured: needs row shallow" in fewer


# ---------------------------------------------------------------- the shipped study


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "ablation"


def test_shipped_study_is_complete_and_consistent():
    """data/ablation holds every row, measured with the study's schedule on the 3,000 generated images and the
    100 committed val images; its per-image matrices give the table's numbers; the plots are there."""
    from minideeplab.metrics import mean_iou, pixel_accuracy

    rows = A.read_csv(SHIPPED / "ablation.csv")
    assert [r["name"] for r in rows] == [r.name for r in A.ROWS]
    for r in rows:
        assert (r["epochs"], r["train_images"], r["val_images"], r["batch_size"], r["crop_size"]) == \
               (A.EPOCHS, 3000, 100, A.BATCH_SIZE, A.CROP_SIZE), r["name"]
        assert (r["lr"], r["scale_min"], r["scale_max"], r["seed"]) == (A.LR, *A.SCALE_RANGE, A.SEED), r["name"]
        assert 0 < r["miou"] < 1 and r["train_seconds"] > 0 and r["inference_ms"] > 0
    for back, row in zip(json.loads((SHIPPED / "ablation.json").read_text()), rows, strict=True):
        assert back["name"] == row["name"] and back["miou"] == row["miou"]
    per_image = A.read_per_image(SHIPPED / "ablation_per_image.npz")
    for r in rows:
        cms, trimaps = per_image[r["name"]]["cms"], per_image[r["name"]]["trimaps"]
        assert cms.shape == (100, 7, 7)
        assert mean_iou(cms.sum(0)) == pytest.approx(r["miou"], rel=1e-12)
        assert [pixel_accuracy(t) for t in trimaps.sum(0)] == pytest.approx([r[f"trimap_{w}"] for w in
                                                                             (1, 2, 4, 8, 16)], rel=1e-12)
    for name in ("ablation_miou.png", "ablation_trimap.png"):
        with Image.open(SHIPPED / name) as im:
            assert im.format == "PNG"


def test_shipped_long_runs_are_the_readme_runs():
    """long_runs.json: three 30-epoch runs with the shipped model's recipe; its v3+ entry is the shipped model's
    own record, and each run's config is the README command's (model, output stride, rates)."""
    long_runs = json.loads((SHIPPED / "long_runs.json").read_text())
    assert list(long_runs) == ["v3plus-os16", "v3-os16", "fcn"]
    shipped = torch.load(Path(__file__).resolve().parents[1] / "data" / "models" / "mini_v3plus.pt",
                         weights_only=True)
    assert [r["miou"] for r in long_runs["v3plus-os16"]["metrics"]] == [r["miou"] for r in shipped["metrics"]
                                                                        if "miou" in r]
    for name, model, os_, rates in (("v3-os16", "v3", None, [2, 4, 6]), ("fcn", "v2", 32, [1])):
        config = long_runs[name]["config"]
        assert (config["model"], config["output_stride"], config["model_options"]["atrous_rates"]) == \
               (model, os_, rates)
        keys = ("epochs", "lr", "scale_range", "data_root", "val_root")
        assert json.loads(json.dumps({k: config[k] for k in keys})) == \
               json.loads(json.dumps({k: shipped["config"][k] for k in keys}))  # tuples as JSON's lists
        assert long_runs[name]["metrics"][-1]["iteration"] == 11250
