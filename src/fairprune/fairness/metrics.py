"""Per-group metrics and the fairness gaps of docs/methods.md.

Everything is computed from per-sample arrays (target, prediction, loss, group) with
bincount, never with a loop over groups. A group with no sample gets n = 0 and NaN
accuracy/loss and is left out of every max/min, so a batch or split missing a group
still gives gaps over the groups it has. A gap that fewer than two groups define is NaN,
never 0.0 (which would read as perfect fairness); `undefined_gaps` says why for each.
Group labels outside [0, num_groups) are rejected rather than silently growing the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GroupStats:
    n: np.ndarray  # (G,) samples per group
    accuracy: np.ndarray  # (G,) NaN where n == 0
    loss: np.ndarray  # (G,) mean loss, NaN where n == 0
    overall_accuracy: float
    overall_loss: float
    positive_rate: np.ndarray | None = None  # (G,) P(y_hat = 1 | a), binary targets only
    tpr: np.ndarray | None = None  # (G,) P(y_hat = 1 | y = 1, a)
    fpr: np.ndarray | None = None  # (G,) P(y_hat = 1 | y = 0, a)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def group_stats(y_true, y_pred, loss, group, num_groups: int, num_classes: int | None = None) -> GroupStats:
    y_true, y_pred, group = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, group))
    outside = (group < 0) | (group >= num_groups)
    if outside.any():
        raise ValueError(f"group labels must lie in [0, {num_groups}) (num_groups = {num_groups}); found "
                         f"{sorted(set(group[outside].tolist()))[:5]} at {int(outside.sum())} sample(s): the group "
                         f"names and the labels disagree; prepare the data again (dvc repro prepare)")
    loss = np.asarray(loss, dtype=np.float64)
    correct = (y_true == y_pred).astype(np.float64)
    n = np.bincount(group, minlength=num_groups).astype(np.int64)
    stats = GroupStats(
        n=n,
        accuracy=_ratio(np.bincount(group, weights=correct, minlength=num_groups), n),
        loss=_ratio(np.bincount(group, weights=loss, minlength=num_groups), n),
        overall_accuracy=float(correct.mean()) if len(correct) else float("nan"),
        overall_loss=float(loss.mean()) if len(loss) else float("nan"),
    )
    if num_classes == 2:
        positive = (y_pred == 1).astype(np.float64)
        stats.positive_rate = _ratio(np.bincount(group, weights=positive, minlength=num_groups), n)
        for attr, label in (("tpr", 1), ("fpr", 0)):
            rows = y_true == label
            setattr(stats, attr, _ratio(np.bincount(group[rows], weights=positive[rows], minlength=num_groups),
                                        np.bincount(group[rows], minlength=num_groups)))
    return stats


def _spread(values: np.ndarray) -> float:
    """max - min over the defined values; NaN when fewer than two groups define it."""
    values = values[~np.isnan(values)]
    return float(values.max() - values.min()) if len(values) >= 2 else float("nan")


def _defined(values: np.ndarray | None) -> int:
    return 0 if values is None else int((~np.isnan(values)).sum())


def fairness_gaps(stats: GroupStats, dense: GroupStats) -> dict[str, float]:
    """The gaps of a model against the dense model of the same seed (docs/methods.md)."""
    drop = dense.accuracy - stats.accuracy
    excess = stats.loss - dense.loss
    overall_drop = dense.overall_accuracy - stats.overall_accuracy
    worst = drop - overall_drop
    gaps = {
        "accuracy_gap": _spread(stats.accuracy),
        # max over pairs |R(a) - R(a')| is the spread of R.
        "excess_loss_gap": _spread(excess),
        "degradation_gap": _spread(drop),
        "worst_excess_drop": float(np.nanmax(worst)) if _defined(worst) >= 2 else float("nan"),
    }
    if stats.positive_rate is not None:
        gaps["demographic_parity_gap"] = _spread(stats.positive_rate)
        # both rates must be compared across groups: a TPR spread alone is not equalized odds
        gaps["equalized_odds_gap"] = max(_spread(stats.tpr), _spread(stats.fpr))  # NaN if either is
    return gaps


def undefined_gaps(stats: GroupStats, dense: GroupStats | None = None) -> dict[str, str]:
    """For each gap `fairness_gaps` returns as NaN, why (for the report)."""
    groups = _defined(stats.accuracy)
    against_dense = groups if dense is None else _defined(dense.accuracy - stats.accuracy)
    reasons = {}
    if groups < 2:
        reasons["accuracy_gap"] = f"{groups} group(s) present in the split; a gap needs two"
    if against_dense < 2:
        for key in ("excess_loss_gap", "degradation_gap", "worst_excess_drop"):
            reasons[key] = f"{against_dense} group(s) present in both this model's and the dense model's split"
    if stats.positive_rate is not None:
        if _defined(stats.positive_rate) < 2:
            reasons["demographic_parity_gap"] = f"{_defined(stats.positive_rate)} group(s) present; a gap needs two"
        tpr, fpr = _defined(stats.tpr), _defined(stats.fpr)
        if min(tpr, fpr) < 2:
            reasons["equalized_odds_gap"] = (f"the true-positive rate is defined in {tpr} group(s) and the "
                                             f"false-positive rate in {fpr}; equalized odds needs both in two")
    return reasons
