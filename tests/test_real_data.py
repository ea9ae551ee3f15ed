"""Loaders on the real datasets in ../shared/data (marked slow; skipped when it is absent)."""
import numpy as np
import pytest

from fairprune.config import DataParams
from fairprune.data import celeba, prepare, utkface

pytestmark = pytest.mark.slow


def test_utkface_official_tarball(shared_data):
    raw = utkface.load(shared_data / "utkface" / "UTKFace.tar.gz", target="gender", group="race", size=16,
                       age_bins=[20, 40, 60])
    assert raw.info["skipped_malformed"] == 5
    assert len(raw.targets) == 23702
    assert np.bincount(raw.groups).tolist() == [10077, 4524, 3434, 3975, 1692]
    assert np.bincount(raw.targets).tolist() == [12388, 11314]


def test_celeba_subset_with_full_annotations(shared_data):
    data = prepare(DataParams(dataset="celeba", root=str(shared_data / "celeba"), target="Blond_Hair",
                              group="Male", image_size=16))
    stats = data.stats()
    assert stats["n_per_split"] == {"train": 4560, "val": 780, "test": 660}
    blond = {g: sum(stats["counts"][s][g]["Blond_Hair"] for s in stats["counts"]) for g in ("Female", "Male")}
    assert blond == {"Female": 1183, "Male": 37}
    assert stats["info"]["annotated_total"] == 202599


def test_celeba_header_lists_all_attributes(shared_data):
    table = celeba.read_attributes(shared_data / "celeba" / "list_attr_celeba.txt", ["Bags_Under_Eyes", "Male"])
    assert len(table) == 202599


def test_utkface_intersectional_race_by_gender(shared_data):
    raw = utkface.load(shared_data / "utkface" / "UTKFace.tar.gz", target="race", group=["race", "gender"], size=8,
                       age_bins=[20, 40, 60])
    assert len(raw.group_names) == 10 and raw.group_names[:2] == ["White/male", "White/female"]
    counts = dict(zip(raw.group_names, np.bincount(raw.groups).tolist()))
    # each race's two genders add up to the race counts of the single-attribute test above
    assert counts["White/male"] + counts["White/female"] == 10077
    assert counts["Others/male"] + counts["Others/female"] == 1692
