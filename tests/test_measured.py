"""The reader of a study over seeds (minideeplab.ablate.measured) on files written here by the runners' own writers
(results.write_table, results.write_per_image) with the runners' own row names (attention.ATTENTION_EXPECTED,
crf_study.CRF_EXPECTED): means and spreads, the paired bootstrap against the baseline, the rows not yet
measured; the seed-mean bootstrap (stats.bootstrap_seeds_interval); a CRF layer read from a checkpoint. The
chain from the real runners to the reader is tested beside each runner (test_ablate_attention, test_crf_study)."""

import math

import numpy as np
import pytest
import torch

from minideeplab.ablate import measured as M
from minideeplab.ablate.attention import ATTENTION_EXPECTED, ATTENTION_ROWS
from minideeplab.ablate.crf_study import CRF_EXPECTED, CRF_ROWS, learned_crf
from minideeplab.ablate.results import read_per_image, write_per_image, write_table
from minideeplab.ablate.stats import (bootstrap_accuracy_interval, bootstrap_interval, bootstrap_seeds_interval,
                                      mean_ious)
from minideeplab.training.checkpoint import save_checkpoint

WIDTHS = (1, 2, 4)


def cms_of(rng, n_images=12, C=3, accuracy=0.8):
    """(n_images, C, C) per-image confusion matrices of a plausible model."""
    cms = np.zeros((n_images, C, C), np.int64)
    for i in range(n_images):
        for t in range(C):
            n = int(rng.integers(50, 200))
            right = int(n * np.clip(rng.normal(accuracy, 0.1), 0, 1))
            cms[i, t, t] = right
            cms[i, t] += np.bincount(rng.choice([c for c in range(C) if c != t], n - right), minlength=C)
    return cms


def miou(cms):
    return float(mean_ious(cms, np.arange(len(cms))[None])[0])


def accuracy(cms):
    return float(np.trace(cms.sum(0)) / cms.sum())


def write_study(folder, expected, measured, per_image=True, configuration_column=False, seed=0):
    """measured: {row name: accuracy of its fake model} -> the table and the per-image file of ``expected`` in
    folder, as the runners write them; returns (records, per_image)."""
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for name, acc in measured.items():
        cms = cms_of(rng, accuracy=acc)
        trimaps = np.stack([cms_of(rng, accuracy=acc - 0.1 * k) for k in range(len(WIDTHS))], axis=1)
        images[name] = {"cms": cms, "trimaps": trimaps, "widths": np.asarray(WIDTHS)}
        r = {"name": name, "seed": int(name.rpartition("-s")[2]), "miou": miou(cms),
             "parameters": 1_000_000 + len(name), "mult_adds": 2_000_000_000, "final_loss": 1 - acc, "about": "x, y"}
        r.update({f"trimap_{w}": accuracy(trimaps[:, k]) for k, w in enumerate(WIDTHS)})
        if configuration_column:
            r["configuration"] = M.configuration(name)
        rows.append(r)
    names = ["name"] + ["configuration"] * configuration_column + \
        ["seed", "miou", "parameters", "mult_adds", "final_loss"] + \
        [f"trimap_{w}" for w in WIDTHS] + ["about"]
    table, per_image_path = expected.files(folder)
    write_table(rows, table, names)
    write_per_image(rows, per_image_path, images if per_image else None)
    return rows, images


ATTENTION_MEASURED = {"cnn-v3plus-s0": 0.85, "cnn-v3plus-s1": 0.87, "cnn-v3plus-s2": 0.83, "vit-linear-s0": 0.7,
                      "vit-linear-s1": 0.72, "vit-linear-s2": 0.68, "vit-aspp-s0": 0.72, "segformer-s0": 0.8}


@pytest.fixture
def attention(tmp_path):
    rows, images = write_study(tmp_path, ATTENTION_EXPECTED, ATTENTION_MEASURED)
    return tmp_path, rows, images


