"""Group fairness: metrics from one pass of per-sample outputs (later: diagnostics, constraints)."""
from fairprune.fairness.metrics import GroupStats, fairness_gaps, group_stats

__all__ = ["GroupStats", "fairness_gaps", "group_stats"]
