"""The attention study's definition and its runner (the ablation's, ``run_ablation(study=ATTENTION)``) on a tiny
schedule: the 1.5x budget, the rows' own seeds, the table's columns, finished rows skipped, and the files read
back by the study's reader (``measured.read_study(ATTENTION_EXPECTED)``, notebook 11). The study itself is not
run here: its committed files (data/ablation/attention.*) are checked against its rows, and the answer the README
and notebook 11 state against those files."""

import csv
import json
import math
from pathlib import Path

import nbformat
import pytest
import torch
from PIL import Image

from minideeplab import ablate
from minideeplab.ablate import measured
from minideeplab.ablate.attention import ATTENTION_EPOCHS, ATTENTION_EXPECTED, ATTENTION_ROWS, SEEDS, within_budget
from minideeplab.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"


def test_rows_and_budget():
    names = [r.name for r in ATTENTION_ROWS]
    assert len(names) == len(set(names)) == 3 * 3 + 3 + 2 * 2  # 3 seeds x 3, 1 x 3, 2 x 2
    assert names[:8] == [f"{c}-s0" for c in ("cnn-v3plus", "vit-linear", "vit-aspp", "vit-aspp-dec", "segformer",
                                            "vit-na-linear", "vit-linear-adamw", "vit-aspp-adamw")]  # seed 0 first
    own = {r.name: r.schedule for r in ATTENTION_ROWS if r.schedule}
    assert own == {f"vit-{h}-adamw-s{seed}": "adamw" for h in ("linear", "aspp") for seed in (0, 1)}  # the follow-up
    assert ablate.ATTENTION.schedules["adamw"]["optimizer"] == "adamw"
    for config in ("cnn-v3plus", "vit-linear", "vit-aspp"):  # the rows the answer rests on: three seeds
        assert [r.seed for r in ATTENTION_ROWS if r.name.rsplit("-s", 1)[0] == config] == list(SEEDS)
    ratios = within_budget()
    assert set(ratios) == set(names) and all(1 <= v <= 1.5 for pair in ratios.values() for v in pair)
    assert ratios["cnn-v3plus-s0"] == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"rows outside 1.2x of the mini CNN v3\+: vit-linear-s0 \(parameters"):
        within_budget(factor=1.2)
    assert ablate.get_study("attention").epochs == 30 and ablate.get_study("ablation").epochs == ablate.EPOCHS
    with pytest.raises(ValueError, match="study must be one of 'ablation', 'attention', 'crf', got 'crf2'"):
        ablate.get_study("crf2")


def test_every_study_is_one_registry_entry_the_command_line_offers(capsys):
    """A study is its rows and one entry in studies.STUDIES; the command line's --study choices are its names, and
    each study lists and reports through its own hooks (no branch on a study's name in the CLI)."""
    from minideeplab.cli import build_parser

    for name in ablate.STUDIES:
        assert build_parser().parse_args(["ablate", "--study", name]).study == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ablate", "--study", "no-such-study"])
    offered = capsys.readouterr().err.split("choose from ")[1].split(")")[0]
    assert [c.strip(" '") for c in offered.split(",")] == list(ablate.STUDIES)
    assert ablate.get_study("crf").runner is not None and ablate.get_study("attention").runner is None
    assert "CPU hours" in ablate.listing(ablate.get_study("crf"))
    crf_row = {"name": "v3plus-mini-s0", "miou": 0.298, "trimap_1": 0.5, "trimap_2": 0.6}
    assert ablate.report(ablate.get_study("crf"), [crf_row]).split() == [
        "v3plus-mini-s0", "mIoU", "29.8", "trimap", "1px", "50.0", "2px", "60.0"]
    with pytest.raises(TypeError, match="study must be a Study .* got 'attention'"):
        ablate.run_ablation("unused", study="attention")


