"""Bring-your-own data: a CSV with columns path,target,group and optionally split.

Paths are relative to the CSV's folder (or to `data.image_root` when set) and must stay inside
it: an absolute path, a `..` that climbs out or a symbolic link that points out is refused with
its CSV line, so a manifest cannot make the pipeline read (and log) arbitrary files.
target and group are free-form labels (strings or numbers); split, where given, is one of
train/val/test for every row. `data.group` may name other group columns, or several (a list:
intersectional groups such as 'White/female').
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fairprune.data.images import LazyImages, decode
from fairprune.data.raw import SPLITS, RawDataset, attribute_list, intersect
from fairprune.errors import DataError

REQUIRED = ("path", "target")


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    def key(v: str):
        return (0, float(v), v) if v.lstrip("-").replace(".", "", 1).isdigit() else (1, 0.0, v)
    names = sorted(set(values), key=key)
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[v] for v in values], dtype=np.int64), names


def confined(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refused when it resolves (links followed) outside `root`."""
    if not relative or Path(relative).is_absolute():
        raise DataError(f"{where}: image path '{relative}' must be relative to {root} (absolute paths are refused)")
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"{where}: image path '{relative}' leads outside {root} (to {path}); keep every image "
                        f"under the manifest's folder, or set data.image_root to a folder that holds them all")
    return path


def load(csv_path: str | Path, size: int, image_root: str | Path | None = None,
         group: str | list[str] = "group") -> RawDataset:
    csv_path = Path(csv_path)
    root = Path(image_root if image_root is not None else csv_path.parent).resolve()
    if not csv_path.is_file():
        raise DataError(f"data.root = '{csv_path}' is not a file; point it at a CSV with columns path,target,group[,split]")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        group = attribute_list(group)
        missing = [c for c in (*REQUIRED, *group) if c not in columns]
        if missing and len(columns) == 1:
            found = next((sep for sep in ";\t|" if sep in columns[0]), None)
            if found is not None:
                raise DataError(f"{csv_path}: the header '{columns[0]}' is separated by {found!r}, not commas; "
                                f"save the CSV with comma separators (a spreadsheet's 'CSV UTF-8 (comma delimited)')")
        if missing:
            raise DataError(f"{csv_path} lacks column(s) {missing}; the header must be path,target,{','.join(group)}[,split] "
                            f"(found: {','.join(columns)})")
        rows = list(reader)
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    has_split = "split" in columns
    for line, row in enumerate(rows, start=2):
        for column in ("target", *group):
            value = row[column]
            if value is None or not value.strip():
                raise DataError(f"{csv_path}:{line}: the {column} cell is blank; every row needs a {column} label")
            if value != value.strip():
                raise DataError(f"{csv_path}:{line}: the {column} label {value!r} has leading or trailing spaces "
                                f"(it would be a class of its own); remove them")
        if has_split and row["split"] not in SPLITS:
            raise DataError(f"{csv_path}:{line}: split '{row['split']}' is not one of {', '.join(SPLITS)}")
    keys = []
    for line, row in enumerate(rows, start=2):
        path = confined(root, row["path"], f"{csv_path}:{line}")
        if not path.is_file():
            raise DataError(f"{csv_path}:{line}: image '{row['path']}' not found (paths are relative to {root})")
        keys.append((line, row["path"], path))

    def read(wanted):
        for line, relative, path in wanted:
            try:
                yield decode(path, size)
            except OSError as exc:
                raise DataError(f"{csv_path}:{line}: cannot decode '{relative}': {exc}") from None

    targets, target_names = _codes([r["target"] for r in rows])
    groups, group_names = intersect(*zip(*(_codes([r[column] for r in rows]) for column in group)))
    split = np.asarray([SPLITS.index(r["split"]) for r in rows], dtype=np.int8) if has_split else None
    return RawDataset(LazyImages(keys, read, "manifest"), targets, groups, target_names, group_names, split=split,
                      info={"source": str(csv_path)})
