"""segment with torchvision's published weights, offline: a state_dict with random weights written under the real
file name into a temporary TORCH_HOME goes through torchvision's own weights API; the NumPy and torch backends
label alike; a missing file is named with its folder; a local state_dict needs its --arch."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import segmentation

from helpers import nontrivial_module
from minideeplab.cli import main
from minideeplab.data.photos import photograph
from minideeplab.training.data import to_tensor
from minideeplab.pretrained import VOC_CLASSES, WeightsMissing, load_torchvision, weights_file

ARCH = "lraspp_mobilenet_v3_large"  # the smallest of the four: the test's forward passes stay short
PHOTO = photograph("coffee", (60, 80))


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random lraspp weights under torchvision's file name. The class scores
    are 21 of the stride-8 features, standardised on the test's photo, so that the labels vary over it (a random
    head labels a photo with one class, and an agreement of one label would test nothing)."""
    home = tmp_path_factory.mktemp("torch_home")
    module = nontrivial_module(segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=21), seed=3).eval()
    seen = np.asarray(Image.fromarray(PHOTO).resize((693, 520), Image.BILINEAR))  # segment's preprocessing
    with torch.no_grad():
        low = module.backbone(to_tensor(seen)[None])["low"][0, :21]
        mu, sd = low.mean((1, 2)), low.std((1, 2))
        head = module.classifier
        head.low_classifier.weight.copy_(torch.cat([torch.diag(1 / sd), torch.zeros(21, 19)], 1)[:, :, None, None])
        head.low_classifier.bias.copy_(-mu / sd)
        head.high_classifier.weight.zero_()
        head.high_classifier.bias.zero_()
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(module.state_dict(), folder / "lraspp_mobilenet_v3_large-d234d4ea.pth")
    return home


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(PHOTO).save(path)
    return path


