"""CIFAR-10 and MNIST through torchvision (its own download code, used only when data.download)."""
from __future__ import annotations

import numpy as np

from fairprune.data.raw import RawDataset
from fairprune.errors import DataError


def load(name: str, root: str, download: bool) -> RawDataset:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST}[name]
    parts = []
    for code, train in ((0, True), (2, False)):
        try:
            ds = cls(root, train=train, download=download)
        except RuntimeError as exc:
            raise DataError(f"{name} not found under data.root = '{root}' ({exc}); set data.download: true "
                            "on a machine with network access, or copy torchvision's files there") from None
        images = np.asarray(ds.data, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        parts.append((images, np.asarray(ds.targets), np.full(len(images), code, dtype=np.int8)))
        classes = list(ds.classes)
    images, targets, split = (np.concatenate(p) for p in zip(*parts))
    # Official train/test; the validation split is carved from train later (split code -1).
    split = np.where(split == 0, -1, split).astype(np.int8)
    return RawDataset(images, targets, targets.copy(), classes, list(classes), split=split,
                      info={"source": f"torchvision.datasets.{cls.__name__}"})
