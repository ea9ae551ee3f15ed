"""Where each stage writes, and how (atomically: a failed stage leaves no half-written file).

File names are shared by dvc.yaml and the stages; run names follow the metrics contract:
`dense` or `<method>-<sparsity>`, with `-s<seed>` appended when there are several seeds.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

PREPARED = Path("data/prepared.pt")
PREPARE_METRICS = Path("metrics/prepare.json")
DATA_STATS = Path("data/stats.json")
EVAL_DIR = Path("metrics/eval")
PREDICTIONS_DIR = Path("predictions")
EVALUATE_METRICS = Path("metrics/evaluate.json")
REPORT_DIR = Path("reports")
CHECKPOINT_DIR = Path("checkpoints")


def sparsity_label(sparsity: float) -> str:
    """How DVC renders a float from params in a matrix stage name (0.5 -> '0.5')."""
    return str(float(sparsity))


def dense_model(seed: int) -> Path:
    return Path(f"models/dense-s{seed}.pt")


def train_metrics(seed: int) -> Path:
    return Path(f"metrics/train/dense-s{seed}.json")


def pruned_key(method: str, sparsity: float, seed: int) -> str:
    return f"{method}-{sparsity_label(sparsity)}-s{seed}"


def pruned_model(method: str, sparsity: float, seed: int) -> Path:
    return Path(f"models/pruned/{pruned_key(method, sparsity, seed)}.pt")


def prune_metrics(method: str, sparsity: float, seed: int) -> Path:
    return Path(f"metrics/prune/{pruned_key(method, sparsity, seed)}.json")


def run_name(method: str | None, sparsity: float, seed: int, several_seeds: bool) -> str:
    name = "dense" if method is None else f"{method}-{sparsity_label(sparsity)}"
    return f"{name}-s{seed}" if several_seeds else name


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically; NaN/inf become null so every reader can parse it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
