"""Tran et al.'s claims checked on the diagnostics records, and the paper's Figures 2-6 redrawn."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

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


def _spearman(frame: pd.DataFrame, x: str, y: str) -> tuple[float | None, float | None, int]:
    """Spearman's rho pooled over seeds (each seed's points ranked within the seed) and its p-value."""
    xs, ys = [], []
    for _, part in frame.groupby("seed"):
        xs.append(part[x].rank().to_numpy())
        ys.append(part[y].rank().to_numpy())
    if not xs or sum(len(v) for v in xs) < 3:
        return None, None, 0
    result = spearmanr(np.concatenate(xs), np.concatenate(ys))
    rho, p = float(result.statistic), float(result.pvalue)
    return (None if np.isnan(rho) else rho), (None if np.isnan(p) else p), int(sum(len(v) for v in xs))


def claims(records: list[dict]) -> dict:
    frame = group_frame(records)
    out = {}
    for key, (x, y, sign, which, text) in CORRELATIONS.items():
        part = frame[frame.method == "dense"] if which == "dense" else frame
        rho, p, n = _spearman(part, x, y)
        if rho is None:
            verdict = "not measurable"
        elif np.sign(rho) == sign and p is not None and p < 0.05:
            verdict = "holds"
        elif np.sign(rho) == sign:
            verdict = "same direction, not significant"
        else:
            verdict = "does not hold"
        out[key] = {"claim": text, "value": rho, "p_value": p, "points": n, "verdict": verdict}
    bounded = frame.dropna(subset=["bound_ratio"]) if "bound_ratio" in frame else frame.iloc[0:0]
    ratio = float(bounded.bound_ratio.median()) if len(bounded) else None
    out["theorem1_bound_ratio"] = {
        "claim": "Theorem 1: R(a) <= ||g_a|| ||theta_bar - theta*|| + 1/2 lambda_a ||theta_bar - theta*||^2, "
                 "on the one-shot pruned model (before fine-tuning)",
        "value": ratio, "p_value": None, "points": int(len(bounded)),
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
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    _scatter(axes[0], frame[frame.method == "dense"], "size", "grad_norm", "group size vs gradient norm (dense)")
    axes[0].set_xscale("log")
    _scatter(axes[1], frame, "grad_norm", "accuracy", "accuracy vs gradient norm (all models)")
    _scatter(axes[2], frame, "boundary_closeness", "hessian_top", "Hessian top eigenvalue vs boundary closeness")
    _scatter(axes[3], frame, "grad_norm", "hessian_top", "Hessian top eigenvalue vs gradient norm")
    axes[3].legend(fontsize=7, title="group")
    paths.append(save_figure(fig, out_dir / "diagnostics_correlations.png"))

    curve = frame[frame.method.isin(["dense", method])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, column in zip(axes, ("accuracy", "grad_norm", "hessian_top")):
        stats = curve.groupby(["group", "sparsity"], sort=False)[column].agg(["mean", "std"]).reset_index()
        for group, part in stats.groupby("group", sort=False):
            ax.errorbar(part.sparsity, part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, label=group)
        ax.set(title=f"{method}: {column.replace('_', ' ')} per group", xlabel="sparsity")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, title="group")
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
    lines = ["| claim | measured | p | points | verdict |", "|---|---|---|---|---|"]
    for claim in summary["claims"].values():
        value = "n/a" if claim["value"] is None else f"{claim['value']:.3f}"
        p = "" if claim["p_value"] is None else f"{claim['p_value']:.2g}"
        lines.append(f"| {claim['claim']} | {value} | {p} | {claim['points']} | {claim['verdict']} |")
    return "\n".join(lines)
