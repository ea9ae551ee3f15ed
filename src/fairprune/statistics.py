"""Confidence intervals and tests for per-group test results, used by every results table.

A hierarchical bootstrap: each replicate resamples the seeds (with replacement), and the test samples
within each group. The test split is one fixed set that every model was evaluated on, so one sample
resampling per replicate is shared by every model, seed and method: comparisons stay paired by seed
and by test sample. A model's per-sample correctness comes from its evaluation record (`correct`,
packed bits per group); a record without it (older runs) is resampled within each group from its
counts (binomial: the same distribution for one model, but unpaired with the others, so its
comparisons are conservative). scipy.stats.bootstrap resamples one level only, hence the explicit
(vectorised) two-level scheme; Holm's correction is statsmodels'.

Intervals are percentile intervals at 95 %. Comparisons give a bootstrap p-value (two-sided for a
difference, one-sided for non-inferiority: "within X points" is H0: difference <= -X), Holm-corrected
within a table.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95


def pack_correct(correct: np.ndarray) -> str:
    """Per-sample correctness (bool, in split order) as base64 of its packed bits."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


@dataclass
class Estimate:
    """A point estimate (mean over seeds of the observed values) and its bootstrap replicates."""
    value: float
    replicates: np.ndarray

    def interval(self) -> tuple[float, float]:
        tail = (1 - LEVEL) / 2 * 100
        low, high = np.percentile(self.replicates, [tail, 100 - tail])
        return float(low), float(high)

    def __sub__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.value - other.value, self.replicates - other.replicates)

    def p_two_sided(self) -> float:
        """Bootstrap p-value of 'the difference is 0' (the interval-inversion one)."""
        below, above = np.mean(self.replicates <= 0), np.mean(self.replicates >= 0)
        return float(min(1.0, 2 * min(below, above)))

    def p_non_inferior(self, margin: float) -> float:
        """p-value of H0: the difference is at most -margin (so 'not worse by more than margin' needs it small)."""
        return float(np.mean(self.replicates <= -margin))


class Bootstrap:
    """Replicates of every model's per-group test accuracies, and the metrics built from them."""

    def __init__(self, records: list[dict], n_boot: int = 2000, seed: int = 0):
        dense = [r for r in records if r["method"] == "dense"]
        if not dense:
            raise ValueError("no dense model among the records: every change is measured against it")
        self.groups = list(dense[0]["groups"])
        self.n = np.array([dense[0]["groups"][g]["n"] for g in self.groups])
        self.seeds = sorted({r["seed"] for r in records})
        self.n_boot = n_boot
        rng = np.random.default_rng(seed)
        self.weights = [rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32) if n else None
                        for n in self.n]
        self.seed_draw = rng.integers(0, len(self.seeds), size=(n_boot, len(self.seeds)))
        self.records = {(r["method"], r["sparsity"], r["seed"]): r for r in records}
        self.accuracy = {key: self._replicates(r, rng) for key, r in self.records.items()}
        self.dense = {r["seed"]: (r["method"], r["sparsity"], r["seed"]) for r in dense}

    def _replicates(self, record: dict, rng) -> tuple[np.ndarray, np.ndarray]:
        """(observed per-group accuracy (G,), replicates (B, G))."""
        observed, columns = [], []
        for k, group in enumerate(self.groups):
            n, stats_ = self.n[k], record["groups"][group]
            bits = record.get("correct", {}).get(group)
            if bits is not None:
                correct = unpack_correct(bits, n)
                observed.append(correct.mean())
                columns.append(self.weights[k] @ correct.astype(np.float32) / n)
            else:
                observed.append(stats_["accuracy"])
                columns.append(rng.binomial(n, stats_["accuracy"], size=self.n_boot) / n if n else
                               np.full(self.n_boot, np.nan))
        return np.asarray(observed, dtype=float), np.stack(columns, axis=1)

    # per-model metrics from per-group accuracies, observed (G,) or replicated (B, G)
    def overall(self, acc: np.ndarray) -> np.ndarray:
        return acc @ self.n / self.n.sum()

    @staticmethod
    def gap(acc: np.ndarray) -> np.ndarray:
        return np.nanmax(acc, axis=-1) - np.nanmin(acc, axis=-1)

    def worst_excess_drop(self, acc: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """max over groups of psi_a = (dense_a - acc_a) - (dense - acc) (docs/methods.md, CEAG)."""
        psi = (dense - acc) - (self.overall(dense) - self.overall(acc))[..., None]
        return np.nanmax(psi, axis=-1)

    def metric(self, method: str, sparsity: float, name: str, group: str | None = None) -> Estimate:
        """A metric of (method, sparsity) over its seeds, with its two-level replicates. `name`:
        accuracy, accuracy_gap, worst_excess_drop, group_change (with `group`), best_group_change and
        worst_group_change (the groups the dense model of each seed serves best and worst)."""
        observed, replicated = [], []
        for seed in self.seeds:
            key = (method, sparsity, seed)
            if key not in self.accuracy:
                continue
            (acc, reps), (dense_acc, dense_reps) = self.accuracy[key], self.accuracy[self.dense[seed]]
            if name == "accuracy":
                values = self.overall(acc), self.overall(reps)
            elif name == "accuracy_gap":
                values = self.gap(acc), self.gap(reps)
            elif name == "worst_excess_drop":
                values = self.worst_excess_drop(acc, dense_acc), self.worst_excess_drop(reps, dense_reps)
            elif name in ("group_change", "best_group_change", "worst_group_change"):
                k = (self.groups.index(group) if name == "group_change" else
                     int(np.nanargmax(dense_acc)) if name == "best_group_change" else int(np.nanargmin(dense_acc)))
                values = acc[k] - dense_acc[k], reps[:, k] - dense_reps[:, k]
            else:
                raise ValueError(f"unknown metric '{name}'")
            observed.append(values[0])
            replicated.append(values[1])
        if not observed:
            raise KeyError(f"no records for {method} at {sparsity}")
        replicated = np.stack(replicated)  # (S, B)
        draw = self.seed_draw[:, :len(observed)] % len(observed)  # resampled seeds, shared by every method
        return Estimate(float(np.mean(observed)),
                        replicated[draw, np.arange(self.n_boot)[:, None]].mean(axis=1))

    def smallest_detectable_difference(self, power: float = 0.8) -> tuple[str, float]:
        """The largest, over groups, of the smallest accuracy drop d from a group's dense accuracy p
        that a two-sided 5 % test of two independent proportions on that group's test samples detects
        with `power`: z * sqrt((p(1 - p) + (p - d)(1 - p + d)) / n) = d, z = z_0.975 + z_power (paired
        comparisons detect somewhat less). The group it is reached on, and d."""
        z = stats.norm.ppf(0.975) + stats.norm.ppf(power)
        worst = ("", 0.0)
        for k, (group, n) in enumerate(zip(self.groups, self.n)):
            p = float(np.mean([self.accuracy[key][0][k] for key in self.dense.values()]))
            if n == 0 or p == 0:
                continue
            gap = lambda d: z * np.sqrt((p * (1 - p) + (p - d) * (1 - p + d)) / n) - d  # noqa: E731
            d = p if gap(p) > 0 else optimize.brentq(gap, 1e-12, p)
            worst = max(worst, (group, float(d)), key=lambda t: t[1])
        return worst


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error control within one table)."""
    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, method="holm")[1]]
