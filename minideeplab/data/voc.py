"""A reader for the PASCAL VOC 2012 segmentation layout: the real data set (and SBD's augmented labels,
SegmentationClassAug, when present) or the course's synthetic set, which is written the same way::

    root/                      (or root/VOC2012/, or root/VOCdevkit/VOC2012/)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNGs: pixel value = class index, 255 = ignore
        SegmentationClassAug/<id>.png       optional (SBD, gray PNGs of class indices): splits *_aug
        ImageSets/Segmentation/<split>.txt  one id a line (train, val, trainval, train_aug, ...)
        classes.txt                         optional: class names, one a line (else VOC's 21)

Nothing is downloaded: give the path of a copy you have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """(256, 3) uint8: PASCAL VOC's colour map (class k's colour from the bits of k; 255 is (224, 224, 192))."""
    palette = np.zeros((256, 3), np.uint8)
    for k in range(256):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[k] = r, g, b
    return palette


def find_root(root) -> Path:
    """The folder that holds JPEGImages/: `root` itself, root/VOC2012 or root/VOCdevkit/VOC2012."""
    root = Path(root)
    candidates = (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")
    for c in candidates:
        if (c / "JPEGImages").is_dir():
            return c
    if not root.exists():
        raise FileNotFoundError(f"VOC root {root} does not exist")
    raise FileNotFoundError(f"no JPEGImages folder under {root}: looked in " + ", ".join(str(c) for c in candidates))


def read_image(path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB. Errors name the file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} is missing")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated files
        raise ValueError(f"image file {path} is corrupt or not an image: {e}") from None


def read_label(path, num_classes: int | None = None) -> np.ndarray:
    """A label PNG (palette or gray: pixel value = class index) -> (H, W) uint8 class indices, 255 = ignore.
    With num_classes, values other than 0..num_classes-1 and 255 are an error. Errors name the file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} is missing")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            label = np.array(im)  # for "P" images: the palette indices, not the colours
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"label file {path} is corrupt or not an image: {e}") from None
    if mode not in ("P", "L"):
        raise ValueError(f"label file {path} has mode {mode!r}: expected a palette ('P') or gray ('L') PNG whose "
                         "pixel values are class indices (a colour-coded RGB label must be mapped back first)")
    label = label.astype(np.uint8)
    if num_classes is not None:
        bad = (label >= num_classes) & (label != IGNORE_INDEX)
        if bad.any():
            raise ValueError(f"label file {path} has values {sorted(np.unique(label[bad]).tolist())[:10]}: expected "
                             f"class indices 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)")
    return label


def stack_items(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) items of a data set stacked: (N, H, W, 3) uint8 and (N, H, W) uint8; same-size only."""
    items = [dataset[i] for i in range(len(dataset))]
    shapes = {im.shape for im, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"{type(dataset).__name__}.arrays: the images have {len(shapes)} different sizes "
                         f"(e.g. {sorted(shapes)[:3]}); stack only same-size images (crop or pad them first)")
    return np.stack([im for im, _ in items]), np.stack([lb for _, lb in items])


class SegmentationFolder:
    """What a data set reader shares: ``ids``, ``classes``, ``split``, ``paths(i)`` and ``read_label(path)`` given by
    the layout's class; dataset[i] -> (image (H, W, 3) uint8, label (H, W) uint8 class indices, 255 = ignore)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} out of range for split {self.split!r} of "
                             f"{len(self)} images")
        image_path, label_path = self.paths(i % len(self))
        image, label = read_image(image_path), self.read_label(label_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image_path} is {image.shape[:2]} but its label {label_path} is {label.shape}")
        return image, label

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All items stacked: images (N, H, W, 3) uint8 and labels (N, H, W) uint8 (all items the same size)."""
        return stack_items(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}): {len(self)} images, "
                f"{self.num_classes} classes")


class VOCSegmentation(SegmentationFolder):
    """The images and labels of one split. dataset[i] -> (image (H, W, 3) uint8, label (H, W) uint8).

    split: a list in ImageSets/Segmentation/ ("train", "val", "trainval"; "train_aug" etc. read the labels
    from SegmentationClassAug/). Lists may hold ids or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
    lines (the common train_aug.txt). classes: the names from root/classes.txt when present, else VOC's 21.
    """

    def __init__(self, root, split: str = "train"):
        self.root = find_root(root)
        self.split = split
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            have = sorted(p.stem for p in (self.root / "ImageSets" / "Segmentation").glob("*.txt"))
            raise FileNotFoundError(f"split list {listing} is missing (splits found: {', '.join(have) or 'none'})")
        self.ids = [Path(line.split()[0]).stem for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"split list {listing} names no images")
        self.label_dir = self.root / ("SegmentationClassAug" if split.endswith("_aug") else "SegmentationClass")
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f"label folder {self.label_dir} is missing (split {split!r} needs it)")
        names = self.root / "classes.txt"
        self.classes = (tuple(n.strip() for n in names.read_text().splitlines() if n.strip())
                        if names.is_file() else VOC_CLASSES)

    def paths(self, i: int) -> tuple[Path, Path]:
        """(image path, label path) of item i."""
        return self.root / "JPEGImages" / f"{self.ids[i]}.jpg", self.label_dir / f"{self.ids[i]}.png"

    def read_label(self, path) -> np.ndarray:
        return read_label(path, self.num_classes)
