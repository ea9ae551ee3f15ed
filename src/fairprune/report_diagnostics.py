"""Tran et al.'s claims checked on the diagnostics records, and the paper's Figures 2-6 redrawn."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr, wilcoxon  # noqa: E402

# (x, y, expected sign, which models, what the paper says)
CORRELATIONS = {
    "proposition1_size_vs_grad_norm": ("size", "grad_norm", -1, "dense",
                                       "Proposition 1: larger groups have smaller gradient norms (Fig. 2)"),
    "accuracy_vs_grad_norm": ("accuracy", "grad_norm", -1, "all",
                              "Proposition 2: less accurate groups have larger gradient norms (Fig. 3)"),
    "hessian_vs_grad_norm": ("hessian_top", "grad_norm", 1, "all",
                             "Section 5: Hessian top eigenvalue and gradient norm correlate positively (Fig. 6)"),
    "hessian_vs_boundary_closeness": ("hessian_top", "boundary_closeness", 1, "all",
                                      "Theorem 2: groups closer to the boundary have larger Hessians (Fig. 5)"),
}


def group_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (model, group) with every diagnostic."""
    rows = []
    for r in records:
        for g in r["groups"]:
            if "grad_norm" in g:
                rows.append({"run": r["run"], "method": r["method"], "sparsity": r["sparsity"], "seed": r["seed"],
                             "group": g["name"], **{k: v for k, v in g.items() if k != "name"}})
    return pd.DataFrame(rows)


def _per_model_spearman(frame: pd.DataFrame, x: str, y: str) -> tuple[float | None, float | None, int, int]:
    """Spearman's rho across the groups of each model (at least 3 groups), then summarised across models:
    (median rho, two-sided Wilcoxon signed-rank p of the models' rhos against 0, models, groups per
    model). Pooling every (model, group) point would count the same groups once per sparsity and seed
    and give p-values like 1e-138; the unit of replication is the model, and even models share their
    groups and dense seeds, so the p-value is still optimistic with few seeds."""
    rhos = []
    for _, part in frame.groupby("run"):
        part = part[[x, y]].dropna()
        if len(part) >= 3 and part[x].nunique() > 1 and part[y].nunique() > 1:
            rhos.append(float(spearmanr(part[x], part[y]).statistic))
    groups = int(frame.groupby("run").size().median()) if len(frame) else 0
    if not rhos:
        return None, None, 0, groups
    rhos = np.asarray(rhos)
    p = float(wilcoxon(rhos).pvalue) if len(rhos) > 1 and np.any(rhos != 0) else None
    return float(np.median(rhos)), p, len(rhos), groups


def claims(records: list[dict]) -> dict:
    frame = group_frame(records)
    out = {}
    for key, (x, y, sign, which, text) in CORRELATIONS.items():
        part = frame[frame.method == "dense"] if which == "dense" else frame
        rho, p, models, groups = _per_model_spearman(part, x, y)
        if rho is None:
            verdict = "not measurable (needs 3 or more groups)"
        elif np.sign(rho) == sign and p is not None and p < 0.05:
            verdict = "holds"
        elif np.sign(rho) == sign:
            verdict = "same direction, not significant"
        else:
            verdict = "does not hold"
        out[key] = {"claim": text, "value": rho, "p_value": p, "models": models, "groups": groups,
                    "verdict": verdict}
    bounded = frame.dropna(subset=["bound_ratio"]) if "bound_ratio" in frame else frame.iloc[0:0]
    ratio = float(bounded.bound_ratio.median()) if len(bounded) else None
    out["theorem1_bound_ratio"] = {
        "claim": "Theorem 1: R(a) <= ||g_a|| ||theta_bar - theta*|| + 1/2 lambda_a ||theta_bar - theta*||^2, "
                 "on the one-shot pruned model (before fine-tuning)",
        "value": ratio, "p_value": None, "models": int(bounded.run.nunique()) if len(bounded) else 0,
        "groups": int(bounded.groupby("run").size().median()) if len(bounded) else 0,
        "verdict": "not measurable" if ratio is None else
        f"median bound / R(a) = {ratio:.3g} (range {bounded.bound_ratio.min():.3g}-{bounded.bound_ratio.max():.3g}); "
        "a tightness ratio, not a test"}
    return {"claims": out}


