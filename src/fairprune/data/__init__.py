"""Datasets: every one yields (image, target, group) with fixed train/val/test splits.

`prepare(params.data)` loads a dataset, fixes its splits, checks every group is present in
every split and returns a `PreparedData` that is cached once as a tensor file so later stages
never decode an image again.
"""
from fairprune.data.prepared import PreparedData, load_prepared, prepare

__all__ = ["PreparedData", "load_prepared", "prepare"]
