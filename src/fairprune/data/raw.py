"""The in-memory form every dataset loader returns before splitting and caching."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fairprune.data.images import LazyImages

SPLITS = ("train", "val", "test")
NO_SPLIT = -1


@dataclass
class RawDataset:
    images: np.ndarray | LazyImages  # (N, H, W, C) uint8, or the files still to decode
    targets: np.ndarray  # (N,) int64, codes into target_names
    groups: np.ndarray  # (N,) int64, codes into group_names
    target_names: list[str]
    group_names: list[str]
    split: np.ndarray | None = None  # (N,) int8 codes into SPLITS, or NO_SPLIT where unknown
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.targets) == len(self.groups) == n):
            raise ValueError("images, targets and groups must have the same length")
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=np.int8)


def binary_names(attribute: str) -> list[str]:
    """Readable names for the two values of a binary attribute (index 0 is 'absent')."""
    if attribute == "Male":
        return ["Female", "Male"]
    return [f"not_{attribute}", attribute]


def attribute_list(group: str | list[str]) -> list[str]:
    return [group] if isinstance(group, str) else list(group)


def intersect(codes: list[np.ndarray], names: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    """Intersectional groups from several attributes: one group per combination present, named
    'White/female', in the order of the attributes' own codes (first attribute major)."""
    if len(codes) == 1:
        return np.asarray(codes[0], dtype=np.int64), list(names[0])
    combined = np.ravel_multi_index([np.asarray(c, dtype=np.int64) for c in codes], [len(n) for n in names])
    present, groups = np.unique(combined, return_inverse=True)
    labels = ["/".join(n[i] for n, i in zip(names, index))
              for index in zip(*np.unravel_index(present, [len(n) for n in names]))]
    return groups.astype(np.int64), labels