def test_what_a_study_expects_is_read_off_the_runners_rows():
    att = ATTENTION_EXPECTED.configurations
    assert list(att) == ["cnn-v3plus", "vit-linear", "vit-aspp", "vit-aspp-dec", "segformer", "vit-na-linear",
                         "vit-linear-adamw", "vit-aspp-adamw"]
    assert att["vit-aspp"]["seeds"] == (0, 1, 2) and att["vit-aspp-dec"]["rows"] == ("vit-aspp-dec-s0",)
    assert sum(len(c["rows"]) for c in att.values()) == len(ATTENTION_ROWS)
    crf = CRF_EXPECTED.configurations
    assert sum(len(c["rows"]) for c in crf.values()) == len(CRF_ROWS) and crf["v3plus-mini-crflayer"]["seeds"] == (0,)
    assert ATTENTION_EXPECTED.command == ("minideeplab ablate --study attention --out runs/attention --results "
                                          "data/ablation --data-root runs/synthetic-3000 --val-root data/synthetic")
    assert CRF_EXPECTED.command == ATTENTION_EXPECTED.command.replace("attention", "crf")
    assert [p.name for p in CRF_EXPECTED.files("x")] == ["crf.csv", "crf_per_image.npz"]
    with pytest.raises(ValueError, match="baseline names configuration 'vit-aspp-decoder', which no row has"):
        M.Expected("attention", ATTENTION_ROWS, baseline="vit-aspp-decoder")
    with pytest.raises(ValueError, match="comparisons names configuration 'v3plus-mini-crf-post'"):
        M.Expected("crf", CRF_ROWS, "v3plus-mini", (("v3plus-mini-crf-post", "v3plus-mini", "?"),))
    assert [M.configuration(n) for n in ("v3plus-ft-s2", "vit-aspp-dec-s0", "v3-os16", "segformer")] == \
        ["v3plus-ft", "vit-aspp-dec", "v3-os16", "segformer"]


def test_rows_means_spreads_and_missing(attention):
    folder, rows, _ = attention
    s = M.read_study(ATTENTION_EXPECTED, folder, n_samples=200)
    by = {r["configuration"]: r for r in s["configurations"]}
    assert list(by) == ["cnn-v3plus", "vit-linear", "vit-aspp", "segformer"]  # the study's order
    cnn = [r["miou"] for r in rows if r["name"].startswith("cnn-v3plus")]
    assert by["cnn-v3plus"]["miou"] == pytest.approx(np.mean(cnn))
    assert by["cnn-v3plus"]["miou_sd"] == pytest.approx(np.std(cnn, ddof=1))
    assert (by["cnn-v3plus"]["miou_min"], by["cnn-v3plus"]["miou_max"]) == (min(cnn), max(cnn))
    assert by["cnn-v3plus"]["seeds"] == [0, 1, 2] and by["cnn-v3plus"]["seeds_expected"] == [0, 1, 2]
    tri = [r["trimap_2"] for r in rows if r["name"].startswith("vit-linear")]
    assert by["vit-linear"]["trimap_2"] == pytest.approx(np.mean(tri))
    assert math.isnan(by["vit-aspp"]["miou_sd"]) and by["vit-aspp"]["seeds"] == [0]
    assert by["segformer"]["parameters"] == 1_000_000 + len("segformer-s0") and by["segformer"]["mult_adds"] == 2e9
    assert s["missing"] == [
        {"configuration": "vit-aspp", "seeds": 1, "seeds_expected": 3, "rows": ["vit-aspp-s1", "vit-aspp-s2"]},
        {"configuration": "vit-aspp-dec", "seeds": 0, "seeds_expected": 1, "rows": ["vit-aspp-dec-s0"]},
        {"configuration": "vit-na-linear", "seeds": 0, "seeds_expected": 1, "rows": ["vit-na-linear-s0"]},
        {"configuration": "vit-linear-adamw", "seeds": 0, "seeds_expected": 2,
         "rows": ["vit-linear-adamw-s0", "vit-linear-adamw-s1"]},
        {"configuration": "vit-aspp-adamw", "seeds": 0, "seeds_expected": 2,
         "rows": ["vit-aspp-adamw-s0", "vit-aspp-adamw-s1"]}]
    assert by["cnn-v3plus"]["vs_baseline"] is None and s["interval_keys"] == ["miou", "trimap_1", "trimap_2"]


