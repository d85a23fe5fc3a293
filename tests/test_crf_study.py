"""The CRF study's runner (``minideeplab ablate --study crf``) on a tiny schedule: rows trained (from scratch, from
the shipped weights, with and without the CRF layer), post-processing rows, resumption, the results files, and
those files read back by the study's reader (``measured.read_study(CRF_EXPECTED)``, ``learned_compat``: notebook
12)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from minideeplab.ablate import crf_study as S
from minideeplab.ablate import measured
from minideeplab.ablate.stats import bootstrap_accuracy_interval
from minideeplab.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"
TINY = {name: dict(s, epochs=1, batch_size=2, crop_size=48) for name, s in S.SCHEDULES.items()}
ONLY = ["v3plus-mini-crfpost-s0", "v3plus-mini-crflayer-s0", "v3plus-ft-crfpost-s0", "v3plus-ft-crflayer-s0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("crf-study")
    lines = []
    rows = S.run_crf_study(out / "runs", ONLY, data_root=DATA, train_images=4, val_images=3, results=out / "results",
                           schedules=TINY, timing_images=1, log=lines.append)
    return out, rows, lines


def test_rows_schedules_and_list():
    names = [r.name for r in S.CRF_ROWS]
    assert len(names) == len(set(names)) == 16
    for config in ("v3plus-mini", "v3plus-mini-crfpost", "v3plus-ft", "v3plus-ft-crfpost", "v3plus-ft-crflayer"):
        assert [n for n in names if S.configuration(n) == config] == [f"{config}-s{s}" for s in S.SEEDS]
    assert S.SCHEDULES["finetune"]["init_from"] == str(S.SHIPPED) and S.SHIPPED.is_file()
    assert S._iterations(S.SCHEDULES["finetune"]) == 1875 and S._iterations(S.SCHEDULES["ablation"]) == 3000
    text = S.format_crf_rows()
    assert "v3plus-ft-crflayer-s2" in text and "1875 it from shipped" in text and "CPU hours" in text


def test_the_study_runs_resumes_and_writes_its_results(study, tmp_path):
    out, rows, lines = study
    names = [r["name"] for r in rows]
    assert names == ["v3plus-mini-s0", "v3plus-mini-crfpost-s0", "v3plus-mini-crflayer-s0", "v3plus-ft-s0",
                     "v3plus-ft-crfpost-s0", "v3plus-ft-crflayer-s0"]  # table order; the bases were added
    assert "v3plus-ft-s0: added (a post-processing row evaluates its weights)" in lines
    assert any(f"from {S.SHIPPED}" in ln for ln in lines)
    assert any("kept at their initial values: crf.log_pos_w, crf.log_bi_w, crf.compat" in ln for ln in lines)
    by = {r["name"]: r for r in rows}
    assert by["v3plus-ft-crflayer-s0"]["init_from"] == str(S.SHIPPED) and by["v3plus-mini-s0"]["init_from"] is None
    assert by["v3plus-mini-crfpost-s0"]["crf"] == "deeplab-v2-resnet" and by["v3plus-mini-crfpost-s0"]["crf_layer"] is None
    compat = np.array(by["v3plus-ft-crflayer-s0"]["crf_compat"])
    assert compat.shape == (7, 7) and np.abs(compat - (1 - np.eye(7))).max() > 0  # learned, moved off Potts
    assert by["v3plus-ft-crflayer-s0"]["crf_bi_w"] != 4.0
    # the fine-tuned rows start from the shipped model: far better than two iterations from scratch
    assert by["v3plus-ft-s0"]["miou"] > by["v3plus-mini-s0"]["miou"] + 0.2

    with open(out / "results" / "crf.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["name"] for t in table] == names
    # the committed table names the shipped model relative to the repository, not this machine's folders
    assert {t["init_from"] for t in table} == {"", "data/models/mini_v3plus.pt"}
    assert {"name", "configuration", "seed", "miou", "trimap_1", "trimap_2", "crf", "crf_layer"} <= set(table[0])
    report = json.loads((out / "results" / "crf.json").read_text())
    assert report["summary"]["v3plus-ft"]["seeds"] == [0]
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    d, lo, hi = pairs[("v3plus-mini-crfpost", "v3plus-mini")]["intervals"]["miou"]
    assert d == pytest.approx(by["v3plus-mini-crfpost-s0"]["miou"] - by["v3plus-mini-s0"]["miou"])
    assert lo <= d <= hi
    assert (out / "results" / "crf_miou.png").stat().st_size > 1000
    with np.load(out / "results" / "crf_per_image.npz") as z:
        assert list(z["names"]) == names and z["cms"].shape == (6, 3, 7, 7)

    # the reader on the runner's files (notebook 12): every configuration at seed 0, the other seeds to run
    s = measured.read_study(S.CRF_EXPECTED, out / "results")
    assert [(c["configuration"], c["seeds"]) for c in s["configurations"]] == [(S.configuration(n), [0]) for n in names]
    assert s["configurations"][0]["miou"] == by["v3plus-mini-s0"]["miou"]
    short = ("v3plus-mini", "v3plus-mini-crfpost", "v3plus-ft", "v3plus-ft-crfpost", "v3plus-ft-crflayer")
    assert [(m["configuration"], m["seeds"], m["seeds_expected"]) for m in s["missing"]] == [(c, 1, 3) for c in short]
    assert s["missing"][0]["rows"] == ["v3plus-mini-s1", "v3plus-mini-s2"]
    assert all(set(c["intervals"]) == {"miou", "trimap_1", "trimap_2"} for c in s["comparisons"])
    assert len(s["comparisons"]) == len(S.COMPARISONS)
    vs = {c["configuration"]: c["vs_baseline"] for c in s["configurations"]}["v3plus-ft"]
    assert vs["miou"][0] == pytest.approx(by["v3plus-ft-s0"]["miou"] - by["v3plus-mini-s0"]["miou"])
    assert report["comparisons"][0]["intervals"]["miou"] == pytest.approx(
        list(s["comparisons"][0]["intervals"]["miou"]))  # crf.json's summary is the reader's (same samples)
    # the learned compatibility, from crf.json: no checkpoint needed
    learned = S.learned_compat(out / "results")
    assert list(learned) == ["v3plus-mini-crflayer-s0", "v3plus-ft-crflayer-s0"]
    np.testing.assert_array_equal(learned["v3plus-ft-crflayer-s0"]["compat"], compat)
    assert learned["v3plus-ft-crflayer-s0"]["classes"] == [k[len("iou_"):] for k in table[0] if k.startswith("iou_")]
    assert len(learned["v3plus-ft-crflayer-s0"]["classes"]) == 7
    assert learned["v3plus-ft-crflayer-s0"]["bi_w"] == by["v3plus-ft-crflayer-s0"]["crf_bi_w"]
    assert S.learned_crf(out / "runs" / "v3plus-ft-crflayer-s0" / "last.pt")["compat"] == pytest.approx(compat)
    assert S.learned_compat(tmp_path) == {}  # no crf.json: the study not run

    # a rerun measures nothing again
    again = []
    S.run_crf_study(out / "runs", ONLY, data_root=DATA, train_images=4, val_images=3, results=tmp_path,
                    schedules=TINY, timing_images=1, log=again.append)
    assert sum("measured earlier" in ln for ln in again) == 6 and not any("training" in ln for ln in again)
    # another schedule in the same folder is refused
    with pytest.raises(ValueError, match="was measured with lr="):
        S.run_crf_study(out / "runs", ["v3plus-ft-s0"], data_root=DATA, train_images=4, val_images=3,
                        results=tmp_path, schedules={**TINY, "finetune": dict(TINY["finetune"], lr=0.02)},
                        log=lambda *_: None)


def test_bootstrap_accuracy_interval():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, (20, 3, 3))
    d, lo, hi = bootstrap_accuracy_interval(a, a)
    assert d == lo == hi == 0.0
    b = a.copy()
    b[:, 0, 0] += 100  # b is right more often
    d, lo, hi = bootstrap_accuracy_interval(b, a)
    assert 0 < lo <= d <= hi
    with pytest.raises(ValueError, match="must both be"):
        bootstrap_accuracy_interval(a, a[:3])


def test_command_line(capsys, tmp_path):
    assert main(["ablate", "--study", "crf", "--list"]) == 0
    assert "v3plus-mini-crflayer-s0" in capsys.readouterr().out
    assert main(["ablate", "--study", "crf", "--epochs", "2", "--out", str(tmp_path)]) == 2
    assert "its schedules are fixed" in capsys.readouterr().err
    assert main(["ablate", "--study", "crf", "--only", "v3plus", "--data-root", str(DATA), "--out", str(tmp_path)]) == 2
    assert "unknown row 'v3plus'" in capsys.readouterr().err
