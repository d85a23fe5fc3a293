"""The CRF layer trained (``--model-option crf=...``) by both trainers, its checkpoints, evaluation and segment, and
``train --init-from`` (a run's or an exported checkpoint, a CRF layer added, --resume of such a run)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from minideeplab import train as T
from minideeplab.cli import main
from minideeplab.training import numpy_backend as NB

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"
CRF = {"n_iters": 2}  # a short CRF: the tests are about the plumbing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(out, **kw):
    base = dict(model="v3plus", backbone="mini", data_root=str(DATA), out=str(out), epochs=4, batch_size=2,
                crop_size=48, train_images=2, eval_every=0, seed=0, scale_range=(0.375, 0.375), lr=0.03,
                model_options={"crf": CRF})
    return T.TrainConfig(**{**base, **kw})


def _crf(state):
    return {k: v.clone() for k, v in state.items() if k.startswith("crf.")}


@pytest.mark.parametrize("trainer", ["torch", "numpy"])
def test_both_trainers_learn_the_crf_and_checkpoints_roundtrip(tmp_path, trainer):
    """Two whole images for 4 iterations: the loss falls, the CRF's weights and compatibility move off their
    initial values, and the checkpoint loads into a model whose eval output is the trainer's own model's."""
    train = T.train if trainer == "torch" else NB.train
    ckpt = train(tiny(tmp_path), quiet=True, log=lambda *_: None)
    losses = ckpt["losses"]
    assert losses[-1] < losses[0], losses
    crf = _crf(ckpt["model"])
    assert set(crf) == {"crf.log_pos_w", "crf.log_bi_w", "crf.compat"}
    assert abs(crf["crf.log_bi_w"].item() - np.log(4.0)) > 1e-6
    assert (crf["crf.compat"] - (1 - torch.eye(7))).abs().max() > 1e-6
    assert ckpt["config"]["model_options"] == {"crf": CRF}
    model, classes = T.load_model(tmp_path / "last.pt")
    assert model.config.crf.n_iters == 2 and torch.equal(_crf(model.state_dict())["crf.compat"], crf["crf.compat"])
    image, _ = T.open_split(DATA, "val")[0]
    probs = T.predict(model, image[:40, :56])  # not a multiple of the stride: padded, the CRF sees the padding too
    assert probs.shape == (7, 40, 56) and torch.allclose(probs.sum(0), torch.ones(40, 56), atol=1e-5)
    from minideeplab.interop import from_reference
    from minideeplab.training.evaluation import NumpyModel

    scratch = NumpyModel(from_reference(model), like=model)  # segment --backend numpy
    assert (T.predict(scratch, image[:40, :56]) - probs).abs().max() < 1e-4


def test_numpy_and_torch_crf_steps_agree_in_float64(tmp_path):
    """The same weights and batch: one CRF-model step's loss and updated CRF parameters agree."""
    out = {}
    for name, train in (("torch", T.train), ("numpy", NB.train)):
        out[name] = train(tiny(tmp_path / name, epochs=1, dtype="float64", model_options={"crf": CRF, "dropout": 0.0}),
                          quiet=True, log=lambda *_: None)
    assert out["torch"]["losses"][0] == pytest.approx(out["numpy"]["losses"][0], rel=1e-10)
    for k, v in _crf(out["torch"]["model"]).items():
        torch.testing.assert_close(v, out["numpy"]["model"][k], rtol=1e-8, atol=1e-10)


def test_crf_option_on_the_command_line_and_segment(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(DATA), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--crop-size", "48", "--train-images", "2", "--eval-every", "0", "--quiet",
                 "--model-option", "crf={'n_iters': 1}"]) == 0
    assert T.load_checkpoint(out / "last.pt")["config"]["model_options"] == {"crf": {"n_iters": 1}}
    image = DATA / "JPEGImages" / (T.open_split(DATA, "val").ids[0] + ".jpg")
    assert main(["segment", str(image), "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "seg"),
                 "--quiet"]) == 0
    assert (tmp_path / "seg" / f"{image.stem}.png").exists()
    # --crf on top of the trained CRF layer would refine twice: refused, nothing written
    assert main(["segment", str(image), "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "twice"),
                 "--crf", "--quiet"]) != 0
    assert "--crf would refine twice" in capsys.readouterr().err and not (tmp_path / "twice").exists()