def test_interval_against_the_baseline_is_the_seed_mean_paired_bootstrap(attention):
    folder, _, images = attention
    s = M.read_study(ATTENTION_EXPECTED, folder, n_samples=300, seed=3)
    vs = {r["configuration"]: r for r in s["configurations"]}["vit-linear"]["vs_baseline"]
    stack = lambda c, key="cms", k=None: np.stack([images[f"{c}-s{i}"][key] if k is None else  # noqa: E731
                                                   images[f"{c}-s{i}"][key][:, k] for i in range(3)])
    assert vs["miou"] == bootstrap_seeds_interval(stack("vit-linear"), stack("cnn-v3plus"), n_samples=300, seed=3)
    assert vs["trimap_2"] == bootstrap_seeds_interval(stack("vit-linear", "trimaps", 1),
                                                      stack("cnn-v3plus", "trimaps", 1), "accuracy", 300, seed=3)
    d, lo, hi = vs["miou"]  # the difference of the seed means on all images, inside its interval
    base = np.mean([miou(images[f"cnn-v3plus-s{k}"]["cms"]) for k in range(3)])
    assert d == pytest.approx(np.mean([miou(images[f"vit-linear-s{k}"]["cms"]) for k in range(3)]) - base)
    assert lo < d < hi < 0 and hi - lo < 0.2
    comp = next(c for c in s["comparisons"] if (c["a"], c["b"]) == ("vit-aspp", "vit-linear"))
    assert set(comp["intervals"]) == {"miou", "trimap_1", "trimap_2"} and comp["why"] == ""


def test_seed_mean_bootstrap_with_one_seed_is_the_ablations():
    rng = np.random.default_rng(1)
    a, b = cms_of(rng, accuracy=0.85), cms_of(rng, accuracy=0.8)
    assert bootstrap_seeds_interval(a[None], b[None], n_samples=300, seed=2) == \
        pytest.approx(bootstrap_interval(a, b, n_samples=300, seed=2), abs=1e-15)
    d, lo, hi = bootstrap_accuracy_interval(a, b, n_samples=300, seed=2)
    assert d == pytest.approx(accuracy(a) - accuracy(b)) and lo <= d <= hi
    with pytest.raises(ValueError, match=r"must be \(seeds, N, C, C\)"):
        bootstrap_seeds_interval(np.zeros((1, 4, 3, 3)), np.zeros((1, 5, 3, 3)))
    with pytest.raises(ValueError, match="score must be 'miou' or 'accuracy', got 'iou'"):
        bootstrap_seeds_interval(a[None], b[None], "iou")


def test_format_names_the_missing_rows_and_the_command_once(attention):
    text = M.format_summary(M.read_study(ATTENTION_EXPECTED, attention[0], n_samples=100))
    assert "vit-aspp: 1 of 3: vit-aspp-s1, vit-aspp-s2" in text and "vit-aspp-dec: 0 of 1" in text
    assert text.count(ATTENTION_EXPECTED.command) == 1 and "(baseline)" in text
    assert "tri1" in text and "tri4" in text and " 3/3 " in text
    head, _, cnn, linear = text.splitlines()[:4]
    # the training loss at the end, seed mean (did it fit?): 1 - accuracy in these fake rows
    assert head.split()[5] == "loss" and cnn.split()[5] == "0.15" and linear.split()[5] == "0.30"


def test_answer_lines_say_only_what_the_numbers_allow(attention):
    lines = M.answer_lines(M.read_study(ATTENTION_EXPECTED, attention[0], n_samples=200))
    aspp = next(line for line in lines if line.startswith("does ASPP help on top of attention?"))
    assert "1 and 3 seeds" in aspp and "95 % interval" in aspp and "one seed on a side" in aspp
    assert "trimap accuracy 1 px" in aspp
    cnn = next(line for line in lines if "vit-linear - cnn-v3plus" in line)
    assert "below zero: a loss here" in cnn and "3 and 3 seeds" in cnn
    decoder = next(line for line in lines if "vit-aspp-dec" in line)
    assert "not measured yet: vit-aspp-dec" in decoder
    assert lines[-1].endswith(ATTENTION_EXPECTED.command)


