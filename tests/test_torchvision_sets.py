"""The torchvision-backed loaders, on local files in torchvision's own format (no download)."""
import struct

import numpy as np
import pytest

from fairprune.config import DataParams
from fairprune.data import prepare
from fairprune.errors import DataError


def write_idx(path, array):
    dims = array.shape
    with open(path, "wb") as handle:
        handle.write(struct.pack(">HBB", 0, 0x08, len(dims)))
        handle.write(struct.pack(">" + "I" * len(dims), *dims))
        handle.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 60)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


def test_mnist_from_local_files_keeps_official_test_split(mnist_root):
    data = prepare(DataParams(dataset="mnist", root=str(mnist_root), val_fraction=0.2))
    assert data.input_shape == (1, 28, 28)
    assert data.group_names == data.target_names and len(data.group_names) == 10
    assert data.stats()["n_per_split"] == {"train": 160, "val": 40, "test": 60}


def test_missing_torchvision_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="data.download: true"):
        prepare(DataParams(dataset="cifar10", root=str(tmp_path)))
