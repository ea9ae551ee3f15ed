"""BiFP's claims next to what we measured (paired tests across seeds), its efficiency (batch passes
and wall time to a fairness target, Figure 6) and its ablations (Figure 7).

Efficiency reads the per-epoch validation curves the prune stage records. A method reaches the
target at the first epoch whose validation accuracy is within `target_accuracy_drop` of the plain
dense model's and whose accuracy gap (max - min group accuracy) is at most `target_gap`. Two-stage
methods that start from the mitigated dense model (`+fair_bf`, `+fair_both`) are charged its
training passes too: that fair training run is part of their cost.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from fairprune.config import MITIGATED_DENSE_ARMS, split_arm
from fairprune.report import save_figure

BIFP = ("bifp_uns", "bifp_str", "bifp_lagrangian")
ABLATIONS = ("bifp_no_mask_fair", "bifp_no_weight_fair", "bifp_no_fair", "bifp_no_ig")
TWO_STAGE = {"magnitude+fair_bf": "fair_then_prune", "magnitude+fair_aft": "prune_then_fair"}
PAPER_REDUCTION = 0.94  # BiFP: "94% fewer training iterations" than the two-stage baseline
SIGNIFICANCE = 0.05


def nearest(sparsities, wanted: float | None) -> float | None:
    """The sparsity of the matrix the claims are checked at: `wanted`, or the one nearest 0.7."""
    sparsities = sorted(set(sparsities))
    if not sparsities:
        return None
    return min(sparsities, key=lambda s: abs(s - (0.7 if wanted is None else wanted)))


def _seed_rows(table: pd.DataFrame, method: str, sparsity: float | None) -> pd.DataFrame:
    rows = table[(table.method == method) & ((table.sparsity == sparsity) if sparsity is not None else True)]
    return rows.set_index("seed")


def _by_seed(table: pd.DataFrame, method: str, sparsity: float | None, column: str) -> pd.Series:
    return _seed_rows(table, method, sparsity)[column]


def _mean_std(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"


def _paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided paired t-test over the seeds both have (nan with fewer than two or no variance)."""
    seeds = a.index.intersection(b.index)
    diff = (a[seeds] - b[seeds]).to_numpy()
    if len(seeds) < 2 or np.allclose(diff, diff[0]):
        return float("nan")
    return float(stats.ttest_rel(a[seeds], b[seeds]).pvalue)


def _row(claim: str, ours: pd.Series, other: pd.Series, other_label: str, holds: bool) -> dict:
    p = _paired_p(ours, other)
    return {"claim": claim, "measured": _mean_std(ours), "against": f"{other_label} {_mean_std(other)}",
            "holds": "yes" if holds else "no", "paired p": "n/a" if np.isnan(p) else f"{p:.3f}",
            "significant": "n/a" if np.isnan(p) else ("yes" if p < SIGNIFICANCE else "no")}


