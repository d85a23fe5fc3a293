"""The atrous benchmark runs and reports what it promises (no timing assertions: benchmarks are not tests)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_atrous_quick_json():
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "atrous", "--quick", "--json", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["threads"] == 1
    assert report["rows"]
    for key in ("median_forward_ratio", "median_backward_ratio"):
        assert math.isfinite(report[key]) and report[key] > 0
    for row in report["rows"]:
        for key in ("forward_scratch_ms", "forward_torch_ms", "backward_scratch_ms", "backward_torch_ms",
                    "forward_ratio", "backward_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["forward_max_rel_err"] < 1e-5 and row["backward_max_rel_err"] < 1e-5
    assert report["agree"] is True
    assert {(r["kernel"], r["stride"], r["groups"] == r["C"]) for r in report["rows"]} == {
        (3, 1, False), (3, 1, True), (5, 2, True)}  # a dense conv, and depthwise 3x3 and 5x5 stride 2


def test_bench_atrous_depthwise_only():
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "atrous", "--depthwise", "--quick", "--json",
                          "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 2 and all(r["groups"] == r["C"] == r["Cout"] for r in rows)


def test_bench_crf_quick_json():
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "crf", "--quick", "--json", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["threads"] == 1 and report["agree"] is True
    assert set(report["sets"]) == {"deeplab-v2-resnet", "pydensecrf-readme"}
    for row in list(report["sets"].values()) + [report]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["argmax_agreement"] >= 0.999 and row["max_abs_dq"] <= 1e-3
    assert report["ratio"] == max(r["ratio"] for r in report["sets"].values())


def test_bench_crf_backward_and_window_quick_json(tmp_path):
    """Both parts in one run, one JSON object; the notebook's reader formats it."""
    from minideeplab.bench.crf import format_costs, read_report

    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "crf", "--backward", "--window", "--quick",
                          "--json", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["threads"] == 1 and report["quick"] is True and report["backward"]["agree"] is True
    backward = report["backward"]
    assert backward["n_iters"] == 5
    for row in backward["sets"].values():
        assert row["forward_s"] > 0 and row["backward_s"] > 0
        assert row["ratio"] == pytest.approx(row["backward_s"] / row["forward_s"])
        assert row["logits_grad_rel_err"] < 1e-3 and row["weight_grad_rel_err"] < 1e-3
    assert backward["ratio"] == max(r["ratio"] for r in backward["sets"].values())
    rows = report["window"]["rows"]
    assert [r["window"] for r in rows] == [5, 7, 11]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["window_s"] / r["lattice_s"])
        assert 0.8 < r["agreement"] <= 1.0  # a window CRF is close to the full one, and the agreement is a share
    (tmp_path / "crf.json").write_text(res.stdout)
    text = format_costs(read_report(tmp_path / "crf.json"))
    assert f"{rows[0]['lattice_s']:.3f} s at 48x48" in text
    assert f"backward {report['backward']['sets']['deeplab-v2-resnet']['backward_s']:.3f} s" in text
    assert f"{100 * rows[-1]['agreement']:.2f}%" in text
    (tmp_path / "one.json").write_text(json.dumps(report["backward"]))
    with pytest.raises(ValueError, match="has no 'backward' part: it is not the output of"):
        read_report(tmp_path / "one.json")


