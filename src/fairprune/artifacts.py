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
MODEL_METRICS_DIR = Path("metrics/models")  # the compact per-model numbers DVC shows (`dvc metrics show`)
PREDICTIONS_DIR = Path("predictions")
EVALUATE_METRICS = Path("metrics/evaluate.json")
REPORT_DIR = Path("reports")
TUNE_DIR = REPORT_DIR / "tune"
DATA_SOURCE = Path("data/source.json")  # the validate stage's digest of the data files
CHECKPOINT_DIR = Path("checkpoints")


def sparsity_label(sparsity: float) -> str:
    """How DVC renders a float from params in a matrix stage name (0.5 -> '0.5')."""
    return str(float(sparsity))


DIAGNOSE_DIR = Path("metrics/diagnose")
DIAGNOSE_METRICS = Path("metrics/diagnose.json")
TRADEOFF_METRICS = Path("metrics/tradeoff.json")
LANDSCAPE_METRICS = Path("metrics/landscape.json")


def model_metrics(record: dict) -> dict:
    """What `dvc metrics show` / `dvc exp show` print per model: flat numbers a user compares (the full
    record, with per-group details and per-sample bits, stays in metrics/eval/)."""
    return {"accuracy": record["accuracy"], "loss": record["loss"], "sparsity_actual": record["sparsity_actual"],
            **record["fairness"], **{f"acc/{g}": v["accuracy"] for g, v in record["groups"].items()}}


def tune_inputs_digest(params) -> str:
    """A digest of what a tune study's result depends on (every params section it could read, and the
    data files' digest): the report links reports/tune/ only when it matches the current one."""
    import hashlib

    dump = params.model_dump()
    for section in ("report", "diagnose", "tradeoff", "run"):
        dump.pop(section, None)
    for key in ("experiment", "tracking_uri", "artifact_root", "threads"):
        dump["base"].pop(key, None)
    for key in ("methods", "sparsities"):
        dump["prune"].pop(key, None)
    dump["data_source"] = DATA_SOURCE.read_text() if DATA_SOURCE.exists() else None
    return hashlib.sha256(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dense_dir(seed: int) -> Path:
    """One folder per seed, so a prune stage depends on its own seed's dense models only."""
    return Path(f"models/dense/s{seed}")


def dense_model(seed: int, variant: str = "plain") -> Path:
    return dense_dir(seed) / f"{variant}.pt"


def train_metrics(seed: int, variant: str = "plain") -> Path:
    return Path(f"metrics/train/{variant}-s{seed}.json")


def train_curve(seed: int, variant: str = "plain") -> Path:
    return Path(f"metrics/curves/train/{variant}-s{seed}.tsv")


def dense_label(variant: str) -> str:
    """'dense' for plain ERM, 'dense+relaxed' / 'dense+full' for the mitigated dense models."""
    return "dense" if variant == "plain" else f"dense+{variant}"


def pruned_key(method: str, sparsity: float, seed: int) -> str:
    return f"{method}-{sparsity_label(sparsity)}-s{seed}"


def pruned_model(method: str, sparsity: float, seed: int) -> Path:
    return Path(f"models/pruned/{pruned_key(method, sparsity, seed)}.pt")


def prune_metrics(method: str, sparsity: float, seed: int) -> Path:
    return Path(f"metrics/prune/{pruned_key(method, sparsity, seed)}.json")


def prune_curve(method: str, sparsity: float, seed: int) -> Path:
    return Path(f"metrics/curves/prune/{pruned_key(method, sparsity, seed)}.tsv")


def run_name(method: str | None, sparsity: float, seed: int, several_seeds: bool) -> str:
    """`method` is a pruning method (with its +arm), a dense label, or None for the plain dense model."""
    if method is None or method.startswith("dense"):
        name = method or "dense"
    else:
        name = f"{method}-{sparsity_label(sparsity)}"
    return f"{name}-s{seed}" if several_seeds else name


def model_jobs(params) -> list[tuple[str, float, int, Path]]:
    """(label, sparsity, seed, model path) of every model the pipeline trains, dense ones first per seed."""
    jobs = []
    for seed in params.base.seeds:
        jobs += [(dense_label(v), 0.0, seed, dense_model(seed, v)) for v in params.train.variants]
        jobs += [(m, p, seed, pruned_model(m, p, seed)) for m in params.prune.methods for p in params.prune.sparsities]
    return jobs


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


CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_worst_group_acc")


def write_curve(path: Path, history: list[dict]) -> None:
    """One row per epoch (a DVC plot: `dvc plots diff` compares experiments), the validation accuracy of
    the worst group included; no wall times, so the file is a function of the run's inputs."""
    rows = ["\t".join(CURVE_COLUMNS)]
    for record in history:
        groups = [v for k, v in record.items() if k.startswith("val_acc/")]
        values = {**record, "val_worst_group_acc": min(groups) if groups else None}
        rows.append("\t".join("" if values.get(c) is None else f"{values[c]:.6g}" for c in CURVE_COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
