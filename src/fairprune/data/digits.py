"""The embedded default: scikit-learn's bundled 8x8 handwritten digits (1,797 images)."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from fairprune.data.raw import RawDataset


def load() -> RawDataset:
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    names = [str(d) for d in range(10)]
    # Tran et al.'s class-as-group setting: the protected group is the class itself.
    return RawDataset(images, bunch.target, bunch.target.copy(), names, list(names),
                      info={"source": "sklearn.datasets.load_digits"})
