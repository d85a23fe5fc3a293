"""The CRF study's reader (ablate.crf_table) on small files written here: the table, the missing rows, the paired
bootstrap against the baseline, and a trained CRF layer's compatibility from a checkpoint."""

import math

import numpy as np
import pytest
import torch

from minideeplab.ablate import crf_table as ct
from minideeplab.ablate.stats import bootstrap_interval
from minideeplab.training.checkpoint import save_checkpoint

BASE, POST, TUNE, SCRATCH = ct.STUDY["rows"]  # the study's configurations, baseline first


def write_csv(path, lines, header="name,seed,miou,trimap_1,trimap_2,crf"):
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def cms(rng, n_images=12, C=3, bias=0):
    """Per-image confusion matrices: mostly right, `bias` more right pixels per class."""
    out = rng.integers(0, 5, (n_images, C, C))
    out[:, np.arange(C), np.arange(C)] += 40 + bias
    return out


def test_read_table_types_and_refuses_other_tables(tmp_path):
    path = write_csv(tmp_path / "crf.csv", [f"{BASE},0,0.5,0.3,,", f"{POST},0,0.52,0.35,0.4,deeplab-v2-resnet"])
    rows = ct.read_table(path)
    assert rows[0]["name"] == BASE and rows[0]["seed"] == 0 and rows[0]["miou"] == 0.5
    assert math.isnan(rows[0]["trimap_2"]) and rows[1]["crf"] == "deeplab-v2-resnet"
    with pytest.raises(ValueError, match="no column 'seed'"):
        ct.read_table(write_csv(tmp_path / "other.csv", ["a,0.5"], header="name,miou"))
    with pytest.raises(FileNotFoundError, match=r"absent\.csv does not exist .*minideeplab ablate"):
        ct.read_table(tmp_path / "absent.csv")


def test_summary_means_spread_and_missing_rows(tmp_path):
    path = write_csv(tmp_path / "crf.csv", [f"{BASE},0,0.50,0.30,0.40,", f"{BASE},1,0.54,0.34,0.44,",
                                            f"{BASE},2,0.52,0.32,0.42,", f"{TUNE},0,0.60,0.50,0.55,layer"])
    rows = ct.read_table(path)
    summary = ct.summarize(rows)
    assert [r["name"] for r in summary] == [BASE, TUNE]
    base = summary[0]
    assert base["seeds"] == [0, 1, 2] and base["miou"] == pytest.approx(0.52)
    assert (base["miou_min"], base["miou_max"]) == (0.50, 0.54) and base["trimap_1"] == pytest.approx(0.32)
    assert all(r["vs_baseline"] is None for r in summary)  # no per-image matrices
    assert ct.missing_configurations(rows) == [POST, SCRATCH]
    text = ct.report(path, tmp_path / "none.npz")
    assert "52.0" in text and "50.0-54.0" in text
    assert f"Not measured yet: {POST} (" in text and SCRATCH in text and ct.STUDY["command"] in text
    assert "No bootstrap intervals" in text


def test_paired_bootstrap_against_the_baseline_sums_the_shared_seeds(tmp_path):
    rng = np.random.default_rng(0)
    base = {s: cms(rng) for s in (0, 1)}
    post = {s: cms(rng, bias=10) for s in (0, 1)}
    np.savez(tmp_path / "per_image.npz", names=np.array([BASE, BASE, POST, POST]), seeds=np.array([0, 1, 0, 1]),
             cms=np.stack([base[0], base[1], post[0], post[1]]))
    per_image = ct.read_per_image(tmp_path / "per_image.npz")
    assert set(per_image) == {(BASE, 0), (BASE, 1), (POST, 0), (POST, 1)}
    path = write_csv(tmp_path / "crf.csv", [f"{BASE},0,0.5,0.3,0.4,", f"{BASE},1,0.5,0.3,0.4,",
                                            f"{POST},0,0.6,0.4,0.5,x", f"{POST},1,0.6,0.4,0.5,x"])
    summary = ct.summarize(ct.read_table(path), per_image, n_samples=300, seed=1)
    assert summary[0]["vs_baseline"] is None  # the baseline itself
    want = bootstrap_interval(post[0] + post[1], base[0] + base[1], n_samples=300, seed=1)
    assert summary[1]["vs_baseline"] == want and want[0] > 0 and want[1] <= want[0] <= want[2]
    text = ct.format_summary(summary)
    assert f"{100 * want[0]:+.1f} [{100 * want[1]:+.1f}, {100 * want[2]:+.1f}]" in text


def test_report_without_the_table_names_every_row_and_the_command(tmp_path):
    text = ct.report(tmp_path / "crf.csv")
    assert text.startswith("Not measured yet:") and "crf.csv does not exist" in text
    assert all(name in text for name in ct.STUDY["rows"]) and ct.STUDY["command"] in text


def test_learned_crf_reads_the_compatibility_and_weights(tmp_path):
    compat = torch.tensor([[0.0, 1.5], [0.7, 0.0]])
    model = {"backbone.conv.weight": torch.zeros(2, 2), "crf.compat": compat,
             "crf.log_pos_w": torch.tensor(np.log(3.0)), "crf.log_bi_w": torch.tensor(np.log(4.0))}
    save_checkpoint(dict(format=1, model=model, iteration=5, config={}, classes=["a", "b"]), tmp_path / "c.pt")
    got = ct.learned_crf(tmp_path / "c.pt")
    np.testing.assert_array_equal(got["compat"], compat.double().numpy())
    assert got["classes"] == ["a", "b"] and got["pos_w"] == pytest.approx(3.0) and got["bi_w"] == pytest.approx(4.0)
    del model["crf.compat"]
    save_checkpoint(dict(format=1, model=model, iteration=5, config={}, classes=["a", "b"]), tmp_path / "d.pt")
    with pytest.raises(ValueError, match="has 0 compatibility matrices"):
        ct.learned_crf(tmp_path / "d.pt")
