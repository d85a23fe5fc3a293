"""The PyTorch trainer (minideeplab.train and the train / eval / segment commands): the loss falls, a resumed
run ends bit-identical to an uninterrupted one, checkpoints are plain (weights_only) and atomic, evaluation
agrees with the metrics, segment writes its files, and bad arguments get clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minideeplab import train as T
from minideeplab.cli import _train_config, build_parser, main
from minideeplab.data.voc import VOCSegmentation, voc_palette
from minideeplab.metrics import boundary_band, class_iou, confusion_matrix, mean_iou, pixel_accuracy, trimap_confusion
from minideeplab.training import loop as L

from helpers import interrupt_at

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(out, **kw):
    """A run of a few iterations on a few images at 64x64."""
    base = dict(model="v3plus", backbone="mini", data_root=str(DATA), out=str(out), epochs=3, batch_size=2,
                crop_size=64, train_images=6, eval_every=0, seed=0)
    return T.TrainConfig(**{**base, **kw})


def quiet_log(*_):
    pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread):
    """A one-epoch v3 checkpoint (with an evaluation on two images)."""
    out = tmp_path_factory.mktemp("run")
    T.train(tiny(out, model="v3", epochs=1, train_images=4, eval_every=1, val_images=2), quiet=True, log=quiet_log)
    return out / "last.pt"


# ---------------------------------------------------------------- training


def test_poly_learning_rate():
    assert T.poly_lr(0.01, 0, 100) == 0.01
    assert T.poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-15)
    assert T.poly_lr(0.01, 100, 100) == 0.0


def test_loss_decreases_on_a_repeated_batch(tmp_path):
    """Two whole images (scaled to the 64x64 crop, so only the flip changes) for 12 iterations: the raw loss
    falls well under its start (measured: 1.96 to 0.96, lr 0.03, the mini model of 2026-11), each epoch's
    record holds its iteration's loss, and the last step ran at the poly schedule's last learning rate."""
    config = tiny(tmp_path, model="v3", epochs=12, train_images=2, scale_range=(0.5, 0.5), lr=0.03)
    ckpt = T.train(config, quiet=True, log=quiet_log)
    losses = ckpt["losses"]
    assert len(losses) == 12 and ckpt["iteration"] == 12
    assert min(losses[-3:]) < 0.6 * losses[0], losses
    assert [r["losses"] for r in ckpt["metrics"]] == [[v] for v in losses]
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(T.poly_lr(0.03, 11, 12), rel=1e-12)


def test_resume_reaches_the_uninterrupted_weights(tmp_path, monkeypatch):
    """v3+ (with dropout: torch's generator state must be restored) for 3 epochs of 3 iterations, checkpoints
    every 2 iterations: interrupted before iteration 6 (last checkpoint: iteration 4, mid-epoch), then resumed;
    the weights, BN statistics and momentum buffers equal those of an uninterrupted run bit for bit, and
    differ from a run with another seed."""
    whole = T.train(tiny(tmp_path / "whole", checkpoint_every=2), quiet=True, log=quiet_log)

    config = tiny(tmp_path / "cut", checkpoint_every=2)
    with monkeypatch.context() as m:
        interrupt_at(m, L, 5)
        with pytest.raises(KeyboardInterrupt):
            T.train(config, quiet=True, log=quiet_log)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["iteration"] == 4
    lines = []
    resumed = T.train(config, resume=True, quiet=True, log=lines.append)
    assert "at iteration 4/9" in lines[0]
    assert resumed["iteration"] == whole["iteration"] == 9
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 9
    for e, record in enumerate(whole["metrics"]):  # per epoch: its raw losses and their moving average
        assert record["losses"] == whole["losses"][3 * e:3 * e + 3]
        a, b, c = record["losses"]
        assert record["loss"] == pytest.approx(0.9 * (0.9 * a + 0.1 * b) + 0.1 * c, rel=1e-12)
    assert whole["model"].keys() == resumed["model"].keys()
    differ = [k for k in whole["model"] if not torch.equal(whole["model"][k], resumed["model"][k])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:3]}"
    for k, s in whole["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"]), k

    other = T.train(tiny(tmp_path / "other", seed=1, epochs=1), quiet=True, log=quiet_log)
    w = "classifier.weight"
    assert not torch.equal(other["model"][w], T.train(tiny(tmp_path / "same", epochs=1), quiet=True,
                                                      log=quiet_log)["model"][w])


def test_resume_checks_the_run(tmp_path):
    config = tiny(tmp_path, model="v3", epochs=1, train_images=4)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "last.pt")):
        T.train(config, resume=True, quiet=True, log=quiet_log)
    T.train(config, quiet=True, log=quiet_log)
    with pytest.raises(ValueError, match=r"batch_size=2 \(now 4\)"):
        T.train(tiny(tmp_path, model="v3", epochs=1, train_images=4, batch_size=4), resume=True, quiet=True,
                log=quiet_log)
    done = T.train(config, resume=True, quiet=True, log=quiet_log)  # finished: nothing to do
    assert done["iteration"] == 2


def _scripted_evaluations(monkeypatch, mious, out):
    """Make train()'s evaluations return these mIoUs in turn; record the iteration of out/best.pt (None: no
    file) before each."""
    seen = []

    def evaluate(net, dataset, classes, device, world, rank):
        best = out / "best.pt"
        seen.append(torch.load(best, weights_only=True)["iteration"] if best.exists() else None)
        return {"miou": mious[len(seen) - 1], "images": len(dataset)}

    monkeypatch.setattr(L, "_evaluate_shared", evaluate)
    return seen


def test_best_checkpoint_follows_the_best_val_miou(tmp_path, monkeypatch):
    """Evaluations scoring nan, 0.5, 0.3: best.pt appears after the 0.5 (nan, no class seen, is no best) and
    stays. Resumed after epoch 3, the best so far comes from the checkpoint's history (0.5, not the first
    record's nan): 0.4 does not beat it, 0.6 does."""
    config = tiny(tmp_path, epochs=5, train_images=2, eval_every=1)
    lines = []
    seen = _scripted_evaluations(monkeypatch, [float("nan"), 0.5, 0.3], tmp_path)
    with monkeypatch.context() as m:
        interrupt_at(m, L, 3)
        with pytest.raises(KeyboardInterrupt):
            T.train(config, quiet=True, log=lines.append)
    assert seen == [None, None, 2]
    assert [line.endswith("(best)") for line in lines] == [False, True, False], lines

    seen = _scripted_evaluations(monkeypatch, [0.4, 0.6], tmp_path)
    final = T.train(config, resume=True, quiet=True, log=quiet_log)
    assert seen == [2, 2]
    assert final["iteration"] == 5 and [r["miou"] for r in final["metrics"]][1:] == [0.5, 0.3, 0.4, 0.6]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["iteration"] == 5 and best["metrics"][-1]["miou"] == 0.6
    assert all(torch.equal(v, final["model"][k]) for k, v in best["model"].items())


