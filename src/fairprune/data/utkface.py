"""UTKFace: `UTKFace.tar.gz` or its extracted folder of `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg`.

Licence: released by its authors for non-commercial research purposes only; image copyright
stays with the original owners.
"""
from __future__ import annotations

import io
import logging
import re
import tarfile
from pathlib import Path

import numpy as np

from fairprune.data.images import LazyImages, decode
from fairprune.data.raw import RawDataset, attribute_list, intersect
from fairprune.errors import DataError

log = logging.getLogger(__name__)
RACES = ["White", "Black", "Asian", "Indian", "Others"]
GENDERS = ["male", "female"]
NAME_PATTERN = re.compile(r"^(\d+)_(\d+)_(\d+)_\d+\.jpg(?:\.chip\.jpg)?$")


def parse_name(name: str) -> tuple[int, int, int] | None:
    """(age, gender, race) from an official file name, or None when it is malformed.

    The official release has names with a missing field, a missing dot or a stray space;
    the full-name pattern rejects all of them.
    """
    match = NAME_PATTERN.match(Path(name).name)
    if match is None:
        return None
    age, gender, race = (int(v) for v in match.groups())
    if not (1 <= age <= 116 and gender in (0, 1) and 0 <= race < len(RACES)):
        return None
    return age, gender, race


def age_bin_names(bins: list[int]) -> list[str]:
    edges = [0, *bins]
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    return names + [f"{bins[-1]}+"]


def _attribute(values: np.ndarray, attribute: str, bins: list[int]) -> tuple[np.ndarray, list[str]]:
    age, gender, race = values.T
    if attribute == "race":
        return race, list(RACES)
    if attribute == "gender":
        return gender, list(GENDERS)
    return np.digitize(age, bins), age_bin_names(bins)


def _members(root: Path):
    """Yield (file name, source) for every .jpg in the tarball or folder, in a stable order; the source is
    the file's path, or for an archive its bytes (a .tar.gz streams only once, so they are kept from the
    one pass that also reads the names)."""
    if root.is_dir():
        for path in sorted(root.rglob("*.jpg")):
            yield path.name, path
    elif tarfile.is_tarfile(root):
        with tarfile.open(root, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    yield Path(member.name).name, tar.extractfile(member).read()
    else:
        raise DataError(f"data.root = '{root}' is neither a folder nor a tar archive; "
                        "point it at UTKFace.tar.gz or at the extracted UTKFace/ folder")


def _decode_each(sources: list, size: int):
    for source in sources:
        yield decode(io.BytesIO(source) if isinstance(source, bytes) else source, size)


def load(root: str | Path, target: str, group: str | list[str], size: int, age_bins: list[int]) -> RawDataset:
    """The labels from the file names; the images are decoded later, only those kept."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.root = '{root}' does not exist; point it at UTKFace.tar.gz "
                        "or at the extracted UTKFace/ folder")
    sources, labels, skipped = [], [], []
    for name, source in _members(root):
        parsed = parse_name(name)
        if parsed is None:
            skipped.append(name)
            continue
        sources.append(source)
        labels.append(parsed)
    if skipped:
        log.warning("UTKFace: skipped %d malformed file names, e.g. %s", len(skipped), skipped[:3])
    if not sources:
        raise DataError(f"no UTKFace images with official names found under '{root}'")

    values = np.asarray(labels, dtype=np.int64)
    targets, target_names = _attribute(values, target, age_bins)
    groups, group_names = intersect(*zip(*(_attribute(values, a, age_bins) for a in attribute_list(group))))
    return RawDataset(LazyImages(sources, lambda wanted: _decode_each(wanted, size), "utkface"), targets, groups, target_names, group_names,
                      info={"source": str(root), "skipped_malformed": len(skipped),
                            "skipped_examples": skipped[:10]})
