"""Data for the course.

* ``photos``: scikit-image's shipped photographs, with region labels and coarse "network" probabilities.
* ``synthetic``: a seeded scene generator where a pixel's class is an object's shape, not its texture or
  colour; ``python -m minideeplab.data.synthetic --out data/synthetic --seed 0`` regenerates the committed split.
* ``voc``: a reader for the PASCAL VOC layout (the synthetic split, VOC 2012, SBD's augmented labels).
* ``transforms``: the training transforms (random scale, padded crop, flip).
"""

from minideeplab.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from minideeplab.data.synthetic import generate, scene
from minideeplab.data.transforms import train_transform
from minideeplab.data.voc import VOC_CLASSES, VOCSegmentation, read_image, read_label, voc_palette

__all__ = ["SYNTHETIC_CLASSES", "generate", "scene", "train_transform", "VOC_CLASSES", "VOCSegmentation",
           "read_image", "read_label", "voc_palette"]
