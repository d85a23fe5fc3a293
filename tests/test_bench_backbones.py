"""Notebook 10's cost table: a `bench model --json` document read back (the fields as `bench model` writes them,
with and without the parameter and multiply-add counts), its errors, and the live timing."""

import json

import numpy as np
import pytest

from minideeplab.bench.backbones import format_model_table, read_model_json, time_model

CASE = {  # one row as `minideeplab bench model --json` writes it
    "kind": "minideeplab", "model": "DeepLab v3plus (mini, output stride 16)", "input": "1x3x65x65",
    "scratch_s": 0.1196, "torch_s": 0.0265, "ratio": 4.508, "scratch_extra_mb": 0.97, "torch_extra_mb": 1.41,
    "memory_ratio": 0.689, "scratch_rss_loaded_mb": 177.8, "torch_rss_loaded_mb": 606.7, "max_abs_torch": 0.99,
    "max_rel_err": 1.46e-06}
SETTINGS = {"threads": 2, "repeat": 3, "quick": False, "dtype": "float32", "batch": 1, "agree": True,
            "max_rel_err_allowed": 0.0001, "ratio": 4.5, "memory_ratio": 0.69, "max_rel_err": 1.46e-06}


def write(tmp_path, cases, **settings):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**SETTINGS, **settings, "cases": cases}))
    return path


def test_a_run_without_counts_reads_with_none(tmp_path):
    run = read_model_json(write(tmp_path, {"quick-v3plus-mini": CASE, "wrong-row": {**CASE, "max_rel_err": None,
                                                                                     "input": "1x3x512x480"}}))
    assert run["settings"] == SETTINGS
    a, b = run["rows"]
    assert a["name"] == "quick-v3plus-mini" and a["model"] == CASE["model"] and a["size"] == (65, 65)
    assert a["params"] is None and a["mult_adds"] is None
    assert a["scratch_s"] == 0.1196 and a["ratio"] == 4.508 and a["torch_rss_loaded_mb"] == 606.7
    assert b["size"] == (512, 480) and b["max_rel_err"] is None  # a WRONG row: its error is null
    table = format_model_table(run)
    assert "batch 1, float32, 2 threads, median of 3" in table
    line = next(s for s in table.splitlines() if s.startswith(CASE["model"]))
    assert "65x65" in line and "0.120" in line and "4.51" in line and "1, 1" in line and " - " in line


def test_counts_are_read_under_the_names_a_run_writes(tmp_path):
    cases = {"a": {**CASE, "params": 5_812_345, "mult_adds": 2_345_678_901},
             "b": {**CASE, "model": "other", "num_params": 3_221_538, "gmacs": 1.97}}
    run = read_model_json(write(tmp_path, cases))
    a, b = run["rows"]
    assert (a["params"], a["mult_adds"]) == (5_812_345, 2_345_678_901)
    assert (b["params"], b["mult_adds"]) == (3_221_538, 1_970_000_000)
    table = format_model_table(run, names=["b", "a", "absent"])
    rows = table.splitlines()[3:]
    assert len(rows) == 2 and rows[0].startswith("other") and "3.2" in rows[0] and "1.97" in rows[0]
    assert "5.8" in rows[1] and "2.35" in rows[1]


def test_a_missing_file_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.json does not exist; make it with `minideeplab bench model "
                                                r"--json"):
        read_model_json(tmp_path / "model.json")


@pytest.mark.parametrize("text, expected", [
    ("not json", "not JSON"),
    ('{"threads": 2}', "an object with 'cases'"),
    ('{"cases": {"a": 3}}', "case 'a' must be an object"),
    (json.dumps({"cases": {"a": {**CASE, "input": "65x65"}}}), "input must read 'NxCxHxW', got '65x65'"),
    (json.dumps({"cases": {"a": {**CASE, "torch_s": "slow"}}}), "torch_s must be a number or null, got 'slow'"),
])
def test_a_document_that_is_not_a_run_is_named(tmp_path, text, expected):
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="read_model_json: .*model.json: ") as info:
        read_model_json(path)
    assert expected in str(info.value)


def test_the_committed_run_reads(request):
    path = request.config.rootpath / "data" / "bench" / "model.json"
    if not path.exists():
        pytest.skip("data/bench/model.json is not committed on this branch")
    run = read_model_json(path)
    assert run["rows"] and all(r["ratio"] is not None and r["size"] is not None for r in run["rows"])
    assert len(format_model_table(run).splitlines()) == 3 + len(run["rows"])


def test_the_live_timing_times_both_sides_on_the_same_weights():
    r = time_model("v3plus", "mini", size=33, repeat=1, num_classes=5)
    assert r["model"] == "DeepLab v3plus (mini, output stride 16)" and r["size"] == 33
    assert r["scratch_s"] > 0 and r["torch_s"] > 0 and np.isclose(r["ratio"], r["scratch_s"] / r["torch_s"])
    assert r["max_rel_err"] < 1e-4


@pytest.mark.parametrize("kw, expected", [({"size": 0}, "size must be an int >= 1, got 0"),
                                          ({"threads": 1.5}, "threads must be an int >= 1, got 1.5")])
def test_the_live_timing_names_a_bad_argument(kw, expected):
    with pytest.raises(ValueError, match=expected):
        time_model("v3plus", "mini", **kw)


def test_the_separable_timing_counts_and_times_both_convs():
    from minideeplab.bench.backbones import time_separable

    r = time_separable(8, 16, k=3, size=9, repeat=1)
    assert r["full"]["mult_adds"] == 9 * 8 * 16 * 81 and r["separable"]["mult_adds"] == (9 * 8 + 8 * 16) * 81
    assert all(r[n][s] > 0 for n in ("full", "separable") for s in ("scratch_s", "torch_s"))
    with pytest.raises(ValueError, match="k must be odd"):
        time_separable(8, 16, k=2)
    with pytest.raises(ValueError, match="c_in must be an int >= 1, got 0"):
        time_separable(0, 16)


def test_model_costs_count_as_bench_cost_does_and_restore_the_initialisers():
    import torch

    from minideeplab.bench.backbones import meta_modules, model_costs
    from minideeplab.bench.cost import model_mult_adds
    from minideeplab.reference.deeplab import build_model

    normal = torch.nn.init.normal_
    c = model_costs("lraspp", "mobilenet_v3_large", size=(65, 49))
    assert torch.nn.init.normal_ is normal
    assert c["mult_adds"] == model_mult_adds("lraspp", "mobilenet_v3_large", size=(65, 49))
    assert c["params"] == 3_221_538  # torchvision's lraspp_mobilenet_v3_large (its weights' metadata)
    with pytest.raises(RuntimeError), meta_modules():
        raise RuntimeError("inside")
    assert torch.nn.init.normal_ is normal  # restored after an error too
    with meta_modules():
        m = build_model("v3plus", "mini", num_classes=3)
    assert all(p.device.type == "meta" for p in m.parameters())
