"""Data for the course.

* ``photos``: scikit-image's shipped photographs, with region labels and coarse "network" probabilities.
* ``synthetic``: a seeded scene generator where a pixel's class is an object's shape, not its texture or
  colour; ``python -m minideeplab.data.synthetic --out data/synthetic --seed 0`` regenerates the committed split.
* ``voc``: a reader for the PASCAL VOC layout (the synthetic split, VOC 2012, SBD's augmented labels).
* ``cityscapes``: a reader for the Cityscapes layout (gtFine label ids mapped to the 19 train ids);
  ``open_dataset`` opens either layout.
* ``transforms``: the training transforms (random scale, padded crop, flip).
* ``data_path``: a file of the repository's ``data/`` folder (the committed split, the shipped model).
"""

from pathlib import Path

from minideeplab.data.cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation, open_dataset
from minideeplab.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from minideeplab.data.synthetic import generate, scene
from minideeplab.data.transforms import train_transform
from minideeplab.data.voc import VOC_CLASSES, VOCSegmentation, read_image, read_label, voc_palette

DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # the repository's data/, beside the package


def data_path(*parts) -> Path:
    """DATA_DIR / parts, which must exist: data_path("synthetic"), data_path("models", "mini_v3plus.pt").
    data/ comes with the repository, not with the package, so this needs a clone installed in place
    (``make lab``, or ``pip install -e .``)."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: data/ comes with minideeplab's repository; install a clone "
                                f"in place (make lab, or pip install -e .) to use it")
    return path


__all__ = ["DATA_DIR", "data_path", "SYNTHETIC_CLASSES", "generate", "scene", "train_transform", "VOC_CLASSES",
           "VOCSegmentation", "CITYSCAPES_CLASSES", "CityscapesSegmentation", "open_dataset", "read_image",
           "read_label", "voc_palette"]
