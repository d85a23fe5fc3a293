"""The Cityscapes reader on a small tree the test writes in that layout: label ids -> the 19 train ids (as
cityscapesscripts maps them), the split folders, errors naming the file, and train / evaluate on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minideeplab.cli import main
from minideeplab.data import CITYSCAPES_CLASSES, CityscapesSegmentation, VOCSegmentation, open_dataset
from minideeplab.data.cityscapes import CITYSCAPES_COLORS, palette_of, to_train_ids, train_id_table
from minideeplab.data.voc import voc_palette

# cityscapesscripts' labels.py, written out: (label id, name, train id); 255 = not trained
PUBLISHED = [(0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255), (3, "out of roi", 255),
             (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255), (7, "road", 0), (8, "sidewalk", 1),
             (9, "parking", 255), (10, "rail track", 255), (11, "building", 2), (12, "wall", 3), (13, "fence", 4),
             (14, "guard rail", 255), (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5),
             (18, "polegroup", 255), (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8),
             (22, "terrain", 9), (23, "sky", 10), (24, "person", 11), (25, "rider", 12), (26, "car", 13),
             (27, "truck", 14), (28, "bus", 15), (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16),
             (32, "motorcycle", 17), (33, "bicycle", 18)]


def _tree(root, size=(24, 32), splits=(("train", {"aachen": 2, "bochum": 1}), ("val", {"frankfurt": 1}))):
    """root/leftImg8bit/<split>/<city>/... and root/gtFine/<split>/<city>/... ; returns {path stem: label ids}."""
    rng = np.random.default_rng(0)
    written = {}
    for split, cities in splits:
        for city, n in cities.items():
            for k in range(n):
                stem = f"{city}_{k:06d}_000019"
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                ids = rng.integers(0, 34, size).astype(np.uint8)
                ids[0, :3] = 255                                   # a license plate (-1 in uint8)
                Image.fromarray(ids, mode="L").save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
                # the other gtFine files sit beside it and must not be read
                Image.fromarray(ids, mode="L").save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
                written[stem] = ids
    return written


def test_label_ids_map_to_the_published_train_ids():
    table = train_id_table()
    for label_id, name, train_id in PUBLISHED:
        assert table[label_id] == train_id, name
        if train_id != 255:
            assert CITYSCAPES_CLASSES[train_id] == name
    assert len(CITYSCAPES_CLASSES) == 19 and table[255] == 255
    with pytest.raises(ValueError, match=r"label file x.png has values \[34, 200\].*labelIds"):
        to_train_ids(np.array([[7, 34, 200]], np.uint8), "x.png")


def test_reader_lists_cities_in_order_and_maps_labels(tmp_path):
    written = _tree(tmp_path)
    train = CityscapesSegmentation(tmp_path, "train")
    assert train.ids == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000019"]
    assert train.classes == CITYSCAPES_CLASSES and train.num_classes == 19 and len(train) == 3
    image, label = train[2]
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
    expected = np.array([dict((i, t) for i, _, t in PUBLISHED).get(v, 255) for v in written["bochum_000000_000019"].ravel()])
    np.testing.assert_array_equal(label, expected.reshape(24, 32))
    assert (label[0, :3] == 255).all()
    np.testing.assert_array_equal(train[-1][1], label)
    images, labels = train.arrays()
    assert images.shape == (3, 24, 32, 3) and labels.shape == (3, 24, 32)
    assert isinstance(open_dataset(tmp_path, "val"), CityscapesSegmentation)
    with pytest.raises(IndexError, match="index 3 out of range for split 'train' of 3 images"):
        train[3]


def test_reader_errors_name_the_file_or_folder(tmp_path):
    _tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"split folder .*leftImg8bit/test is missing \(splits found: train, val\)"):
        CityscapesSegmentation(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CityscapesSegmentation(tmp_path / "nowhere")
    missing = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"label file {missing} is missing"):
        CityscapesSegmentation(tmp_path, "train")[1]
    small = tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(small)
    with pytest.raises(ValueError, match=rf"but its label {small} is \(10, 10\)"):
        CityscapesSegmentation(tmp_path, "train")[2]
    color = tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(color)
    with pytest.raises(ValueError, match=f"label file {color} has mode 'RGB'"):
        CityscapesSegmentation(tmp_path, "val")[0]
    (tmp_path / "gtFine" / "val").rename(tmp_path / "gtFine" / "elsewhere")
    with pytest.raises(FileNotFoundError, match="label folder .*gtFine/val is missing"):
        CityscapesSegmentation(tmp_path, "val")
    # a VOC folder still opens as VOC
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    assert isinstance(open_dataset(voc, "train"), VOCSegmentation)


def test_palette_is_cityscapes_for_its_classes_only():
    np.testing.assert_array_equal(palette_of(CITYSCAPES_CLASSES)[:19], CITYSCAPES_COLORS)
    np.testing.assert_array_equal(palette_of(CITYSCAPES_CLASSES)[255], voc_palette()[255])
    np.testing.assert_array_equal(palette_of(("background", "disc")), voc_palette())
    np.testing.assert_array_equal(palette_of(None), voc_palette())


def test_train_and_evaluate_read_the_cityscapes_layout(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    _tree(root, size=(32, 48))
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--crop-size", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1 and list(result["per_class_iou"]) == list(CITYSCAPES_CLASSES), result
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-root", str(root), "--split", "none"]) == 2
    assert "split folder" in capsys.readouterr().err
