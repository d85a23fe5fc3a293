"""The synthetic scenes (deterministic, shapes not looks), the VOC reader on fixture folders, the transforms."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minideeplab.data import synthetic
from minideeplab.data.synthetic import CLASSES, generate, scene
from minideeplab.data.transforms import random_crop, random_flip, random_scale, resize, train_transform
from minideeplab.data.voc import VOC_CLASSES, VOCSegmentation, find_root, read_image, read_label, voc_palette

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "synthetic"


# ---------------------------------------------------------------- the committed split

def test_committed_split_layout():
    train, val = VOCSegmentation(COMMITTED, "train"), VOCSegmentation(COMMITTED, "val")
    assert (len(train), len(val)) == (synthetic.N_TRAIN, synthetic.N_VAL)
    assert not set(train.ids) & set(val.ids)
    assert train.classes == CLASSES and train.num_classes == 7
    assert len(list((COMMITTED / "JPEGImages").glob("*.jpg"))) == len(train) + len(val)
    assert len(list((COMMITTED / "SegmentationClass").glob("*.png"))) == len(train) + len(val)
    size = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert size < 5e6, f"the committed split is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("index", [0, 1, 299, 300, 399])
def test_regenerates_committed_files_byte_for_byte(tmp_path, index):
    generate(tmp_path, seed=0, indices=[index], progress=False)
    names = [f"JPEGImages/{synthetic.image_id(index)}.jpg", f"SegmentationClass/{synthetic.image_id(index)}.png",
             "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt",
             "ImageSets/Segmentation/trainval.txt", "classes.txt"]
    for name in names:
        new, old = (tmp_path / name).read_bytes(), (COMMITTED / name).read_bytes()
        if new != old and name.endswith((".jpg", ".png")):
            same_pixels = np.array_equal(np.asarray(Image.open(tmp_path / name)), np.asarray(Image.open(COMMITTED / name)))
            pytest.fail(f"{name} differs from the committed file ({len(new)} vs {len(old)} bytes; decoded pixels "
                        f"{'equal: the encoder (Pillow, libjpeg-turbo, zlib) changed' if same_pixels else 'differ'})")
        assert new == old, f"{name} differs from the committed file"


def test_committed_labels_are_the_scene_labels():
    data = VOCSegmentation(COMMITTED, "val")
    for i in (0, 57):
        image, label = data[i]
        s = scene(0, synthetic.N_TRAIN + i)
        np.testing.assert_array_equal(label, s.label)  # PNG is lossless, palette indices are the classes
        assert np.abs(image.astype(int) - s.image).mean() < 6  # JPEG quality 90


# ---------------------------------------------------------------- the scenes

def test_scene_is_a_function_of_seed_and_index():
    a, b, c = scene(0, 7), scene(0, 7), scene(1, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8
    assert a.label.shape == (128, 128) and a.label.dtype == np.uint8
    small = scene(0, 7, size=64)
    assert small.image.shape == (64, 64, 3)
    for bad in (dict(seed=-1), dict(index=1.5), dict(size=8)):
        with pytest.raises(ValueError, match=f"scene: {next(iter(bad))} must be"):
            scene(**bad)


@pytest.fixture(scope="module")
def committed_labels():
    return VOCSegmentation(COMMITTED, "train").arrays()


def test_labels_are_classes_with_ignored_borders(committed_labels):
    _, labels = committed_labels
    values = set(np.unique(labels).tolist())
    assert values == set(range(len(CLASSES))) | {255}
    ignored = np.mean(labels == 255)
    assert 0.005 < ignored < 0.06, ignored
    # 255 marks pixels that mix classes: next to objects only (clutter and background regions make none), and
    # nearly all have two classes within 2 px (the rest straddle an object's sub-pixel tip)
    from scipy.ndimage import distance_transform_edt

    mixed = []
    for label in labels[:40]:
        ys, xs = np.nonzero(label == 255)
        near_object = distance_transform_edt(~((label > 0) & (label < 255)))
        assert near_object[ys, xs].max() <= 6  # a thin tip can be mixed pixels only, for a few pixels
        mixed += [len(set(np.unique(label[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]).tolist()) - {255}) >= 2
                  for y, x in zip(ys, xs)]
    assert np.mean(mixed) > 0.95, np.mean(mixed)


def test_scales_overlaps_and_balance(committed_labels):
    _, labels = committed_labels
    objects = [o for i in range(60) for o in scene(0, i).objects]
    radii = np.array([o["radius"] for o in objects])
    assert radii.min() < 10 and radii.max() > 32  # small and large objects in the same set
    counts = np.bincount([o["cls"] for o in objects], minlength=len(CLASSES))[1:]
    assert counts.min() > 0.5 * counts.mean()
    pixels = np.bincount(labels.ravel(), minlength=256)[:len(CLASSES)] / labels.size
    assert 0.5 < pixels[0] < 0.8 and pixels[1:].min() > 0.02, pixels
    # objects touch and overlap: some pixels of one class border another object class
    touching = (labels[:, :, 1:] > 0) & (labels[:, :, :-1] > 0) & (labels[:, :, 1:] != labels[:, :, :-1])
    touching &= (labels[:, :, 1:] != 255) & (labels[:, :, :-1] != 255)
    assert touching.any(axis=(1, 2)).sum() > 10


def _local_features(image, r=4):
    """Per pixel: RGB and the mean and spread of RGB over a (2r+1)^2 window (what a 9x9 field of view sees)."""
    from scipy.ndimage import uniform_filter

    x = image.astype(np.float64)
    m = np.stack([uniform_filter(x[..., c], 2 * r + 1) for c in range(3)], -1)
    s = np.sqrt(np.maximum(np.stack([uniform_filter(x[..., c] ** 2, 2 * r + 1) for c in range(3)], -1) - m ** 2, 0))
    return np.concatenate([x, m, s], -1)


def test_class_cannot_be_read_from_a_small_neighbourhood():
    """Deep inside objects (>= 6 px from any border), a linear classifier on 9x9 colour and texture statistics
    names the shape no better than guessing the commonest class: classes are shapes, not looks."""
    from scipy.ndimage import distance_transform_edt

    feats, classes, images = [], [], []
    for i in range(48):
        s = scene(0, i)
        keep = np.zeros(s.label.shape, bool)
        for k in range(1, len(CLASSES)):
            keep |= (s.label == k) & (distance_transform_edt(s.label == k) >= 6)
        f, c = _local_features(s.image)[keep][::4], s.label[keep][::4]
        feats.append(f), classes.append(c), images.append(np.full(len(c), i))
    X, y, img = np.concatenate(feats), np.concatenate(classes).astype(int), np.concatenate(images)
    train, test = img < 32, img >= 32
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-9
    A = np.c_[(X - mu) / sd, np.ones(len(X))]
    onehot = np.eye(len(CLASSES))[y]
    W = np.linalg.lstsq(A[train], onehot[train], rcond=None)[0]
    acc = np.mean((A[test] @ W)[:, 1:].argmax(1) + 1 == y[test])
    majority = np.bincount(y[test]).max() / test.sum()
    assert len(set(y[test].tolist())) == len(CLASSES) - 1
    assert acc < majority + 0.08, f"local statistics predict the shape: accuracy {acc:.2f}, majority {majority:.2f}"


def test_objects_can_be_found_from_a_small_neighbourhood():
    """The other half of the design: a linear classifier on the same 9x9 statistics and colourfulness (max -
    min of RGB) tells object from background (grey regions, clutter included) far better than the majority
    guess: finding objects is local, naming them is not."""
    feats, fg, images = [], [], []
    for i in range(48):
        s = scene(0, i)
        keep = s.label != 255
        chroma = np.ptp(s.image.astype(np.float64), axis=-1)[..., None]  # colourfulness, pixel and window
        f = np.concatenate([_local_features(s.image), chroma, _local_features(np.repeat(chroma, 3, -1))[..., 3:4]],
                           -1)[keep][::7]
        feats.append(f), fg.append((s.label[keep][::7] > 0).astype(float)), images.append(np.full(len(f), i))
    X, y, img = np.concatenate(feats), np.concatenate(fg), np.concatenate(images)
    train, test = img < 32, img >= 32
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-9
    A = np.c_[(X - mu) / sd, np.ones(len(X))]
    w = np.linalg.lstsq(A[train], y[train], rcond=None)[0]
    acc = np.mean((A[test] @ w > 0.5) == (y[test] > 0.5))
    majority = max(y[test].mean(), 1 - y[test].mean())
    assert acc > majority + 0.1, f"object vs background: accuracy {acc:.2f}, majority {majority:.2f}"


def test_generate_cli_writes_voc_layout(tmp_path):
    synthetic.main(["--out", str(tmp_path / "s"), "--seed", "3", "--train", "2", "--val", "1", "--size", "48"])
    data = VOCSegmentation(tmp_path / "s", "trainval")
    assert data.ids == ["synth_00000", "synth_00001", "synth_00002"]
    image, label = data[2]
    assert image.shape == (48, 48, 3) and label.shape == (48, 48)
    np.testing.assert_array_equal(label, scene(3, 2, size=48).label)
    with Image.open(tmp_path / "s" / "SegmentationClass" / "synth_00000.png") as im:
        assert im.mode == "P" and im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    with pytest.raises(ValueError, match=r"generate: indices must lie in \[0, 3\)"):
        generate(tmp_path / "t", n_train=2, n_val=1, indices=[3], progress=False)


# ---------------------------------------------------------------- the reader, on fixture folders

def _write_label(path, label, mode="P"):
    im = Image.fromarray(label.astype(np.uint8))
    if mode == "P":
        im.putpalette(voc_palette().tobytes())
    im.save(path)


def _voc_fixture(tmp_path):
    """A VOCdevkit/VOC2012 with 3 images of two sizes, palette labels, SBD-style Aug labels and lists."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["2007_000032", "2007_000039", "2008_000002"]
    labels = {}
    for k, (name, (h, w)) in enumerate(zip(ids, [(20, 30), (20, 30), (24, 18)])):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg",
                                                                              quality=95)
        label = np.zeros((h, w), np.uint8)
        label[3:12, 4:15] = 15 + k      # person, pottedplant, sheep
        label[3, 4:15] = 255            # a void border
        labels[name] = label
        _write_label(root / "SegmentationClass" / f"{name}.png", label)
        _write_label(root / "SegmentationClassAug" / f"{name}.png", np.where(label == 15 + k, 20 - k, label), "L")
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text(f"{ids[0]}\n{ids[1]}\n")
    (seg / "val.txt").write_text(f"{ids[2]}\n")
    (seg / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    return root, ids, labels


def test_reader_finds_the_voc2012_folder(tmp_path):
    root, _, _ = _voc_fixture(tmp_path)
    for given in (tmp_path, tmp_path / "VOCdevkit", root):
        assert find_root(given) == root
    with pytest.raises(FileNotFoundError, match="no JPEGImages folder under"):
        find_root(tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VOCSegmentation(tmp_path / "nowhere")


def test_reader_returns_uint8_images_and_class_indices(tmp_path):
    root, ids, labels = _voc_fixture(tmp_path)
    train = VOCSegmentation(tmp_path, "train")
    assert len(train) == 2 and train.ids == ids[:2] and train.classes == VOC_CLASSES
    image, label = train[1]
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    assert label.dtype == np.uint8 and label.shape == (20, 30)
    np.testing.assert_array_equal(label, labels[ids[1]])  # indices 0, 16, 255, not palette colours
    val = VOCSegmentation(tmp_path, "val")
    assert val[0][0].shape == (24, 18, 3) and val[-1][1].shape == (24, 18)
    with pytest.raises(IndexError, match="index 1 out of range"):
        val[1]
    with pytest.raises(ValueError, match="different sizes"):
        VOCSegmentation(tmp_path, "train_aug").arrays()


def test_reader_uses_sbd_aug_labels_for_aug_splits(tmp_path):
    root, ids, labels = _voc_fixture(tmp_path)
    aug = VOCSegmentation(tmp_path, "train_aug")
    assert aug.ids == ids and aug.label_dir == root / "SegmentationClassAug"
    _, label = aug[2]
    np.testing.assert_array_equal(label, np.where(labels[ids[2]] == 17, 18, labels[ids[2]]))  # the Aug file, not the VOC one


def test_reader_errors_name_the_file(tmp_path):
    root, ids, _ = _voc_fixture(tmp_path)
    (root / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    (root / "SegmentationClass" / f"{ids[1]}.png").write_bytes(b"not a png at all")
    data = VOCSegmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=f"image file .*{ids[0]}.jpg is missing"):
        data[0]
    with pytest.raises(ValueError, match=f"label file .*{ids[1]}.png is corrupt"):
        data[1]
    jpg = root / "JPEGImages" / f"{ids[2]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=f"image file .*{ids[2]}.jpg is corrupt"):
        VOCSegmentation(tmp_path, "val")[0]
    with pytest.raises(FileNotFoundError, match=r"split list .*test.txt is missing \(splits found: train, train_aug, val\)"):
        VOCSegmentation(tmp_path, "test")
    (root / "ImageSets" / "Segmentation" / "trainval_aug.txt").write_text(f"{ids[0]}\n")
    import shutil

    shutil.rmtree(root / "SegmentationClassAug")
    with pytest.raises(FileNotFoundError, match="label folder .*SegmentationClassAug is missing"):
        VOCSegmentation(tmp_path, "trainval_aug")


def test_reader_rejects_bad_labels(tmp_path):
    root, ids, labels = _voc_fixture(tmp_path)
    path = root / "SegmentationClass" / f"{ids[2]}.png"
    Image.fromarray(voc_palette()[labels[ids[2]]]).save(path)  # colour-coded RGB
    with pytest.raises(ValueError, match=f"label file .*{ids[2]}.png has mode 'RGB'"):
        VOCSegmentation(tmp_path, "val")[0]
    _write_label(path, np.where(labels[ids[2]] > 0, 40, 0))
    with pytest.raises(ValueError, match=r"has values \[40\]: expected class indices 0..20 or 255"):
        VOCSegmentation(tmp_path, "val")[0]
    _write_label(path, labels[ids[2]][:, :10])
    with pytest.raises(ValueError, match=r"image .*2008_000002.jpg is \(24, 18\) but its label .* is \(24, 10\)"):
        VOCSegmentation(tmp_path, "val")[0]
    assert read_label(path).shape == (24, 10)
    with pytest.raises(FileNotFoundError, match="label file .*nope.png is missing"):
        read_label(tmp_path / "nope.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="image file .*garbage.jpg is corrupt"):
        read_image(garbage)


# ---------------------------------------------------------------- the transforms

def _pair(h=40, w=50):
    """An image whose red and green channels encode the column and row (so a crop's place can be read
    from its corner) and a label of 10-row bands with a 255 strip on the right."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w)[None, :] * 5
    image[..., 1] = np.arange(h)[:, None] * 5
    image[..., 2] = 200
    label = (np.arange(h)[:, None] // 10 + np.zeros((1, w), int)).astype(np.uint8)
    label[:, -3:] = 255
    return image, label


def test_random_scale_range_and_nearest_labels():
    image, label = _pair()
    rng = np.random.default_rng(0)
    heights = []
    for _ in range(200):
        im, lb = random_scale(image, label, rng)
        assert im.shape[:2] == lb.shape and im.dtype == np.uint8 and lb.dtype == np.uint8
        assert abs(lb.shape[1] / lb.shape[0] - 50 / 40) < 0.1
        assert set(np.unique(lb).tolist()) <= {0, 1, 2, 3, 255}  # nearest neighbour: no blended classes
        heights.append(lb.shape[0])
    assert 20 <= min(heights) < 24 and 76 < max(heights) <= 80  # factors spread over 0.5-2.0
    im, lb = random_scale(image, label, rng, (1.0, 1.0))
    assert im is image and lb is label


def test_random_crop_pads_image_with_0_and_label_with_255():
    image, label = _pair(10, 12)
    im, lb = random_crop(image, label, (16, 20), np.random.default_rng(0))
    assert im.shape == (16, 20, 3) and lb.shape == (16, 20)
    np.testing.assert_array_equal(im[:10, :12], image)  # padding goes below and to the right
    assert (im[10:] == 0).all() and (im[:, 12:] == 0).all()
    assert (lb[10:] == 255).all() and (lb[:, 12:] == 255).all()
    np.testing.assert_array_equal(lb[:10, :12], label)
    image, label = _pair()
    corners = set()
    for seed in range(30):  # a crop inside a larger image: the same window of image and label, at varying places
        im, lb = random_crop(image, label, (16, 16), np.random.default_rng(seed))
        y, x = int(im[0, 0, 1]) // 5, int(im[0, 0, 0]) // 5
        np.testing.assert_array_equal(im, image[y:y + 16, x:x + 16])
        np.testing.assert_array_equal(lb, label[y:y + 16, x:x + 16])
        corners.add((y, x))
    assert len(corners) > 20


def test_random_flip_moves_image_and_label_together():
    image, label = _pair()
    flipped = 0
    for seed in range(20):
        im, lb = random_flip(image, label, np.random.default_rng(seed))
        if im[0, 0, 0] != image[0, 0, 0]:
            flipped += 1
            np.testing.assert_array_equal(im, image[:, ::-1])
            np.testing.assert_array_equal(lb, label[:, ::-1])
        else:
            assert lb is label
    assert 3 < flipped < 17


def test_train_transform_is_seeded_and_shaped():
    image, label = _pair()
    a = train_transform(image, label, np.random.default_rng(5), crop_size=(32, 32))
    b = train_transform(image, label, np.random.default_rng(5), crop_size=(32, 32))
    c = train_transform(image, label, np.random.default_rng(6), crop_size=(32, 32))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))
    assert a[0].shape == (32, 32, 3) and a[1].shape == (32, 32)
    assert a[0].flags.c_contiguous and a[1].flags.c_contiguous
    # a real scene through the whole pipeline: classes stay classes, padding is ignored
    s = scene(0, 3)
    for seed in range(10):
        im, lb = train_transform(s.image, s.label, np.random.default_rng(seed), crop_size=(160, 160))
        assert set(np.unique(lb).tolist()) <= set(np.unique(s.label).tolist()) | {255}


@pytest.mark.parametrize("call, message", [
    (lambda im, lb, rng: random_scale(im.astype(np.float32), lb, rng), "random_scale: image must be a uint8 array"),
    (lambda im, lb, rng: random_scale(im, lb[:, :5], rng), "random_scale: image is (40, 50) but label is (40, 5)"),
    (lambda im, lb, rng: random_flip(im, lb.astype(np.int64), rng), "random_flip: label must be a uint8 array"),
    (lambda im, lb, rng: random_flip(im, lb, 0), "random_flip: rng must be a numpy Generator"),
    (lambda im, lb, rng: random_scale(im, lb, rng, (2.0, 0.5)), "random_scale: scale_range must be"),
    (lambda im, lb, rng: random_crop(im, lb, (0, 8), rng), "random_crop: size must be"),
    (lambda im, lb, rng: resize(im[..., 0], lb, (8, 8)), "resize: image must be"),
])
def test_transforms_reject_bad_input(call, message):
    image, label = _pair()
    with pytest.raises(ValueError, match=re.escape(message)):
        call(image, label, np.random.default_rng(0))
