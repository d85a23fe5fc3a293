"""The shipped model, data/models/mini_v3plus.pt: what the README says made it, weights only, and as good on the
committed val split as its training run measured before the float16 export."""

import re
import shlex
from pathlib import Path

import pytest
import torch

from minideeplab import train as T
from minideeplab.cli import _train_config, build_parser
from minideeplab.data.voc import VOCSegmentation

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "models" / "mini_v3plus.pt"
DATA = ROOT / "data" / "synthetic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_command(name):
    """The README's `minideeplab NAME ...` line that mentions data/models (continuation lines joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if re.match(rf"\.venv/bin/minideeplab {name} .*runs/ship", line)]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#")[0])[1:]


def test_readme_command_made_the_shipped_model():
    ckpt = torch.load(MODEL, weights_only=True)
    expected = _train_config(build_parser().parse_args(readme_command("train"))).to_dict()
    assert {k: v for k, v in T._config_of(ckpt["config"]).to_dict().items() if k != "out"} == \
           {k: v for k, v in expected.items() if k != "out"}
    assert ckpt["iteration"] == 30 * (3000 // 8) and len(ckpt["losses"]) == ckpt["iteration"]
    assert ckpt["exported"]["dtype"] == "float16" and "optimizer" not in ckpt
    assert all(v.dtype in (torch.float16, torch.int64) for v in ckpt["model"].values())
    assert MODEL.stat().st_size < 5e6


def test_shipped_model_scores_what_its_run_measured():
    """Single-scale val mIoU of the float16 weights (run in float32) against the run's own evaluation of its
    float32 weights at the last epoch: float16 rounding moves it by far less than a point."""
    ckpt = T.load_checkpoint(MODEL)
    model, classes = T.load_model(MODEL)
    val = VOCSegmentation(DATA, "val")
    assert classes == list(val.classes)
    scores = T.evaluate(model, val, classes, quiet=True)
    measured = ckpt["metrics"][-1]
    assert measured["images"] == len(val) == 100
    assert scores["miou"] == pytest.approx(measured["miou"], abs=0.005)
    assert scores["miou"] > 0.4  # names shapes, not only finds objects (an untrained-looking model: ~0.14)
