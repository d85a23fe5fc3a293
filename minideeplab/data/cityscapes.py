"""A reader for the Cityscapes layout (gtFine), with the labels mapped to the 19 classes that are trained and
scored, as cityscapesscripts' ``labels.py`` maps them (``trainId``; every other label id is 255, ignored)::

    root/
        leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     RGB, 2048 x 1024
        gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      gray: pixel value = label id

The split names the folder (train, val, test; test's labels are all "unlabeled"). Images are listed city by
city in sorted order, so item i is the same on every machine. Nothing is downloaded: the data set needs an
account at cityscapes-dataset.com; give the path of the folder that holds leftImg8bit/ and gtFine/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minideeplab.data.voc import IGNORE_INDEX, SegmentationFolder, VOCSegmentation, read_label, voc_palette

# the 19 evaluated classes, in train-id order (cityscapesscripts' names)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# label id -> train id for the ids that are trained (ids 0-33 exist; the rest, and the license plate's -1,
# which a uint8 labelIds image stores as 255, are ignored)
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34
# cityscapesscripts' colours of the 19 classes (train-id order), for figures
CITYSCAPES_COLORS = np.array([(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                              (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                              (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                              (0, 80, 100), (0, 0, 230), (119, 11, 32)], np.uint8)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def train_id_table() -> np.ndarray:
    """(256,) uint8 lookup: label id -> train id (255 for every id that is not trained)."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in _TRAIN_IDS.items():
        table[label_id] = train_id
    return table


def to_train_ids(label_ids: np.ndarray, path="label_ids") -> np.ndarray:
    """(H, W) uint8 label ids -> (H, W) uint8 train ids. Values that are no Cityscapes label id (34..254) are an
    error naming `path`; 255 (the license plate's -1 in a uint8 image) is ignored like every untrained id."""
    bad = (label_ids >= NUM_LABEL_IDS) & (label_ids != 255)
    if bad.any():
        raise ValueError(f"label file {path} has values {sorted(np.unique(label_ids[bad]).tolist())[:10]}: expected "
                         f"Cityscapes label ids 0..{NUM_LABEL_IDS - 1} (a *_gtFine_labelIds.png, not a color or "
                         f"trainIds image)")
    return train_id_table()[label_ids]


def is_cityscapes(root) -> bool:
    """Whether `root` holds the Cityscapes layout (a leftImg8bit/ folder)."""
    return (Path(root) / "leftImg8bit").is_dir()


class CityscapesSegmentation(SegmentationFolder):
    """The images and train-id labels of one split. dataset[i] -> (image (H, W, 3) uint8, label (H, W) uint8
    with train ids 0..18 and 255 = ignore). ``classes``: the 19 class names. ``VOCSegmentation``'s interface
    (``data.voc.SegmentationFolder``), so the trainers take either."""

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        self.split = split
        image_dir = self.root / "leftImg8bit"
        if not image_dir.is_dir():
            if not self.root.exists():
                raise FileNotFoundError(f"Cityscapes root {self.root} does not exist")
            raise FileNotFoundError(f"no leftImg8bit folder under {self.root}: expected the Cityscapes layout "
                                    f"leftImg8bit/<split>/<city>/*{IMAGE_SUFFIX}")
        split_dir = image_dir / split
        if not split_dir.is_dir():
            have = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
            raise FileNotFoundError(f"split folder {split_dir} is missing (splits found: {', '.join(have) or 'none'})")
        self.label_root = self.root / "gtFine" / split
        if not self.label_root.is_dir():
            raise FileNotFoundError(f"label folder {self.label_root} is missing (split {split!r} needs it)")
        images = sorted(split_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise ValueError(f"split folder {split_dir} holds no <city>/*{IMAGE_SUFFIX} files")
        # id: "<city>/<city>_<seq>_<frame>"
        self.ids = [f"{p.parent.name}/{p.name[:-len(IMAGE_SUFFIX)]}" for p in images]
        self.classes = CITYSCAPES_CLASSES

    def paths(self, i: int) -> tuple[Path, Path]:
        """(image path, labelIds path) of item i."""
        city, stem = self.ids[i].split("/")
        return (self.root / "leftImg8bit" / self.split / city / f"{stem}{IMAGE_SUFFIX}",
                self.label_root / city / f"{stem}{LABEL_SUFFIX}")

    def read_label(self, path) -> np.ndarray:
        """A labelIds PNG -> (H, W) uint8 train ids."""
        return to_train_ids(read_label(path), path)


def palette_of(classes) -> np.ndarray:
    """(256, 3) uint8 colours for a label map of these classes: Cityscapes' own for its 19 classes, else VOC's
    (whose 255, the ignore colour, both keep)."""
    palette = voc_palette()
    if classes is not None and tuple(classes) == CITYSCAPES_CLASSES:
        palette[:len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    return palette


def open_dataset(root, split: str = "train"):
    """The data set at `root`, whichever layout it has: Cityscapes (a leftImg8bit/ folder) or PASCAL VOC."""
    return CityscapesSegmentation(root, split) if is_cityscapes(root) else VOCSegmentation(root, split)