def _scatter(ax, frame: pd.DataFrame, x: str, y: str, title: str) -> None:
    for group, part in frame.groupby("group", sort=False):
        ax.scatter(part[x], part[y], label=group, s=18, alpha=0.8)
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=title)
    ax.grid(alpha=0.3)


def figures(records: list[dict], method: str, out_dir: Path) -> list[Path]:
    """The paper's Figures 2-6 and Theorem 1's bound against the measured excessive loss."""
    from fairprune.report import save_figure

    frame = group_frame(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    split = records[0].get("split", "train") if records else "train"
    where = f"each point: one group of one model, measured on its {split}-split sample (diagnose.split)"
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    _scatter(axes[0], frame[frame.method == "dense"], "size", "grad_norm", "group size vs gradient norm (dense)")
    axes[0].set_xscale("log")
    _scatter(axes[1], frame, "grad_norm", "accuracy", "accuracy vs gradient norm (all models)")
    _scatter(axes[2], frame, "boundary_closeness", "hessian_top", "Hessian top eigenvalue vs boundary closeness")
    _scatter(axes[3], frame, "grad_norm", "hessian_top", "Hessian top eigenvalue vs gradient norm")
    axes[3].legend(fontsize=7, title="group")
    fig.text(0.01, 0.005, where, fontsize=7, color="0.35")
    paths.append(save_figure(fig, out_dir / "diagnostics_correlations.png"))

    curve = frame[frame.method.isin(["dense", method])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, column in zip(axes, ("accuracy", "grad_norm", "hessian_top")):
        stats = curve.groupby(["group", "sparsity"], sort=False)[column].agg(["mean", "std"]).reset_index()
        for group, part in stats.groupby("group", sort=False):
            ax.errorbar(part.sparsity, part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, label=group)
        ax.set(title=f"{method}: {column.replace('_', ' ')} per group ({split} split)", xlabel="sparsity",
               ylabel=f"{column.replace('_', ' ')} ({split} split)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, title="group")
    fig.text(0.01, 0.005, f"mean over seeds, bars ± 1 std; {split}-split sample per group (diagnose.split)",
             fontsize=7, color="0.35")
    paths.append(save_figure(fig, out_dir / "diagnostics_vs_sparsity.png"))

    if "bound_ratio" in frame and frame.bound_ratio.notna().any():
        bounded = frame.dropna(subset=["bound_ratio"])
        fig, ax = plt.subplots(figsize=(5, 4.5))
        _scatter(ax, bounded, "bound", "one_shot_excess_loss", "Theorem 1: one-shot R(a) vs bound")
        top = float(max(bounded.bound.max(), bounded.one_shot_excess_loss.max()))
        line = np.linspace(0, top, 400)  # many points: a two-point segment is a wrong curve on a symlog axis
        ax.plot(line, line, "k--", lw=1, label="R(a) = bound")
        ax.set_xscale("symlog")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out_dir / "diagnostics_bound.png"))
    return paths


def claims_markdown(summary: dict) -> str:
    lines = ["Correlations: Spearman's rho across each model's groups, median over models; p: Wilcoxon "
             "signed-rank test of the models' rhos against 0.", "",
             "| claim | measured (median rho) | p | models x groups | verdict |", "|---|---|---|---|---|"]
    for claim in summary["claims"].values():
        value = "n/a" if claim["value"] is None else f"{claim['value']:.3f}"
        p = "" if claim["p_value"] is None else f"{claim['p_value']:.2g}"
        lines.append(f"| {claim['claim']} | {value} | {p} | {claim['models']} x {claim['groups']} | "
                     f"{claim['verdict']} |")
    return "\n".join(lines)