def _segment(args, torch_home, monkeypatch, capsys, offline=False):
    """(exit status, stdout, stderr) of ``minideeplab segment ARGS`` with TORCH_HOME set (in this process: the
    hub folder and MINIDEEPLAB_OFFLINE are read when the weights are)."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    if offline:
        monkeypatch.setenv("MINIDEEPLAB_OFFLINE", "1")
    capsys.readouterr()
    rc = main(["segment", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_hub_file_name_is_torchvisions(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert weights_file(ARCH) == torch_home / "hub" / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth"
    assert weights_file("deeplabv3_resnet50").name == "deeplabv3_resnet50_coco-cd0a2569.pth"


def test_numpy_and_torch_backends_label_alike(torch_home, photo, tmp_path, monkeypatch, capsys):
    outs = {}
    for backend in ("numpy", "torch"):
        out = tmp_path / backend
        rc, stdout, stderr = _segment([photo, "--weights", f"torchvision:{ARCH}", "--backend", backend, "--out", out],
                                      torch_home, monkeypatch, capsys)
        assert rc == 0, stdout + stderr
        assert "its classes: background, aeroplane, bicycle" in stdout
        outs[backend] = np.asarray(Image.open(out / "coffee.png"))
        overlay = np.asarray(Image.open(out / "coffee_overlay.png"))
        assert outs[backend].shape == (60, 80) and overlay.shape[1:] == (80, 3) and overlay.shape[0] > 60
    assert len(np.unique(outs["torch"])) >= 10  # a test of agreement needs more than one label
    assert np.mean(outs["numpy"] == outs["torch"]) >= 0.999


def test_numpy_model_is_torchvisions_on_the_same_weights(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model, classes = load_torchvision(ARCH, backend="numpy")
    module, _ = load_torchvision(ARCH, backend="torch")
    assert classes == list(VOC_CLASSES) and len(classes) == 21
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 48)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x))["out"].numpy()
    assert np.abs(model(x) - want).max() <= 1e-4 * np.abs(want).max()


def test_a_missing_weights_file_is_named_and_nothing_is_written(photo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    rc, _, stderr = _segment([photo, "--weights", "torchvision:deeplabv3_resnet50", "--out", out],
                             tmp_path / "empty", monkeypatch, capsys, offline=True)
    assert rc == 2
    folder = tmp_path / "empty" / "hub" / "checkpoints"
    assert "deeplabv3_resnet50_coco-cd0a2569.pth" in stderr and str(folder) in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(WeightsMissing):
        load_torchvision("deeplabv3_resnet50")


def test_a_local_state_dict_needs_its_arch(torch_home, photo, tmp_path, monkeypatch, capsys):
    local = tmp_path / "mine.pt"
    local.write_bytes((torch_home / "hub" / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth").read_bytes())
    empty = tmp_path / "empty"
    rc, _, stderr = _segment([photo, "--weights", local, "--out", tmp_path / "a"], empty, monkeypatch, capsys)
    assert rc == 2 and "--weights FILE needs --arch" in stderr
    rc, _, stderr = _segment([photo, "--weights", local, "--arch", "deeplabv3_resnet50", "--out", tmp_path / "b"],
                             empty, monkeypatch, capsys)
    assert rc == 2 and "is not a deeplabv3_resnet50 state_dict" in stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    rc, _, stderr = _segment([photo, "--weights", junk, "--arch", ARCH, "--out", tmp_path / "j"], empty, monkeypatch,
                             capsys)
    assert rc == 2 and "junk.pt is not a state_dict torch can load" in stderr
    assert not (tmp_path / "j").exists()
    rc, _, stderr = _segment([photo, "--weights", local, "--arch", ARCH, "--out", tmp_path / "c", "--backend",
                              "torch", "--quiet"], empty, monkeypatch, capsys)
    assert rc == 0, stderr
    assert (tmp_path / "c" / "coffee.png").exists()


def test_notebook_10s_photo_section_labels_as_segment_does(torch_home, photo, tmp_path, monkeypatch, capsys):
    """viz.photo.segment_photo (the notebook's last section) on an array and on a file, both backends: segment's
    labels, an overlay over a legend of the classes present."""
    from minideeplab.viz.photo import segment_photo

    rc, _, stderr = _segment([photo, "--weights", f"torchvision:{ARCH}", "--out", tmp_path / "cli", "--quiet"],
                             torch_home, monkeypatch, capsys)
    assert rc == 0, stderr
    cli = np.asarray(Image.open(tmp_path / "cli" / "coffee.png"))
    numpy_ = segment_photo(PHOTO, ARCH)
    torch_ = segment_photo(photo, ARCH, backend="torch")
    assert np.array_equal(numpy_["labels"], cli)
    assert numpy_["labels"].shape == (60, 80) and np.mean(numpy_["labels"] == torch_["labels"]) >= 0.999
    assert numpy_["classes"] == [VOC_CLASSES[c] for c in np.unique(cli)] and len(numpy_["classes"]) >= 10
    overlay = numpy_["overlay"]
    assert overlay.dtype == np.uint8 and overlay.shape[1:] == (80, 3) and overlay.shape[0] > 60
    assert np.array_equal(overlay, np.asarray(Image.open(tmp_path / "cli" / "coffee_overlay.png").convert("RGB")))


def test_notebook_10s_photo_section_says_where_the_weights_go_and_downloads_nothing(tmp_path, monkeypatch):
    import minideeplab.pretrained
    from minideeplab.viz.photo import segment_photo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("MINIDEEPLAB_OFFLINE", raising=False)
    monkeypatch.setattr(minideeplab.pretrained, "load_torchvision", lambda *a, **k: pytest.fail("tried to load"))
    with pytest.raises(WeightsMissing) as info:
        segment_photo(PHOTO, "deeplabv3_mobilenet_v3_large")
    msg = str(info.value)
    assert "deeplabv3_mobilenet_v3_large-fc3c493d.pth goes in " + str(tmp_path / "empty" / "hub" / "checkpoints") in msg
    assert "minideeplab segment --weights torchvision:deeplabv3_mobilenet_v3_large PHOTO.jpg" in msg
    assert "download https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth into" in msg
    with pytest.raises(ValueError, match="arch must be one of deeplabv3_resnet50, .*got 'fcn'"):
        segment_photo(PHOTO, "fcn")
    with pytest.raises(ValueError, match=r"an \(H, W, 3\) uint8 array, got an array \(60, 80\) uint8"):
        segment_photo(PHOTO[..., 0], ARCH)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg is not a file"):
        segment_photo(tmp_path / "nowhere.jpg", ARCH)
