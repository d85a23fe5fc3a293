"""The training data, reproducible by construction: the order of epoch e is a permutation seeded by (seed, e),
and image i of epoch e is augmented with a Generator seeded by (seed, e, i), so the data of an iteration depend
only on its number, not on the history of a random state (nor on the number of loader workers). Images are
normalised with ImageNet's mean and std."""

from __future__ import annotations

import numpy as np
import torch

from minideeplab.data.transforms import train_transform
from minideeplab.data.cityscapes import open_dataset

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, on RGB in [0, 1]
STD = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, normalised with ImageNet's mean and std."""
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255)  # a copy: PIL's arrays are read-only
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class Augmented(torch.utils.data.Dataset):
    """dataset[(epoch, i)] -> (image (3, crop, crop) float32, label (crop, crop) int64), augmented with a
    Generator seeded by (seed, epoch, i): the same every time it is asked for. config: a TrainConfig (seed,
    crop_size, scale_range)."""

    def __init__(self, dataset, config):
        self.dataset, self.config = dataset, config

    def __getitem__(self, key):
        epoch, i = key
        rng = np.random.default_rng([self.config.seed, 2, epoch, i])
        c = self.config.crop_size
        image, label = train_transform(*self.dataset[i], rng, (c, c), self.config.scale_range)
        return to_tensor(image), torch.from_numpy(label.astype(np.int64))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a permutation of range(n) seeded by (seed, epoch), cut into full batches
    (the last partial batch is dropped); items are (epoch, index) keys for ``Augmented``."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    return [[(epoch, int(i)) for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n // batch_size)]


class FirstN(torch.utils.data.Dataset):
    """The first n items of a dataset, read lazily."""

    def __init__(self, dataset, n):
        self.dataset, self.n = dataset, len(dataset) if n is None else min(n, len(dataset))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def open_split(root, split, what="data root"):
    """The split of the data set at root (PASCAL VOC or Cityscapes layout: ``data.cityscapes.open_dataset``)
    with errors that name the option and the path."""
    try:
        return open_dataset(root, split)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {root}, split {split!r}: {e}") from None


def open_val(config, classes=None):
    """The validation split of a TrainConfig: val_split of val_root, or of data_root when val_root is None.
    classes: the training set's, which the validation set must have (same names, same order)."""
    if config.val_root is None:
        val = open_split(config.data_root, config.val_split)
    else:
        val = open_split(config.val_root, config.val_split, "val root")
    if classes is not None and list(val.classes) != list(classes):
        raise ValueError(f"val root {config.val_root} has classes {list(val.classes)}, the data root "
                         f"{config.data_root} has {list(classes)}")
    return val