def claims_table(table: pd.DataFrame, sparsity: float, tolerance: float, efficiency: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of the paper (and per target of our issue) that the matrix can test, plus
    whether a smaller gap came from lifting the worst group or from lowering the best one."""
    methods = set(table.method)

    def gap(method):
        return _by_seed(table, method, sparsity if method != "dense" else None, "accuracy_gap")

    def acc(method):
        return _by_seed(table, method, sparsity if method != "dense" else None, "accuracy")

    def group_accuracy(method, pick):
        return pick(_seed_rows(table, method, sparsity)[[c for c in table.columns if c.startswith("acc/")]], axis=1)

    plain = [m for m in methods if not m.startswith(("dense", "bifp")) and not split_arm(m)[1]]
    best_plain = max(plain, key=lambda m: acc(m).mean()) if plain else None
    rows = []
    for bifp in [m for m in BIFP if m in methods]:
        rows.append(_row(f"{bifp}: accuracy gap no larger than the dense model's", gap(bifp), gap("dense"),
                         "dense", gap(bifp).mean() <= gap("dense").mean()))
        if "magnitude" in methods:
            rows.append(_row(f"{bifp}: accuracy gap at most half of magnitude pruning's", gap(bifp),
                             gap("magnitude") / 2, "magnitude / 2", gap(bifp).mean() <= gap("magnitude").mean() / 2))
            if any(c.startswith("acc/") for c in table.columns):
                ours, theirs = (group_accuracy(m, pd.DataFrame.min) for m in (bifp, "magnitude"))
                rows.append(_row(f"{bifp}: the worst group gains (its accuracy at least magnitude pruning's)",
                                 ours, theirs, "magnitude", ours.mean() >= theirs.mean()))
                ours, theirs = (group_accuracy(m, pd.DataFrame.max) for m in (bifp, "magnitude"))
                rows.append(_row(f"{bifp}: no levelling down (best group within 1 point of magnitude pruning's)",
                                 ours, theirs, "magnitude", ours.mean() >= theirs.mean() - 0.01))
        if best_plain:
            rows.append(_row(f"{bifp}: accuracy within 1 point of the best non-fair baseline", acc(bifp),
                             acc(best_plain), best_plain, acc(bifp).mean() >= acc(best_plain).mean() - 0.01))
        for two_stage, label in TWO_STAGE.items():
            if two_stage in methods:
                rows.append(_row(f"{bifp}: fairer than two-stage {label} ({two_stage})", gap(bifp), gap(two_stage),
                                 two_stage, gap(bifp).mean() < gap(two_stage).mean()))
    if "bifp_uns" in methods:
        for ablation in [m for m in ABLATIONS if m in methods]:
            rows.append(_row(f"removing a component hurts: {ablation} less fair than bifp_uns", gap(ablation),
                             gap("bifp_uns"), "bifp_uns", gap(ablation).mean() > gap("bifp_uns").mean()))
    if "bifp_lagrangian" in methods:
        excess = _by_seed(table, "bifp_lagrangian", sparsity, "surrogate_excess")
        rows.append({"claim": f"bifp_lagrangian meets its tolerance ({tolerance}) on the evaluation split",
                     "measured": f"max group excess {_mean_std(excess)}", "against": f"tolerance {tolerance}",
                     "holds": "yes" if (excess <= tolerance).all() else f"no ({int((excess > tolerance).sum())} "
                                                                         f"of {len(excess)} seeds over)",
                     "paired p": "n/a", "significant": "n/a"})
    reached = efficiency.dropna(subset=["passes"]) if len(efficiency) else efficiency
    bifp_rows = reached[reached.method.isin(BIFP)] if len(reached) else reached
    two_rows = reached[reached.method.isin(list(TWO_STAGE))] if len(reached) else reached
    if len(bifp_rows) and len(two_rows):
        ours = bifp_rows.groupby("method").passes.mean()
        theirs = two_rows.groupby("method").passes.mean()
        reduction = 1 - ours.min() / theirs.min()
        rows.append({"claim": f"BiFP reaches the fairness target with {PAPER_REDUCTION:.0%} fewer passes "
                              "than the best two-stage baseline (ours: at least 90 %)",
                     "measured": f"{ours.idxmin()} {ours.min():.0f} passes", "against":
                     f"{theirs.idxmin()} {theirs.min():.0f} passes", "holds": f"{reduction:.0%} fewer"
                     + (" (yes)" if reduction >= 0.9 else " (no)"), "paired p": "n/a", "significant": "n/a"})
    return pd.DataFrame(rows)


def _target_hit(history: list[dict], group_names: list[str], accuracy: float, gap: float) -> dict | None:
    for record in history:
        groups = [record[f"val_acc/{g}"] for g in group_names if f"val_acc/{g}" in record]
        if record["val_acc"] >= accuracy and max(groups) - min(groups) <= gap:
            return record
    return None


def efficiency_table(prune_records: list[dict], dense: dict[tuple[int, str], dict], group_names: list[str],
                     sparsity: float, target_gap: float | None, accuracy_drop: float) -> tuple[pd.DataFrame, dict]:
    """Per (method, seed): batch passes and seconds of fine-tuning (plus the mitigated dense model's
    training for two-stage fair_then_prune) until the validation target is first met; NaN if never."""
    rows, curves = [], {}
    for record in prune_records:
        if record["sparsity"] != sparsity or "history" not in record:
            continue
        seed, method = record["seed"], record["method"]
        plain = dense[(seed, "plain")]
        groups = [plain[f"val_acc/{g}"] for g in group_names]
        gap = target_gap if target_gap is not None else max(groups) - min(groups)
        accuracy = plain["val_acc"] - accuracy_drop
        arm = split_arm(method)[1]
        extra = dense.get((seed, "mitigated")) if arm in MITIGATED_DENSE_ARMS else None
        base_steps, base_s = (extra.get("steps", np.nan), extra.get("train_s", np.nan)) if extra else (0, 0.0)
        hit = _target_hit(record["history"], group_names, accuracy, gap)
        rows.append({"method": method, "seed": seed, "target_accuracy": accuracy, "target_gap": gap,
                     "epoch": hit["epoch"] if hit else np.nan,
                     "passes": base_steps + hit["steps"] if hit else np.nan,
                     "seconds": base_s + hit["train_s"] if hit else np.nan})
        curves.setdefault(method, []).append(
            [(base_steps + h["steps"], max(h[f"val_acc/{g}"] for g in group_names)
              - min(h[f"val_acc/{g}"] for g in group_names), h["val_acc"]) for h in record["history"]])
    return pd.DataFrame(rows), curves


def efficiency_summary(efficiency: pd.DataFrame) -> pd.DataFrame:
    if not len(efficiency):
        return efficiency
    return efficiency.groupby("method").agg(
        seeds=("seed", "count"), reached=("passes", lambda p: int(p.notna().sum())),
        passes=("passes", "mean"), seconds=("seconds", "mean"), epoch=("epoch", "mean")).reset_index()


def efficiency_figure(curves: dict, efficiency: pd.DataFrame, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in sorted(curves.items()):
        if not (method in BIFP or method in TWO_STAGE or method == "magnitude"):
            continue
        points = np.array(runs).mean(axis=0)  # the seeds share their epochs' step counts
        for ax, column in zip(axes, (1, 2)):
            ax.plot(points[:, 0], points[:, column], marker="o", label=method)
    target = efficiency.iloc[0] if len(efficiency) else None
    if target is not None:
        axes[0].axhline(target.target_gap, color="grey", linestyle="--", label="target gap")
        axes[1].axhline(target.target_accuracy, color="grey", linestyle="--", label="target accuracy")
    axes[0].set(xlabel="training batch passes (two-stage: incl. fair dense training)", ylabel="validation accuracy gap",
                xscale="symlog", title="Figure 6: passes to the fairness target")
    axes[1].set(xlabel="training batch passes", ylabel="validation accuracy", xscale="symlog")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, out)


def ablation_figure(table: pd.DataFrame, sparsity: float, out: Path) -> Path | None:
    methods = [m for m in ("bifp_uns", *ABLATIONS, "magnitude") if m in set(table.method)]
    if not set(ABLATIONS) & set(methods):  # no ablation ran: nothing to show
        return None
    part = table[(table.method.isin(methods)) & (table.sparsity == sparsity)]
    grouped = part.groupby("method")[["accuracy", "accuracy_gap"]].agg(["mean", "std"]).reindex(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, column in zip(axes, ("accuracy", "accuracy_gap")):
        ax.bar(methods, grouped[(column, "mean")], yerr=grouped[(column, "std")].fillna(0), capsize=3)
        ax.set(title=f"Figure 7: {column} at sparsity {sparsity:g}", ylabel=column)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylim(max(0.0, grouped[("accuracy", "mean")].min() - 0.05), None)
    return save_figure(fig, out)


def pareto_front(points: pd.DataFrame, accuracy: str, gap: str) -> pd.DataFrame:
    """The points no other point beats on both accuracy (higher) and gap (lower), by accuracy."""
    ordered = points.sort_values([accuracy, gap], ascending=[False, True])
    front, best_gap = [], float("inf")
    for _, row in ordered.iterrows():
        if row[gap] < best_gap:
            front.append(row)
            best_gap = row[gap]
    return pd.DataFrame(front)


def tradeoff_table(tradeoff: dict) -> pd.DataFrame:
    """Mean over seeds per (method, swept value), on validation and the evaluation split."""
    if not tradeoff.get("points"):
        return pd.DataFrame()
    split = tradeoff["split"]
    frame = pd.DataFrame(tradeoff["points"])
    frame["value"] = frame["value"].astype(str)
    columns = ["val_accuracy", "val_accuracy_gap", f"{split}_accuracy", f"{split}_accuracy_gap", "train_s"]
    return frame.groupby(["method", "value"], sort=False)[columns].mean().reset_index()


def tradeoff_figure(summary: pd.DataFrame, tradeoff: dict, table: pd.DataFrame, out: Path) -> Path:
    split, sparsity = tradeoff["split"], tradeoff["sparsity"]
    accuracy, gap = f"{split}_accuracy", f"{split}_accuracy_gap"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, points in summary.groupby("method", sort=False):
        line = ax.scatter(points[accuracy], points[gap], alpha=0.5)
        front = pareto_front(points, accuracy, gap)
        ax.plot(front[accuracy], front[gap], marker="o", color=line.get_facecolor()[0], label=f"{method} (front)")
        for _, row in points.iterrows():
            ax.annotate(row["value"], (row[accuracy], row[gap]), fontsize=6, alpha=0.7)
    fixed = table[(table.sparsity == sparsity) & ~table.method.isin(summary.method.unique())
                  & ~table.method.str.startswith("bifp")]
    for method, part in fixed.groupby("method"):
        ax.scatter(part.accuracy.mean(), part.accuracy_gap.mean(), marker="x", s=60, label=method)
    dense = table[table.method == "dense"]
    ax.scatter(dense.accuracy.mean(), dense.accuracy_gap.mean(), marker="*", s=120, color="black", label="dense")
    ax.set(xlabel=f"{split} accuracy", ylabel=f"{split} accuracy gap",
           title=f"Figure 5: accuracy-fairness trade-off at sparsity {sparsity:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def landscape_figure(landscape: dict, out: Path) -> Path | None:
    if not landscape.get("lines"):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    by_ablation: dict[str, list] = {}
    for line in landscape["lines"]:
        by_ablation.setdefault(line["ablation"], []).append(pd.DataFrame(line["points"]))
    for ablation, frames in by_ablation.items():
        mean = pd.concat(frames).groupby("alpha").mean().reset_index()
        for ax, column in zip(axes, ("loss", "accuracy", "accuracy_gap")):
            ax.plot(mean.alpha, mean[column], marker="o", label=ablation)
    for ax, column in zip(axes, ("loss", "accuracy", "accuracy_gap")):
        ax.set(xlabel="alpha (0 = bifp_uns, 1 = ablation)", ylabel=f"{landscape['split']} {column}")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Figure 8: straight line from BiFP to each ablation (sparsity {landscape['sparsity']:g})")
    axes[0].legend(fontsize=7)
    return save_figure(fig, out)
