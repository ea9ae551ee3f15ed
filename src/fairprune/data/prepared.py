"""Loading, splitting, checking and caching a dataset as tensors."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fairprune import tensorfile
from fairprune.config import DataParams
from fairprune.data.images import pixels
from fairprune.data.raw import NO_SPLIT, SPLITS, RawDataset
from fairprune.errors import DataError, ParamsError

log = logging.getLogger(__name__)

DEFAULT_SIZE = {"digits": 8, "mnist": 28, "cifar10": 32}


@dataclass
class PreparedData:
    images: torch.Tensor  # (N, C, H, W) uint8
    targets: torch.Tensor  # (N,) int64
    groups: torch.Tensor  # (N,) int64
    split: torch.Tensor  # (N,) int8 codes into SPLITS
    target_names: list[str]
    group_names: list[str]
    mean: list[float]
    std: list[float]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.target_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def indices(self, split: str) -> torch.Tensor:
        return torch.nonzero(self.split == SPLITS.index(split)).flatten()

    def subset(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.indices(split)
        return self.images[idx], self.targets[idx], self.groups[idx]

    def stats(self) -> dict:
        counts: dict = {}
        for s, split in enumerate(SPLITS):
            mask = self.split == s
            table = torch.zeros(self.num_groups, self.num_classes, dtype=torch.int64)
            table.index_put_((self.groups[mask], self.targets[mask]), torch.ones(int(mask.sum()), dtype=torch.int64),
                             accumulate=True)
            counts[split] = {
                g: {t: int(table[i, j]) for j, t in enumerate(self.target_names)}
                for i, g in enumerate(self.group_names)
            }
        return {
            "n": int(len(self.targets)),
            "n_per_split": {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)},
            "input_shape": list(self.input_shape),
            "target_names": self.target_names,
            "group_names": self.group_names,
            "counts": counts,
            "info": self.info,
        }

    def save(self, path: str | Path) -> None:
        tensorfile.save(self.__dict__, path)


def load_prepared(path: str | Path) -> PreparedData:
    """The prepare stage's tensors (loaded as tensors and plain values only: nothing in it can run)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing; run `dvc repro prepare` first")
    return PreparedData(**tensorfile.load(path, rerun="`dvc repro prepare`"))


def image_size(params: DataParams) -> int:
    return params.image_size or DEFAULT_SIZE.get(params.dataset, 32)


def load_raw(params: DataParams) -> RawDataset:
    """The dataset's labels and its images, these still undecoded for the file-based sets."""
    size = image_size(params)
    if params.dataset == "digits":
        from fairprune.data import digits
        raw = digits.load()
    elif params.dataset == "utkface":
        from fairprune.data import utkface
        raw = utkface.load(params.root, params.target, params.group, size, params.age_bins)
    elif params.dataset == "celeba":
        from fairprune.data import celeba
        raw = celeba.load(params.root, params.target, params.group, size)
    elif params.dataset in ("cifar10", "mnist"):
        from fairprune.data import torchvision_sets
        raw = torchvision_sets.load(params.dataset, params.root, params.download)
    else:
        from fairprune.data import manifest
        raw = manifest.load(params.root, size, params.image_root, params.group)
    return raw


def _strata(*keys: np.ndarray) -> np.ndarray:
    return np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)[1].ravel()