def test_bench_model_quick_json():
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "model", "--quick", "--json", "--threads", "1",
                          "--size", "64"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["threads"] == 1 and report["quick"] is True and report["agree"] is True and report["size"] == 64
    assert set(report["cases"]) == {"quick-v3plus-mini", "quick-torchvision-v3-resnet18-os32"}
    from minideeplab.bench.cost import model_mult_adds
    from minideeplab.scratch.deeplab import build_model

    mini = report["cases"]["quick-v3plus-mini"]  # the counts are the model's, at the size it ran
    assert mini["size"] == 64 and mini["input"] == "1x3x64x64"
    assert mini["params"] == sum(p.size for p in build_model("v3plus", "mini", 16).params.values())
    assert mini["mult_adds"] == sum(model_mult_adds("v3plus", "mini", 16, size=(64, 64)).values())
    for row in report["cases"].values():
        assert row["params"] > 0 and row["mult_adds"] > 0
        for key in ("scratch_s", "torch_s", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["scratch_extra_mb"] >= 0 and row["torch_extra_mb"] >= 0
        assert row["max_rel_err"] <= report["max_rel_err_allowed"] == 1e-4
    assert report["ratio"] == max(r["ratio"] for r in report["cases"].values())


def test_bench_train_quick_json():
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "train", "--quick", "--json", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["threads"] == 1 and report["quick"] is True and report["agree"] is True
    assert set(report["cases"]) == {"quick-v3plus-mini-64-b2"}
    for row in report["cases"].values():
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["first_loss_rel_err"] <= report["max_rel_err_allowed"] == 1e-4
    assert math.isfinite(report["ratio"]) and report["ratio"] > 0


def test_bench_model_size_that_does_not_fit():
    """smp's layout takes multiples of its output stride: refused before any timing, naming the case."""
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "model", "--size", "500", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == ("minideeplab bench: error: bench model: size 500 does not fit "
                                  "v3plus-xception65-os16: its input must be a multiple of 16 (its output stride)")


def test_bench_model_json_wrong_row_is_valid_json(monkeypatch, capsys):
    """A row whose outputs cannot be compared (here: shapes differ) is WRONG, and --json stays valid JSON:
    its error is null (JSON has no Infinity)."""
    import numpy as np

    from minideeplab.bench import model as bench

    def fake_child(side, name, threads, repeat, weights, input_path, output_path):
        np.save(output_path, np.ones((1, 2, 3, 3 if side == "torch" else 4), np.float32))
        return dict(seconds=1.0, extra_mb=1.0, rss_loaded_mb=10.0)

    monkeypatch.setattr(bench, "_child", fake_child)
    assert bench.run(threads=1, as_json=True, quick=True) == 1
    report = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert report["agree"] is False and report["max_rel_err"] is None
    assert all(row["max_rel_err"] is None for row in report["cases"].values())


def test_bench_attention_quick_json():
    """The ViT and one block, scratch against torch: every row's outputs (and all 13 gradients) agree."""
    res = subprocess.run([sys.executable, "-m", "minideeplab", "bench", "attention", "--quick", "--json", "--threads",
                          "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)  # exactly one JSON object, nothing else on stdout
    assert report["threads"] == 1 and report["quick"] is True and report["agree"] is True
    assert set(report["rows"]) == {"quick-vit-32", "quick-block-forward", "quick-block-backward"}
    for row in report["rows"].values():
        for key in ("scratch_s", "torch_s", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["ratio"] == pytest.approx(row["scratch_s"] / row["torch_s"])
        assert row["max_rel_err"] <= report["max_rel_err_allowed"] == 1e-4
    assert report["ratio"] == max(r["ratio"] for r in report["rows"].values())


def test_bench_attention_rel_err_catches_a_wrong_gradient(tmp_path):
    """The check the rows rest on: one gradient off (or missing) makes the row's error large (or unmeasurable)."""
    import numpy as np

    from minideeplab.bench.attention import _rel_err

    rng = np.random.default_rng(0)
    t = {"dx": rng.standard_normal((2, 3)), "dw": rng.standard_normal(4)}
    np.savez(tmp_path / "t.npz", **t)
    np.savez(tmp_path / "same.npz", **t)
    np.savez(tmp_path / "off.npz", dx=t["dx"], dw=t["dw"] * 1.01)
    np.savez(tmp_path / "missing.npz", dx=t["dx"])
    assert _rel_err(tmp_path / "same.npz", tmp_path / "t.npz") == 0.0
    assert _rel_err(tmp_path / "off.npz", tmp_path / "t.npz") == pytest.approx(0.01, rel=1e-6)
    assert _rel_err(tmp_path / "missing.npz", tmp_path / "t.npz") == float("inf")