def test_without_per_image_file_there_are_no_intervals(tmp_path):
    write_study(tmp_path, ATTENTION_EXPECTED, ATTENTION_MEASURED, per_image=False)
    assert not ATTENTION_EXPECTED.files(tmp_path)[1].exists()
    s = M.read_study(ATTENTION_EXPECTED, tmp_path)
    assert all(r["vs_baseline"] is None for r in s["configurations"]) and s["interval_keys"] == ["miou"]
    assert any("no per-image confusion matrices" in line for line in M.answer_lines(s))


def test_an_absent_table_is_a_study_not_yet_measured(tmp_path):
    s = M.read_study(CRF_EXPECTED, tmp_path)
    assert s["configurations"] == [] and [m["configuration"] for m in s["missing"]] == list(CRF_EXPECTED.configurations)
    text = M.format_summary(s)
    assert text.startswith("No row of the crf study is measured yet.") and CRF_EXPECTED.command in text
    lines = M.answer_lines(s)
    assert all("not measured yet" in line for line in lines[:-1]) and CRF_EXPECTED.command in lines[-1]


def test_the_crf_table_and_its_configuration_column(tmp_path):
    measured = {f"{c}-s{s}": 0.8 + 0.02 * k for k, c in enumerate(CRF_EXPECTED.configurations) for s in (0, 1, 2)
                if f"{c}-s{s}" in {r.name for r in CRF_ROWS}}
    write_study(tmp_path, CRF_EXPECTED, measured, configuration_column=True)
    s = M.read_study(CRF_EXPECTED, tmp_path, n_samples=100)
    assert s["missing"] == [] and [r["configuration"] for r in s["configurations"]] == list(CRF_EXPECTED.configurations)
    assert all(c["intervals"] is not None for c in s["comparisons"]) and len(s["comparisons"]) == 6
    by = {r["configuration"]: r for r in s["configurations"]}
    assert by["v3plus-mini-crflayer"]["seeds"] == [0] and by["v3plus-ft"]["vs_baseline"]["miou"][0] > 0
    # the configuration column wins over the name
    table = CRF_EXPECTED.files(tmp_path)[0]
    table.write_text(table.read_text().replace("v3plus-ft-crflayer-s0,v3plus-ft-crflayer,",
                                               "v3plus-ft-crflayer-s0,other,"))
    again = M.read_study(CRF_EXPECTED, tmp_path, n_samples=100)
    assert {r["configuration"]: r["seeds"] for r in again["configurations"]}["other"] == [0]
    assert {"configuration": "v3plus-ft-crflayer", "seeds": 2, "seeds_expected": 3,
            "rows": ["v3plus-ft-crflayer-s0"]} in again["missing"]


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "attention.csv").write_text("name,miou\na,0.5\n")
    with pytest.raises(ValueError, match="has no column 'seed'"):
        M.read_seeded_csv(tmp_path / "attention.csv")
    np.savez(tmp_path / "old.npz", names=np.array(["a"]), seeds=np.array([0]), cms=np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="has no array 'widths'.*write_per_image's"):
        read_per_image(tmp_path / "old.npz")


def test_learned_crf_reads_the_compatibility_and_weights_of_a_checkpoint(tmp_path):
    compat = torch.tensor([[0.0, 1.5], [0.7, 0.0]])
    model = {"backbone.conv.weight": torch.zeros(2, 2), "crf.compat": compat,
             "crf.log_pos_w": torch.tensor(np.log(3.0)), "crf.log_bi_w": torch.tensor(np.log(4.0))}
    save_checkpoint(dict(format=1, model=model, iteration=5, config={}, classes=["a", "b"]), tmp_path / "c.pt")
    got = learned_crf(tmp_path / "c.pt")
    np.testing.assert_array_equal(got["compat"], compat.double().numpy())
    assert got["classes"] == ["a", "b"] and got["pos_w"] == pytest.approx(3.0) and got["bi_w"] == pytest.approx(4.0)
    del model["crf.compat"]
    save_checkpoint(dict(format=1, model=model, iteration=5, config={}, classes=["a", "b"]), tmp_path / "d.pt")
    with pytest.raises(ValueError, match="has 0 compatibility matrices"):
        learned_crf(tmp_path / "d.pt")
