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
from minideeplab.cli import main
from minideeplab.data.voc import VOCSegmentation, voc_palette
from minideeplab.metrics import boundary_band, class_iou, confusion_matrix, mean_iou, pixel_accuracy, trimap_confusion

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
    """Two whole images (scaled to the 64x64 crop, so only the flip changes) for 12 iterations: the loss falls
    to well under its start, and the last step ran at the poly schedule's last learning rate."""
    config = tiny(tmp_path, model="v3", epochs=12, train_images=2, scale_range=(0.5, 0.5), lr=0.01)
    ckpt = T.train(config, quiet=True, log=quiet_log)
    losses = [r["loss"] for r in ckpt["metrics"]]
    assert len(losses) == 12 and ckpt["iteration"] == 12
    assert min(losses[-3:]) < 0.5 * losses[0], losses
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(T.poly_lr(0.01, 11, 12), rel=1e-12)


def _interrupt_at(monkeypatch, iteration):
    """Make train() stop (KeyboardInterrupt) when it is about to run iteration `iteration` (0-based)."""
    poly = T.poly_lr

    def interrupted(base, it, max_it, power=0.9):
        if it == iteration:
            raise KeyboardInterrupt
        return poly(base, it, max_it, power)

    monkeypatch.setattr(T, "poly_lr", interrupted)


def test_resume_reaches_the_uninterrupted_weights(tmp_path, monkeypatch):
    """v3+ (with dropout: torch's generator state must be restored) for 3 epochs of 3 iterations, checkpoints
    every 2 iterations: interrupted before iteration 6 (last checkpoint: iteration 4, mid-epoch), then resumed;
    the weights, BN statistics and momentum buffers equal those of an uninterrupted run bit for bit, and
    differ from a run with another seed."""
    whole = T.train(tiny(tmp_path / "whole", checkpoint_every=2), quiet=True, log=quiet_log)

    config = tiny(tmp_path / "cut", checkpoint_every=2)
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            T.train(config, quiet=True, log=quiet_log)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["iteration"] == 4
    lines = []
    resumed = T.train(config, resume=True, quiet=True, log=lines.append)
    assert "at iteration 4/9" in lines[0]
    assert resumed["iteration"] == whole["iteration"] == 9
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
            pred = model(T.to_tensor(image)[None])["out"][0].argmax(0).numpy()
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
        assert np.abs(overlay - (0.5 * image + 0.5 * voc_palette()[pred])).max() <= 0.5 + 1e-9


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


def test_loader_workers_do_not_change_the_weights(tmp_path):
    """Augmentation is seeded per (epoch, image), so two loader processes give the weights of none."""
    runs = [T.train(tiny(tmp_path / str(w), epochs=1, train_images=4, num_workers=w), quiet=True, log=quiet_log)
            for w in (0, 2)]
    assert all(torch.equal(runs[0]["model"][k], runs[1]["model"][k]) for k in runs[0]["model"])
