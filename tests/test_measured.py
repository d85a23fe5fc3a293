"""The reader of a study with several seeds per row (minideeplab.ablate.measured), on small tables the tests
write: means and spreads, the paired bootstrap against the baseline, the rows not yet measured."""

import csv

import numpy as np
import pytest

from minideeplab.ablate import bootstrap_interval
from minideeplab.ablate import measured as M


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
    return float(M.mean_ious(cms, np.arange(len(cms))[None])[0])


@pytest.fixture
def study(tmp_path):
    """cnn-v3plus with 3 seeds, vit-linear with 3, vit-aspp with 1 (of 3); the other rows absent; a per-image file
    for every line; one extra row the study does not list."""
    rng = np.random.default_rng(0)
    lines, per_image = [], {}
    for name, seeds, acc in (("cnn-v3plus", (0, 1, 2), 0.85), ("vit-linear", (0, 1, 2), 0.7),
                             ("vit-aspp", (0,), 0.72), ("extra", (5,), 0.5)):
        for s in seeds:
            cms = cms_of(rng, accuracy=acc)
            per_image[(name, s)] = cms
            lines.append({"name": name, "seed": s, "miou": miou(cms), "parameters": 1_000_000 + 10 * len(name),
                          "mult_adds": 2_000_000_000, "trimap_1": 0.5 + 0.01 * s, "trimap_4": 0.7, "model": "m"})
    with open(tmp_path / "attention.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(lines[0]))
        w.writeheader()
        w.writerows(lines)
    keys = list(per_image)
    np.savez(tmp_path / "attention_per_image.npz", names=np.array([k[0] for k in keys]),
             seeds=np.array([k[1] for k in keys]), cms=np.stack([per_image[k] for k in keys]))
    return tmp_path, lines, per_image


def test_rows_means_spreads_and_missing(study):
    folder, lines, _ = study
    s = M.attention_summary(folder, n_samples=200)
    by = {r["name"]: r for r in s["rows"]}
    assert [r["name"] for r in s["rows"]] == ["cnn-v3plus", "vit-linear", "vit-aspp", "extra"]
    cnn = [r["miou"] for r in lines if r["name"] == "cnn-v3plus"]
    assert by["cnn-v3plus"]["miou"] == pytest.approx(np.mean(cnn))
    assert by["cnn-v3plus"]["miou_sd"] == pytest.approx(np.std(cnn, ddof=1))
    assert (by["cnn-v3plus"]["miou_min"], by["cnn-v3plus"]["miou_max"]) == (min(cnn), max(cnn))
    assert np.isnan(by["vit-aspp"]["miou_sd"]) and by["vit-aspp"]["seeds"] == [0]
    assert by["cnn-v3plus"]["trimap_1"] == pytest.approx(0.51) and by["cnn-v3plus"]["parameters"] == 1_000_100
    assert s["missing"] == [("vit-aspp", 1, 3), ("vit-aspp-decoder", 0, 1), ("segformer-mini", 0, 1),
                            ("vit-dilated-na", 0, 1)]
    assert by["cnn-v3plus"]["vs_baseline"] is None


def test_interval_against_the_baseline_is_the_paired_bootstrap(study):
    folder, _, per_image = study
    s = M.attention_summary(folder, n_samples=300, seed=3)
    d, lo, hi = {r["name"]: r for r in s["rows"]}["vit-aspp"]["vs_baseline"]
    # one seed on each side: the same numbers as the ablation's paired bootstrap ...
    one = M.summarise([{"name": "a", "seed": 0, "miou": 0.0}, {"name": "b", "seed": 0, "miou": 0.0}],
                      {("a", 0): per_image[("vit-aspp", 0)], ("b", 0): per_image[("cnn-v3plus", 0)]},
                      expected=(), baseline="b", comparisons=(), n_samples=300, seed=3)
    assert one["rows"][0]["vs_baseline"] == pytest.approx(
        bootstrap_interval(per_image[("vit-aspp", 0)], per_image[("cnn-v3plus", 0)], n_samples=300, seed=3))
    # ... and with three baseline seeds, the difference of the seed means on all images, inside its interval
    base = np.mean([miou(per_image[("cnn-v3plus", k)]) for k in range(3)])
    assert d == pytest.approx(miou(per_image[("vit-aspp", 0)]) - base)
    assert lo < d < hi and hi - lo < 0.2


def test_format_names_the_missing_rows_and_the_command_once(study):
    text = M.format_summary(M.attention_summary(study[0], n_samples=100))
    assert "vit-aspp: 1 of 3" in text and "segformer-mini: 0 of 1" in text
    assert text.count(M.ATTENTION_COMMAND) == 1 and "(baseline)" in text
    assert "tri1" in text and "tri4" in text


def test_answer_lines_say_only_what_the_numbers_allow(study):
    lines = M.answer_lines(M.attention_summary(study[0], n_samples=200))
    aspp = next(l for l in lines if l.startswith("does ASPP help on top of attention?"))
    assert "1 and 3 seeds" in aspp and "95 % interval" in aspp and "one seed on a side" in aspp
    cnn = next(l for l in lines if "vit-linear - cnn-v3plus" in l)
    assert "below zero: a loss here" in cnn and "3 and 3 seeds" in cnn
    decoder = next(l for l in lines if "vit-aspp-decoder" in l)
    assert "not measured yet: vit-aspp-decoder" in decoder and M.ATTENTION_COMMAND in decoder


def test_without_per_image_file_there_are_no_intervals(study):
    (study[0] / "attention_per_image.npz").unlink()
    s = M.attention_summary(study[0])
    assert all(r["vs_baseline"] is None for r in s["rows"])
    assert any("no per-image confusion matrices" in l for l in M.answer_lines(s))


def test_an_absent_table_is_a_study_not_yet_measured(tmp_path):
    s = M.attention_summary(tmp_path)
    assert s["rows"] == [] and [m[0] for m in s["missing"]] == [r.name for r in M.ATTENTION_ROWS]
    text = M.format_summary(s)
    assert text.startswith("No row of the study is measured yet.") and M.ATTENTION_COMMAND in text
    assert all("not measured yet" in l for l in M.answer_lines(s))


def test_a_table_without_seeds_is_refused(tmp_path):
    (tmp_path / "attention.csv").write_text("name,miou\na,0.5\n")
    with pytest.raises(ValueError, match="has no column 'seed'"):
        M.read_seeded_csv(tmp_path / "attention.csv")
    with pytest.raises(ValueError, match=r"must be \(seeds, N, C, C\)"):
        M.bootstrap_seed_mean_interval(np.zeros((1, 4, 3, 3)), np.zeros((1, 5, 3, 3)))
