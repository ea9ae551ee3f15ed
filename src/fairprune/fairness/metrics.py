"""Per-group metrics and the fairness gaps of METHODS.md section 1.

Everything is computed from per-sample arrays (target, prediction, loss, group) with
bincount, never with a loop over groups. A group with no sample gets n = 0 and NaN
accuracy/loss and is left out of every max/min, so a batch or split missing a group
still gives gaps over the groups it has.
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
    values = values[~np.isnan(values)]
    return float(values.max() - values.min()) if len(values) else float("nan")


def fairness_gaps(stats: GroupStats, dense: GroupStats) -> dict[str, float]:
    """The gaps of a model against the dense model of the same seed (METHODS.md section 1)."""
    drop = dense.accuracy - stats.accuracy
    excess = stats.loss - dense.loss
    overall_drop = dense.overall_accuracy - stats.overall_accuracy
    worst = drop - overall_drop
    gaps = {
        "accuracy_gap": _spread(stats.accuracy),
        # max over pairs |R(a) - R(a')| is the spread of R.
        "excess_loss_gap": _spread(excess),
        "degradation_gap": _spread(drop),
        "worst_excess_drop": float(np.nanmax(worst)) if np.any(~np.isnan(worst)) else float("nan"),
    }
    if stats.positive_rate is not None:
        gaps["demographic_parity_gap"] = _spread(stats.positive_rate)
        spreads = [v for v in (_spread(stats.tpr), _spread(stats.fpr)) if not np.isnan(v)]
        gaps["equalized_odds_gap"] = max(spreads) if spreads else float("nan")
    return gaps
