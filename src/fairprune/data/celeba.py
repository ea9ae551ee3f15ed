"""CelebA in its official layout: img_align_celeba.zip (or the folder) plus the annotation files.

Licence: non-commercial research purposes only; image copyright stays with the owners.
Only images actually present are used, so a subset of the images works with the full
annotation files; the official identity-disjoint partition is kept.
"""
from __future__ import annotations

import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from fairprune.data.images import LazyImages, decode
from fairprune.data.raw import RawDataset, attribute_list, binary_names, intersect
from fairprune.errors import DataError

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"


def read_attributes(path: Path, wanted: list[str]) -> dict[str, tuple[int, ...]]:
    """{image id: (0/1 per wanted attribute)} from the official list_attr_celeba.txt."""
    with open(path) as handle:
        handle.readline()  # image count
        header = handle.readline().split()
        missing = [name for name in wanted if name not in header]
        if missing:
            raise DataError(f"attribute(s) {missing} are not in {path}; available: {', '.join(header)}")
        columns = [header.index(name) + 1 for name in wanted]
        table = {}
        for line in handle:
            fields = line.split()
            if fields:
                table[fields[0]] = tuple(int(fields[c] == "1") for c in columns)
    return table


def read_partition(path: Path) -> dict[str, int]:
    with open(path) as handle:
        return {name: int(code) for name, code in (line.split() for line in handle if line.strip())}


def _image_source(root: Path, stack: ExitStack):
    """(sorted image ids present, opener) for the zip or the extracted folder."""
    folder, archive = root / "img_align_celeba", root / "img_align_celeba.zip"
    if folder.is_dir():
        names = sorted(p.name for p in folder.glob("*.jpg"))
        return names, lambda name: open(folder / name, "rb")
    if archive.exists():
        zf = stack.enter_context(zipfile.ZipFile(archive))
        paths = {Path(n).name: n for n in zf.namelist() if n.endswith(".jpg")}
        return sorted(paths), lambda name: zf.open(paths[name])
    raise DataError(f"neither {folder} nor {archive} exists; data.root must be the CelebA folder "
                    "holding img_align_celeba.zip (or img_align_celeba/) and the annotation files")


def load(root: str | Path, target: str, group: str | list[str], size: int) -> RawDataset:
    root = Path(root)
    for name in (ATTR_FILE, PARTITION_FILE):
        if not (root / name).exists():
            raise DataError(f"{root / name} is missing; data.root must be the official CelebA folder "
                            f"with {ATTR_FILE} and {PARTITION_FILE}")
    group = attribute_list(group)
    attributes = read_attributes(root / ATTR_FILE, [target, *group])
    partition = read_partition(root / PARTITION_FILE)
    with ExitStack() as stack:
        present, _ = _image_source(root, stack)
    usable = [n for n in present if n in attributes and n in partition]
    if not usable:
        raise DataError(f"none of the {len(present)} images under {root} is listed in {ATTR_FILE}")

    def read(wanted):
        with ExitStack() as stack:
            _, opener = _image_source(root, stack)
            for name in wanted:
                with opener(name) as handle:
                    yield decode(handle, size)

    labels = np.asarray([attributes[n] for n in usable], dtype=np.int64)
    groups, group_names = intersect(list(labels[:, 1:].T), [binary_names(a) for a in group])
    return RawDataset(
        LazyImages(usable, read, "celeba"), labels[:, 0], groups, binary_names(target), group_names,
        split=np.asarray([partition[n] for n in usable], dtype=np.int8),
        info={"source": str(root), "images_present": len(present), "images_used": len(usable),
              "annotated_total": len(attributes)},
    )