def assign_splits(raw: RawDataset, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split codes for every sample; unassigned samples are split stratified by target x group.

    With no official split, unassigned samples go to train/val/test. Where an official test
    split exists (torchvision sets), the unassigned pool is the official train set and only
    val is carved out of it. Each stratum is shuffled with a fixed seed and cut by rounding,
    so a stratum of one sample stays in train.
    """
    split = np.full(len(raw.targets), NO_SPLIT, dtype=np.int8) if raw.split is None else raw.split.copy()
    pool = split == NO_SPLIT
    if not pool.any():
        return split
    has_test = (split == SPLITS.index("test")).any()
    fractions = (val_fraction, 0.0 if has_test else test_fraction)
    rng = np.random.default_rng(seed)
    strata = _strata(raw.targets, raw.groups)
    for stratum in np.unique(strata[pool]):
        members = np.flatnonzero(pool & (strata == stratum))
        members = rng.permutation(members)
        n_val, n_test = (int(round(len(members) * f)) for f in fractions)
        split[members] = SPLITS.index("train")
        split[members[:n_val]] = SPLITS.index("val")
        split[members[n_val:n_val + n_test]] = SPLITS.index("test")
    return split


def _keep(mask: np.ndarray, raw: RawDataset, split: np.ndarray) -> tuple[RawDataset, np.ndarray]:
    kept = RawDataset(raw.images[mask], raw.targets[mask], raw.groups[mask], raw.target_names,
                      raw.group_names, info=raw.info)
    return kept, split[mask]


def subsample(raw: RawDataset, split: np.ndarray, max_samples: int, seed: int) -> tuple[RawDataset, np.ndarray]:
    """Keep about max_samples samples, the same fraction of every split x target x group stratum."""
    if len(split) <= max_samples:
        return raw, split
    fraction = max_samples / len(split)
    rng = np.random.default_rng(seed + 1)
    keep = np.zeros(len(split), dtype=bool)
    strata = _strata(split, raw.targets, raw.groups)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        keep[members[:max(1, int(round(len(members) * fraction)))]] = True
    if keep.sum() > 1.05 * max_samples:
        log.warning("data.max_samples = %d keeps %d samples: every split x target x group stratum keeps at least "
                    "one (%d strata)", max_samples, keep.sum(), len(np.unique(strata)))
    return _keep(keep, raw, split)


def apply_imbalance(raw: RawDataset, split: np.ndarray, groups: list[str], fraction: float,
                    seed: int) -> tuple[RawDataset, np.ndarray]:
    """Keep only `fraction` of the named groups' training samples, to create minorities."""
    if not groups or fraction >= 1.0:
        return raw, split
    rng = np.random.default_rng(seed + 2)
    keep = np.ones(len(split), dtype=bool)
    for i, name in enumerate(groups):
        if name not in raw.group_names:
            raise ParamsError(f"data.imbalance.groups.{i}", name, f"a group name of this dataset: {', '.join(raw.group_names)}")
        code = raw.group_names.index(name)
        members = rng.permutation(np.flatnonzero((raw.groups == code) & (split == SPLITS.index("train"))))
        keep[members[max(1, int(round(len(members) * fraction))):]] = False
    return _keep(keep, raw, split)


def check_groups_present(raw: RawDataset, split: np.ndarray, group_attribute: str) -> None:
    for s, name in enumerate(SPLITS):
        present = np.bincount(raw.groups[split == s], minlength=len(raw.group_names))
        empty = [raw.group_names[g] for g in np.flatnonzero(present == 0)]
        if empty:
            raise ParamsError(
                "data.group", group_attribute,
                f"a group attribute with samples of every group in every split; groups {empty} have no "
                f"sample in the '{name}' split (choose another group, raise data.max_samples, "
                f"or add samples of those groups)")


def prepare(params: DataParams) -> PreparedData:
    raw = load_raw(params)
    split = assign_splits(raw, params.val_fraction, params.test_fraction, params.split_seed)
    if params.max_samples:
        raw, split = subsample(raw, split, params.max_samples, params.split_seed)
    raw, split = apply_imbalance(raw, split, params.imbalance.groups, params.imbalance.fraction, params.split_seed)
    check_groups_present(raw, split, params.group)
    images = torch.from_numpy(np.ascontiguousarray(pixels(raw.images, image_size(params)).transpose(0, 3, 1, 2)))
    train = images[torch.from_numpy(split == SPLITS.index("train"))].float() / 255.0
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return PreparedData(
        images=images, targets=torch.from_numpy(raw.targets), groups=torch.from_numpy(raw.groups),
        split=torch.from_numpy(split), target_names=raw.target_names, group_names=raw.group_names,
        mean=mean, std=std, info={**raw.info, "dataset": params.dataset, "target": params.target, "group": params.group},
    )