# ---------------------------------------------------------------- --init-from


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, one_torch_thread):
    """A model without the CRF layer, 2 iterations, and its exported (float16) copy."""
    out = tmp_path_factory.mktemp("plain")
    T.train(tiny(out, epochs=2, model_options={}), quiet=True, log=lambda *_: None)
    T.export_checkpoint(out / "last.pt", out / "shipped.pt")
    return out


@pytest.mark.parametrize("source", ["last.pt", "shipped.pt"])
@pytest.mark.parametrize("trainer", ["torch", "numpy"])
def test_init_from_a_checkpoint_without_the_crf(tmp_path, plain_run, source, trainer):
    lines = []
    train = T.train if trainer == "torch" else NB.train
    config = tiny(tmp_path, epochs=1, lr=1e-12, init_from=str(plain_run / source))
    ckpt = train(config, quiet=True, log=lines.append)
    text = "\n".join(lines)
    assert f"initialised from {plain_run / source} (iteration 2 of its run)" in text
    assert "kept at their initial values: crf.log_pos_w, crf.log_bi_w, crf.compat (the CRF layer starts" in text
    assert ckpt["iteration"] == 1 and ckpt["config"]["init_from"] == str(plain_run / source)
    # lr ~ 0: the weights are the checkpoint's (float16 for the exported one), the CRF's its initial ones
    theirs = T.load_checkpoint(plain_run / source)["model"]
    w = "decoder.fuse.0.0.weight"
    torch.testing.assert_close(ckpt["model"][w], theirs[w].float(), rtol=0, atol=1e-9)
    assert ckpt["model"]["crf.log_pos_w"].item() == pytest.approx(np.log(3.0), abs=1e-6)
    fresh = train(tiny(tmp_path / "fresh", epochs=1, lr=1e-12), quiet=True, log=lambda *_: None)
    assert not torch.equal(fresh["model"][w], ckpt["model"][w])
    # a fresh optimiser: SGD's momentum holds one step's gradient, not the source run's
    assert ckpt["losses"][0] != T.load_checkpoint(plain_run / "last.pt")["losses"][-1]


def test_init_from_names_what_does_not_fit(tmp_path, plain_run):
    lines = []
    crf_run = T.train(tiny(tmp_path / "crf", epochs=1), quiet=True, log=lambda *_: None)
    assert crf_run["iteration"] == 1
    # the other way: a model without the CRF from a checkpoint with one
    T.train(tiny(tmp_path / "back", epochs=1, model_options={}, init_from=str(tmp_path / "crf" / "last.pt")),
            quiet=True, log=lines.append)
    assert any("but not in this model, not used: crf.log_pos_w, crf.log_bi_w, crf.compat" in ln for ln in lines)
    with pytest.raises(ValueError, match=r"--init-from .*: 11 tensors of another shape: decoder.fuse.0.0.weight "
                                         r"\(64, 76, 3, 3\) \(this model: \(32, 76, 3, 3\)\), "):
        T.train(tiny(tmp_path / "wide", epochs=1, model_options={"decoder_channels": 32},
                     init_from=str(plain_run / "last.pt")), quiet=True, log=lambda *_: None)
    assert main(["train", "--data-root", str(DATA), "--out", str(tmp_path / "x"), "--init-from",
                 str(tmp_path / "missing.pt")]) == 2


def test_resume_of_an_init_from_run_resumes(tmp_path, plain_run, monkeypatch):
    config = tiny(tmp_path, epochs=2, init_from=str(plain_run / "last.pt"))
    whole = T.train(tiny(tmp_path / "whole", epochs=2, init_from=str(plain_run / "last.pt")), quiet=True,
                    log=lambda *_: None)
    T.train(tiny(tmp_path, epochs=1, init_from=str(plain_run / "last.pt")), quiet=True, log=lambda *_: None)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["config"]["epochs"] = 2  # as if the 2-epoch run had stopped after its first
    torch.save(ckpt, tmp_path / "last.pt")
    lines = []
    resumed = T.train(config, resume=True, quiet=True, log=lines.append)
    assert any("resumed from" in ln for ln in lines) and not any("initialised from" in ln for ln in lines)
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    with pytest.raises(ValueError, match="init_from="):
        T.train(tiny(tmp_path, epochs=2), resume=True, quiet=True, log=lambda *_: None)