@pytest.mark.usefixtures("one_torch_thread")
def test_runner_on_a_tiny_schedule(tmp_path, capsys):
    lines = []
    kw = dict(study=ablate.ATTENTION, epochs=1, train_images=2, val_images=2, crop_size=32, batch_size=2,
              data_root=str(DATA), timing_images=1, log=lines.append)
    table = ablate.run_ablation(tmp_path, ["vit-linear-s1", "segformer-s0", "vit-linear-adamw-s0"], **kw)
    assert [r["name"] for r in table] == ["segformer-s0", "vit-linear-adamw-s0", "vit-linear-s1"]  # seed by seed
    # a row with a schedule of its own trains with it (its checkpoint's config) and records it; the others SGD at
    # the study's lr
    adamw = torch.load(tmp_path / "vit-linear-adamw-s0" / "last.pt", weights_only=True)
    recipe = ablate.ATTENTION.schedules["adamw"]
    assert {k: adamw["config"][k] for k in recipe} == recipe
    assert json.loads((tmp_path / "vit-linear-adamw-s0" / "result.json").read_text())["schedule"] == "adamw"
    assert "exp_avg_sq" in next(iter(adamw["optimizer"]["state"].values()))
    assert [(r["optimizer"], r["lr"], r["warmup_iters"]) for r in table] == [
        ("sgd", ablate.LR, 0), ("adamw", 3e-4, 375), ("sgd", ablate.LR, 0)]
    full, table = table, [table[0], table[2]]
    assert [r["seed"] for r in table] == [0, 1] and table[1]["backbone"] == "vit_mini"
    with open(tmp_path / "attention.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == ["sgd", "adamw", "sgd"]
    back = ablate.read_csv(tmp_path / "attention.csv")  # the ablation's reader, on rows without a field of view
    assert [r["miou"] for r in back] == [r["miou"] for r in full] and math.isnan(back[0]["field_of_view"])
    rows = [rows[0], rows[2]]
    assert [r["name"] for r in rows] == ["segformer-s0", "vit-linear-s1"]
    for key in ("seed", "miou", "parameters", "mult_adds", "trimap_2"):
        assert all(r[key] != "" for r in rows), key
    vit_linear = next(r for r in ATTENTION_ROWS if r.name == "vit-linear-s1")
    assert int(rows[1]["parameters"]) == ablate.costs(vit_linear)["parameters"]
    assert json.loads((tmp_path / "vit-linear-s1" / "result.json").read_text())["seed"] == 1
    for f in ("attention.json", "attention_miou.png", "attention_trimap.png", "attention_per_image.npz"):
        assert (tmp_path / f).is_file(), f
    with Image.open(tmp_path / "attention_miou.png") as im:  # a study over seeds: the seeds' two panels, 9 in wide
        assert im.width == 9 * 110
    # the reader on the runner's files: what is there, what is missing, intervals where both sides are measured
    s = measured.read_study(ATTENTION_EXPECTED, tmp_path, n_samples=50)
    assert [(c["configuration"], c["seeds"], c["rows"]) for c in s["configurations"]] == [
        ("vit-linear", [1], ["vit-linear-s1"]), ("segformer", [0], ["segformer-s0"]),
        ("vit-linear-adamw", [0], ["vit-linear-adamw-s0"])]
    assert s["configurations"][0]["miou"] == table[1]["miou"] and s["configurations"][1]["parameters"] == \
        table[0]["parameters"]
    assert [(m["configuration"], m["seeds"], m["seeds_expected"]) for m in s["missing"]] == [
        ("cnn-v3plus", 0, 3), ("vit-linear", 1, 3), ("vit-aspp", 0, 3), ("vit-aspp-dec", 0, 1),
        ("vit-na-linear", 0, 1), ("vit-linear-adamw", 1, 2), ("vit-aspp-adamw", 0, 2)]
    assert s["missing"][1]["rows"] == ["vit-linear-s0", "vit-linear-s2"]
    assert all(c["vs_baseline"] is None for c in s["configurations"])  # no cnn-v3plus row yet
    # one comparison has both sides: the recipe's, AdamW's seed 0 against SGD's seed 1 here
    assert [(c["a"], c["b"]) for c in s["comparisons"] if c["intervals"] is not None] == [
        ("vit-linear-adamw", "vit-linear")]
    against = measured.read_study(ATTENTION_EXPECTED, tmp_path, baseline="vit-linear", n_samples=50)
    d, lo, hi = against["configurations"][1]["vs_baseline"]["miou"]
    assert d == pytest.approx(table[0]["miou"] - table[1]["miou"]) and lo <= d <= hi
    assert set(against["configurations"][1]["vs_baseline"]) == {"miou", "trimap_1", "trimap_2"}
    # did each row fit? its training loss per epoch, in the study's order, the mean of the epoch's raw losses
    curves = measured.read_curves(ATTENTION_EXPECTED, tmp_path)
    assert list(curves) == ["segformer-s0", "vit-linear-adamw-s0", "vit-linear-s1"]
    ckpt = torch.load(tmp_path / "vit-linear-s1" / "last.pt", weights_only=True)
    assert curves["vit-linear-s1"] == [pytest.approx(sum(ckpt["losses"]) / len(ckpt["losses"]), rel=1e-12)]
    # rerun: finished rows skipped, the table rewritten from them; a row measured before result.json kept its
    # curve gets it from its last.pt
    result = tmp_path / "vit-linear-s1" / "result.json"
    record = json.loads(result.read_text())
    del record["loss_curve"]
    result.write_text(json.dumps(record))
    lines.clear()
    again = ablate.run_ablation(tmp_path, ["vit-linear-s1"], **kw)
    assert any("vit-linear-s1: measured earlier" in line for line in lines)
    assert [r["miou"] for r in again] == [r["miou"] for r in full]
    assert measured.read_curves(ATTENTION_EXPECTED, tmp_path) == curves
    assert measured.read_curves(ATTENTION_EXPECTED, tmp_path / "nothing") == {}
    # the command line lists the study with its budget
    assert main(["ablate", "--study", "attention", "--list"]) == 0
    out = capsys.readouterr().out
    assert "vit-na-linear-s0" in out and "within 1.5x of the mini CNN v3+" in out


# ---------------------------------------------------------------- the committed study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "ablation"


def test_committed_study_is_complete_and_consistent():
    """data/ablation/attention.*: every declared row, trained with the study's schedule (its own where the row
    names one) on the 3,000 generated images and scored on the 100 committed val images; its cost the row's; its
    table numbers those of its per-image matrices; a loss curve of 30 epochs."""
    from minideeplab.metrics import mean_iou, pixel_accuracy

    rows = {r["name"]: r for r in ablate.read_csv(SHIPPED / "attention.csv")}
    assert sorted(rows) == sorted(r.name for r in ATTENTION_ROWS)
    per_image = ablate.read_per_image(SHIPPED / "attention_per_image.npz")
    curves = measured.read_curves(ATTENTION_EXPECTED, SHIPPED)
    for row in ATTENTION_ROWS:
        r = rows[row.name]
        want = {"epochs": ATTENTION_EPOCHS, "train_images": 3000, "val_images": 100, "crop_size": ablate.CROP_SIZE,
                "batch_size": ablate.BATCH_SIZE,
                "seed": row.seed, "optimizer": "sgd", "lr": ablate.LR, "warmup_iters": 0, "backbone": row.backbone}
        want |= ablate.ATTENTION.schedules[row.schedule] if row.schedule else {}
        assert {k: r[k] for k in want} == want, row.name
        cost = ablate.costs(row)
        assert (r["parameters"], r["mult_adds"]) == (cost["parameters"], cost["mult_adds"]), row.name
        cms, trimaps = per_image[row.name]["cms"], per_image[row.name]["trimaps"]
        assert cms.shape == (100, 7, 7) and mean_iou(cms.sum(0)) == pytest.approx(r["miou"], rel=1e-12)
        assert [pixel_accuracy(t) for t in trimaps.sum(0)] == pytest.approx(
            [r[f"trimap_{w}"] for w in (1, 2, 4, 8, 16)], rel=1e-12)
        assert len(curves[row.name]) == ATTENTION_EPOCHS and curves[row.name][-1] < curves[row.name][0], row.name


def _flat(text):
    return " ".join(text.split())


def test_the_answer_the_readme_and_notebook_state_is_the_committed_one():
    """The README and notebook 11 state the study's answer in words; the numbers in them are the reader's, on the
    committed files (``measured.read_study``'s default bootstrap), so a rerun study cannot leave them stale."""
    s = measured.read_study(ATTENTION_EXPECTED, SHIPPED)
    assert not s["missing"]
    notebook = nbformat.read(ROOT / "solutions" / "11_attention.ipynb", as_version=4)
    texts = {"README.md": _flat((ROOT / "README.md").read_text()),
             "notebook 11": _flat(" ".join(c.source for c in notebook.cells if c.cell_type == "markdown"))}
    by = {r["configuration"]: r for r in s["configurations"]}
    for c in s["comparisons"]:
        if (c["a"], c["b"]) not in {("vit-aspp", "vit-linear"), ("vit-aspp-adamw", "vit-linear-adamw"),
                                    ("vit-linear-adamw", "vit-linear")}:
            continue
        d, lo, hi = (100 * v for v in c["intervals"]["miou"])
        stated = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        for where, text in texts.items():
            assert stated in text, f"{where} does not state {c['a']} - {c['b']} as measured: {stated}"
    for config in ("vit-linear", "vit-aspp", "vit-linear-adamw", "vit-aspp-adamw"):
        mean = f"{100 * by[config]['miou']:.1f} %"
        for where, text in texts.items():
            assert mean in text, f"{where} does not state {config}'s mean mIoU as measured: {mean}"