def test_model_options_build_store_and_load(tmp_path):
    """v3+ without image pooling, rates (2, 4, 6), 16-wide ASPP: trained, stored as plain values, rebuilt by
    load_model; resuming without them, unknown options and non-literal values are refused."""
    options = {"image_pooling": False, "atrous_rates": [2, 4, 6], "aspp_channels": 16}
    config = tiny(tmp_path, epochs=1, train_images=2, model_options=options)
    assert config.model_options == {"image_pooling": False, "atrous_rates": (2, 4, 6), "aspp_channels": 16}
    T.train(config, quiet=True, log=quiet_log)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["config"]["model_options"] == config.model_options
    model, _ = T.load_model(tmp_path / "last.pt")
    assert (model.config.image_pooling, model.config.atrous_rates, model.config.aspp_channels) == (False, (2, 4, 6), 16)
    default = T.build(tiny(tmp_path), 7).state_dict()
    assert set(model.state_dict()) < set(default)  # the image-pooling branch is gone
    assert model.state_dict()["aspp.project.0.weight"].shape[:2] == (16, 4 * 16)

    with pytest.raises(ValueError, match=r"model_options=\{'image_pooling': False.*\(now \{\}\)"):
        T.train(tiny(tmp_path, epochs=1, train_images=2), resume=True, quiet=True, log=quiet_log)
    with pytest.raises(ValueError, match="unknown option 'pooling'"):
        T.train(tiny(tmp_path / "bad", model_options={"pooling": False}), quiet=True, log=quiet_log)
    with pytest.raises(ValueError, match="model_options must map option names to plain values"):
        tiny(tmp_path, model_options={"dropout": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="model_options must be a dict, got list"):
        tiny(tmp_path, model_options=[("dropout", 0.1)])
    with pytest.raises(ValueError, match=r"dtype \(--dtype\) must be 'float32' or 'float64', got 'float16'"):
        tiny(tmp_path, dtype="float16")


def test_checkpoint_is_plain_and_loads_with_weights_only(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["format"] == T.CHECKPOINT_FORMAT and ckpt["iteration"] == 2
    assert ckpt["classes"] == list(VOCSegmentation(DATA).classes)
    assert ckpt["config"]["model"] == "v3" and ckpt["config"]["batch_size"] == 2
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    assert ckpt["metrics"][0]["images"] == 2 and 0 <= ckpt["metrics"][0]["miou"] <= 1
    model, classes = T.load_model(checkpoint)
    assert not model.training and classes == ckpt["classes"]
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half way leaves the previous checkpoint (or none) and no temporary file."""
    path = tmp_path / "last.pt"
    T.save_checkpoint({"iteration": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        T.save_checkpoint({"iteration": 2, "w": torch.zeros(3)}, path)
    with pytest.raises(OSError):
        T.save_checkpoint({"iteration": 2}, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=True)["iteration"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    T.save_checkpoint({"iteration": 2}, path)
    assert torch.load(path, weights_only=True)["iteration"] == 2


# ---------------------------------------------------------------- evaluation


class Oracle(torch.nn.Module):
    """Reads the class from the red channel (red = 30 * class) of the normalised image; `constant` predicts
    that class everywhere instead."""

    def __init__(self, num_classes, constant=None):
        super().__init__()
        self.C, self.constant = num_classes, constant

    def forward(self, x):
        red = (x[:, 0] * T.STD[0] + T.MEAN[0]) * 255
        k = torch.full_like(red, self.constant).long() if self.constant is not None else (red / 30).round().long()
        return {"out": 10 * torch.nn.functional.one_hot(k.clamp(0, self.C - 1), self.C).permute(0, 3, 1, 2).float()}


def hand_made_set():
    """Two 12x16 images of classes 0..3 with ignored pixels; the red channel codes the class."""
    a = np.zeros((12, 16), np.uint8)
    a[2:8, 3:9], a[6:11, 10:15] = 1, 2
    a[2:8, 8], a[0, :] = 255, 255
    b = np.full((12, 16), 3, np.uint8)
    b[:, :5] = 0
    items = []
    for label in (a, b):
        image = np.full(label.shape + (3,), 90, np.uint8)
        image[..., 0] = np.where(label == 255, 0, label * 30)
        items.append((image, label))
    return items


def test_evaluate_an_oracle_and_a_constant_model():
    data, classes = hand_made_set(), ["bg", "one", "two", "three", "absent"]
    perfect = T.evaluate(Oracle(5), data, classes, flip=True, quiet=True)
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0 and perfect["images"] == 2
    assert perfect["per_class_iou"]["two"] == 1.0 and np.isnan(perfect["per_class_iou"]["absent"])
    assert set(perfect["trimap_accuracy"]) == {"1", "2", "4", "8", "16"}
    assert all(v == 1.0 for v in perfect["trimap_accuracy"].values())

    background = T.evaluate(Oracle(5, constant=0), data, classes, widths=(1, 3), quiet=True)
    labels = np.stack([lb for _, lb in data])
    valid = labels != 255
    n_bg = int((labels == 0).sum())
    assert background["pixel_accuracy"] == n_bg / valid.sum()
    assert background["per_class_iou"]["bg"] == n_bg / valid.sum()
    assert [background["per_class_iou"][c] for c in ("one", "two", "three")] == [0, 0, 0]
    assert background["miou"] == pytest.approx((n_bg / valid.sum()) / 4, rel=1e-15)
    for w in (1, 3):
        bands = [boundary_band(lb, w) for lb in labels]
        hits = sum(int((lb[band] == 0).sum()) for lb, band in zip(labels, bands))
        assert background["trimap_accuracy"][str(w)] == hits / sum(int(b.sum()) for b in bands)


def test_eval_json_matches_the_metrics(checkpoint, capsys):
    """`minideeplab eval --json` on 3 val images equals the metrics of the model's own argmax."""
    assert main(["eval", "--checkpoint", str(checkpoint), "--images", "3", "--json", "--trimap-widths", "2", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"miou", "pixel_accuracy", "per_class_iou", "trimap_accuracy"} <= set(out)

    model, classes = T.load_model(checkpoint)
    val = VOCSegmentation(DATA, "val")
    C = len(classes)
    cm, tri = np.zeros((C, C), np.int64), np.zeros((2, C, C), np.int64)
    with torch.no_grad():
        for i in range(3):
            image, label = val[i]
            # eval's argmax is over probabilities (the mean softmax of predict): float32 softmax can tie where
            # the logits do not, so take the argmax of the model's own softmax here too
            pred = model(T.to_tensor(image)[None])["out"][0].softmax(0).argmax(0).numpy()
            cm += confusion_matrix(pred, label, C)
            tri += trimap_confusion(pred, label, (2, 8), C)
    assert out["miou"] == pytest.approx(mean_iou(cm), abs=1e-12)
    assert out["pixel_accuracy"] == pytest.approx(pixel_accuracy(cm), abs=1e-12)
    expected = [None if np.isnan(v) else v for v in class_iou(cm)]
    assert list(out["per_class_iou"]) == classes
    assert list(out["per_class_iou"].values()) == pytest.approx(expected, abs=1e-12)
    assert out["trimap_accuracy"] == pytest.approx({"2": pixel_accuracy(tri[0]), "8": pixel_accuracy(tri[1])})


def test_multiscale_and_flip_average_probabilities(checkpoint):
    model, _ = T.load_model(checkpoint)
    image = VOCSegmentation(DATA, "val")[0][0][:100, :90]  # not a multiple of the output stride: padded
    p1 = T.predict(model, image)
    assert p1.shape == (7, 100, 90) and torch.allclose(p1.sum(0), torch.ones(100, 90), atol=1e-5)
    mirrored = T.predict(model, np.ascontiguousarray(image[:, ::-1]))
    both = T.predict(model, image, flip=True)
    assert torch.allclose(both, (p1 + mirrored.flip(-1)) / 2, atol=1e-6)
    half = T.predict(model, image, scales=(0.5,))
    assert torch.allclose(T.predict(model, image, scales=(0.5, 1.0)), (half + p1) / 2, atol=1e-6)


# ---------------------------------------------------------------- segment and the command line


def test_segment_writes_label_maps_and_overlays(checkpoint, tmp_path, capsys):
    png = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(png)
    jpg = DATA / "JPEGImages" / "synth_00300.jpg"
    out = tmp_path / "seg"
    assert main(["segment", str(png), str(jpg), "--checkpoint", str(checkpoint), "--out", str(out), "--crf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["small.png", "small_overlay.png", "synth_00300.png",
                                                     "synth_00300_overlay.png"]
    for src, stem in ((png, "small"), (jpg, "synth_00300")):
        image = np.asarray(Image.open(src).convert("RGB"))
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (image.shape[1], image.shape[0])
        pred = np.asarray(label)
        assert pred.max() < 7
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        H = image.shape[0]
        assert overlay.shape[0] > H and overlay.shape[1:] == image.shape[1:]  # the legend strip below the image
        assert np.abs(overlay[:H] - (0.5 * image + 0.5 * voc_palette()[pred])).max() <= 0.5 + 1e-9
    assert "its classes: background," in capsys.readouterr().out  # the synthetic shapes, said plainly


def test_command_line_errors_name_the_problem(checkpoint, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "--data-root" in (e := error(["train", "--data-root", str(tmp_path / "nowhere"), "--quiet"]))
    assert str(tmp_path / "nowhere") in e
    assert "batch_size (--batch-size) must be an int >= 2" in error(["train", "--batch-size", "1", "--quiet"])
    assert "got 'v4'" in error(["train", "--model", "v4", "--data-root", str(DATA), "--quiet"])
    assert str(tmp_path / "none.pt") in error(["eval", "--checkpoint", str(tmp_path / "none.pt")])
    assert "nosuch.txt is missing (splits found: train, trainval, val)" in error(
        ["eval", "--checkpoint", str(checkpoint), "--split", "nosuch"])
    assert "missing.jpg" in error(["segment", str(tmp_path / "missing.jpg"), "--checkpoint", str(checkpoint),
                                   "--out", str(tmp_path)])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / d / "x.png")
    assert "x.png" in error(["segment", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                             "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert str(bad) in error(["eval", "--checkpoint", str(bad)])
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(checkpoint), "--scales", "0"])
    assert "must be > 0" in capsys.readouterr().err


def test_model_option_flags_and_quiet_training(tmp_path, capsys):
    """--model-option values are Python literals; --quiet hides progress bars only: the per-epoch line, the
    checkpoint and the best checkpoint are printed."""
    args = build_parser().parse_args(["train", "--model-option", "image_pooling=False", "--model-option",
                                      "atrous_rates=(2, 4, 6)", "--model-option", "decoder_layout='smp'"])
    assert _train_config(args).model_options == {"image_pooling": False, "atrous_rates": (2, 4, 6),
                                                 "decoder_layout": "smp"}
    assert main(["train", "--data-root", str(DATA), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "2",
                 "--crop-size", "64", "--train-images", "2", "--val-images", "1", "--model-option", "dropout=0.1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 1/1  iteration 1/1  loss ") and out[0].endswith("(best)"), out
    assert out[1:] == [f"checkpoint: {tmp_path / 'last.pt'} (iteration 1)",
                       f"best: {tmp_path / 'best.pt'} (val mIoU {float(out[0].split()[-2]):.4f})"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["config"]["model_options"] == {"dropout": 0.1}

    for flag, why in (("decoder_layout=smp", "decoder_layout: the value must be a Python literal"),
                      ("aux", "expected KEY=VALUE, e.g. image_pooling=False, got 'aux'"),
                      ("2x=1", "expected KEY=VALUE")):
        with pytest.raises(SystemExit):
            main(["train", "--model-option", flag])
        assert why in capsys.readouterr().err
    assert main(["train", "--data-root", str(DATA), "--model-option", "aux=True", "--model-option", "aux=False"]) == 2
    assert "--model-option aux is given twice (True and False)" in capsys.readouterr().err


def test_backend_scratch_calls_the_numpy_trainer(tmp_path, monkeypatch, capsys):
    """--backend scratch hands the same TrainConfig to minideeplab.training.numpy_backend.train(config, resume=...,
    quiet=..., log=...), imported only then; the real one accepts that call."""
    import inspect
    import sys
    import types

    calls = []
    fake = types.ModuleType("minideeplab.training.numpy_backend")
    fake.train = lambda config, resume=False, quiet=False, log=print: calls.append((config, resume, quiet, log)) or {
        "iteration": 7, "metrics": []}
    monkeypatch.setitem(sys.modules, "minideeplab.training.numpy_backend", fake)
    argv = ["train", "--data-root", str(DATA), "--out", str(tmp_path), "--epochs", "2", "--model-option", "dropout=0.0"]
    assert main([*argv, "--backend", "scratch", "--resume", "--quiet"]) == 0
    args = build_parser().parse_args(argv)
    assert calls == [(_train_config(args), True, True, print)]
    assert capsys.readouterr().out == f"checkpoint: {tmp_path / 'last.pt'} (iteration 7)\n"
    monkeypatch.delitem(sys.modules, "minideeplab.training.numpy_backend")

    from minideeplab.training.numpy_backend import train as numpy_train
    inspect.signature(numpy_train).bind(_train_config(args), resume=False, quiet=True, log=print)


def test_loader_workers_do_not_change_the_weights(tmp_path):
    """Augmentation is seeded per (epoch, image), so two loader processes give the weights of none."""
    runs = [T.train(tiny(tmp_path / str(w), epochs=1, train_images=4, num_workers=w), quiet=True, log=quiet_log)
            for w in (0, 2)]
    assert all(torch.equal(runs[0]["model"][k], runs[1]["model"][k]) for k in runs[0]["model"])


# ---------------------------------------------------------------- another val folder, shipped checkpoints


def test_val_root_scores_another_folder(tmp_path, capsys):
    """Train on the committed set, evaluate on two images of another folder: the records, `eval`'s default
    data and a resumption with another val_root (allowed: it changes no weight) all use it; a missing val
    root is an error that names it."""
    from minideeplab.data.synthetic import generate

    other = generate(tmp_path / "other", seed=3, n_train=0, n_val=2, size=64, progress=False)
    config = tiny(tmp_path / "run", epochs=1, train_images=2, eval_every=1, val_root=str(other))
    ckpt = T.train(config, quiet=True, log=quiet_log)
    assert ckpt["config"]["val_root"] == str(other) and ckpt["metrics"][0]["images"] == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", "--data-root", str(DATA),
                 "--images", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    T.train(tiny(tmp_path / "run", epochs=1, train_images=2, eval_every=1), resume=True, quiet=True, log=quiet_log)

    with pytest.raises(FileNotFoundError, match=f"val root {tmp_path / 'nowhere'}"):
        T.train(tiny(tmp_path / "run2", epochs=1, train_images=2, eval_every=1, val_root=str(tmp_path / "nowhere")),
                quiet=True, log=quiet_log)
    assert main(["train", "--data-root", str(DATA), "--val-root", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert f"--val-root {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (other / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(ValueError, match=rf"val root {other} has classes \['background', 'cat'\], the data root"):
        T.train(tiny(tmp_path / "run3", epochs=1, train_images=2, eval_every=1, val_root=str(other)), quiet=True,
                log=quiet_log)


def test_scale_range_flag(capsys):
    parse = build_parser().parse_args
    assert _train_config(parse(["train"])).scale_range == (0.5, 2.0)
    assert _train_config(parse(["train", "--scale-range", "0.75", "1.5"])).scale_range == (0.75, 1.5)
    with pytest.raises(SystemExit):
        parse(["train", "--scale-range", "0", "1"])
    assert "must be > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"scale_range must be \(low, high\) with 0 < low <= high, got \(2.0, 1.0\)"):
        _train_config(parse(["train", "--scale-range", "2", "1"]))


def test_optimizer_and_warm_up_flags():
    parse = build_parser().parse_args
    config = _train_config(parse(["train"]))
    assert (config.optimizer, config.warmup_iters) == ("sgd", 0)
    config = _train_config(parse(["train", "--optimizer", "adamw", "--warmup-iters", "375", "--weight-decay", "0.05"]))
    assert (config.optimizer, config.warmup_iters, config.weight_decay) == ("adamw", 375, 0.05)
    with pytest.raises(ValueError, match=r"optimizer \(--optimizer\) must be one of 'sgd', 'adamw', got 'adam'"):
        _train_config(parse(["train", "--optimizer", "adam"]))


def test_export_ships_weights_without_the_optimizer(checkpoint, tmp_path, capsys):
    """float16 export: no optimizer or random state, about a quarter of last.pt, the history kept; load_model
    reads it (weights cast back to float32, within float16's rounding of the original); it cannot be resumed.
    A float32 export holds exactly the trained weights."""
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "ship.pt")]) == 0
    assert "weights in float16" in capsys.readouterr().out
    full, shipped = torch.load(checkpoint, weights_only=True), torch.load(tmp_path / "ship.pt", weights_only=True)
    assert "optimizer" not in shipped and "rng" not in shipped
    assert shipped["exported"] == {"from": str(checkpoint), "dtype": "float16"}
    assert repr(shipped["metrics"]) == repr(full["metrics"]) and shipped["losses"] == full["losses"]  # nan != nan
    assert shipped["config"] == full["config"] and shipped["classes"] == full["classes"]
    for k, v in full["model"].items():
        s = shipped["model"][k]
        assert s.dtype == (torch.float16 if v.is_floating_point() else v.dtype), k
        assert torch.allclose(s.float(), v.float(), rtol=1e-3, atol=1e-4) if v.is_floating_point() else torch.equal(s, v)
    assert (tmp_path / "ship.pt").stat().st_size < checkpoint.stat().st_size / 3.5  # float32 weights + momentum

    model, classes = T.load_model(tmp_path / "ship.pt")
    original, _ = T.load_model(checkpoint)
    assert classes == full["classes"] and next(model.parameters()).dtype == torch.float32
    x = T.to_tensor(VOCSegmentation(DATA, "val")[0][0])[None]
    with torch.no_grad():
        a, b = model(x)["out"], original(x)["out"]
    assert (a - b).abs().max() <= 1e-2 * b.abs().max(), "float16 weights moved the logits by more than 1 %"

    T.export_checkpoint(checkpoint, tmp_path / "ship32.pt", dtype="float32")
    model32, _ = T.load_model(tmp_path / "ship32.pt")
    assert all(torch.equal(v, full["model"][k]) for k, v in model32.state_dict().items())

    (tmp_path / "run").mkdir()
    (tmp_path / "ship.pt").rename(tmp_path / "run" / "last.pt")
    config = T.TrainConfig(**{k: v for k, v in full["config"].items()})
    config.out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="holds weights only .* cannot resume from it"):
        T.train(config, resume=True, quiet=True, log=quiet_log)
    with pytest.raises(ValueError, match="dtype must be 'float16', 'float32' or 'float64', got 'int8'"):
        T.export_checkpoint(checkpoint, tmp_path / "x.pt", dtype="int8")
