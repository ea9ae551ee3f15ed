"""Group fairness: metrics from one pass of per-sample outputs, surrogates, constraints, diagnostics."""
from fairprune.fairness.metrics import GroupStats, fairness_gaps, group_stats, undefined_gaps

__all__ = ["GroupStats", "fairness_gaps", "group_stats", "undefined_gaps"]
