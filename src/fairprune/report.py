"""The comparison report: a summary table, figures and a Markdown page from the eval metrics."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fairprune.config import split_arm  # noqa: E402

GAPS = ("accuracy_gap", "excess_loss_gap", "degradation_gap", "worst_excess_drop")
SCALARS = ("run", "method", "sparsity", "seed", "split", "sparsity_actual", "params_total", "params_nonzero",
           "accuracy", "loss")


def summary_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {k: r[k] for k in SCALARS}
        row.update(r["fairness"])
        row.update({k: v for k, v in r.get("cost", {}).items() if v is not None})
        row.update({f"acc/{g}": v["accuracy"] for g, v in r["groups"].items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_pruned"] = ~table.method.str.startswith("dense")
    table = table.sort_values(["_pruned", "method", "sparsity", "seed"], kind="stable")
    return table.drop(columns="_pruned").reset_index(drop=True)


def pruned_methods(table: pd.DataFrame) -> list[str]:
    """Every pruning method (with its mitigation arm), without the dense models and their variants."""
    return [m for m in table.method.unique() if not m.startswith("dense")]


def _by_sparsity(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and std over seeds per method and sparsity; each method's curve starts at the dense model."""
    dense = table[table.method == "dense"]
    frames = []
    for method in pruned_methods(table):
        frames.append(pd.concat([dense.assign(method=method), table[table.method == method]]))
    curves = pd.concat(frames) if frames else dense
    return curves.groupby(["method", "sparsity"])[column].agg(["mean", "std"]).reset_index()


MARKERS, LINESTYLES = "osD^vPX*<>", ("-", "--", ":", "-.")


def _line(ax, frame: pd.DataFrame, label: str, index: int = 0, of: int = 1, spread: float = 0.0) -> None:
    """One curve, mean +- std over seeds. Series `index` (of `of`) gets its own marker and line style and,
    with `spread`, a small sideways shift so that overlapping series stay visible."""
    shift = (index - (of - 1) / 2) * spread
    ax.errorbar(frame["sparsity"] + shift, frame["mean"], yerr=frame["std"].fillna(0), capsize=3, label=label,
                marker=MARKERS[index % len(MARKERS)], linestyle=LINESTYLES[(index // len(MARKERS)) % len(LINESTYLES)],
                markersize=4, alpha=0.85)


def _bars_note(fig, table: pd.DataFrame) -> None:
    seeds = table.groupby(["method", "sparsity"]).size().max()
    fig.text(0.01, 0.005, f"mean over {seeds} seed(s), bars ± 1 std over seeds; evaluation split",
             fontsize=7, color="0.35")


def figures(table: pd.DataFrame, group_names: list[str], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = pruned_methods(table) or ["dense"]

    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for i, g in enumerate(group_names):
            curve = _by_sparsity(table, f"acc/{g}")
            _line(ax, curve[curve.method == method], g, i, len(group_names), spread=0.003)
        ax.set(title=f"{method}: accuracy per group", xlabel="sparsity", ylabel="accuracy of the group")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2, title="group")
    _bars_note(fig, table)
    paths.append(save_figure(fig, out_dir / "group_accuracy_vs_sparsity.png"))

    gaps = [g for g in (*GAPS, "demographic_parity_gap", "equalized_odds_gap") if g in table]
    fig, axes = plt.subplots(1, len(gaps), figsize=(4.5 * len(gaps), 4), squeeze=False)
    for ax, gap in zip(axes[0], gaps):
        curve = _by_sparsity(table, gap)
        for i, method in enumerate(methods):
            _line(ax, curve[curve.method == method], method, i, len(methods), spread=0.003)
        ax.set(title=gap, xlabel="sparsity", ylabel=f"{gap} (0 = equal groups)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _bars_note(fig, table)
    paths.append(save_figure(fig, out_dir / "fairness_gaps_vs_sparsity.png"))

    # masks leave the compute of unstructured pruning unchanged: a flat line at 1 says nothing
    costs = [c for c in ("mac_reduction", "speedup") if c in table and (table[c].dropna() > 1.001).any()]
    if costs:
        fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
        for ax, cost in zip(axes[0], costs):
            curve = _by_sparsity(table.assign(**{cost: table[cost].fillna(1.0)}), cost)
            for i, method in enumerate(methods):
                _line(ax, curve[curve.method == method], method, i)
            ax.set(title=f"{cost} vs dense" + (" (CPU, structured only)" if cost == "speedup" else ""),
                   xlabel="sparsity", ylabel=f"{cost} (x the dense model)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        _bars_note(fig, table)
        paths.append(save_figure(fig, out_dir / "size_speed_vs_sparsity.png"))

    fig, ax = plt.subplots(figsize=(5, 4))
    curve = _by_sparsity(table, "accuracy")
    for i, method in enumerate(methods):
        _line(ax, curve[curve.method == method], method, i, len(methods), spread=0.003)
    ax.set(title="overall accuracy", xlabel="sparsity", ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _bars_note(fig, table)
    paths.append(save_figure(fig, out_dir / "accuracy_vs_sparsity.png"))
    return paths


# Tran et al. Table 2 (UTKFace, ethnicity label, age groups, 2-conv 3-linear CNN): (accuracy, violation).
TRAN_TABLE2 = {
    "no_mitigation": {0.3: (.546, .179), 0.5: (.545, .186), 0.7: (.529, .152), 0.9: (.559, .134)},
    "fair_bf": {0.3: (.539, .189), 0.5: (.557, .190), 0.7: (.529, .174), 0.9: (.540, .238)},
    "fair_aft": {0.3: (.538, .172), 0.5: (.532, .161), 0.7: (.497, .163), 0.9: (.472, .050)},
    "fair_both": {0.3: (.525, .170), 0.5: (.541, .144), 0.7: (.508, .156), 0.9: (.484, .073)},
}
REFERENCES = {"tran_table2": TRAN_TABLE2}


def arms_table(table: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Tran et al.'s arms side by side: accuracy and fairness violation (max - min group accuracy)
    per sparsity, mean +- std over seeds, next to a paper's numbers when a reference is named."""
    pruned = table[~table.method.str.startswith("dense")]
    parts = [split_arm(m) for m in pruned.method]
    pruned = pruned.assign(base=[b for b, _ in parts], arm=[a or "no_mitigation" for _, a in parts])
    if pruned.arm.nunique() < 2:
        return pd.DataFrame()
    rows = []
    for (base, arm, sparsity), part in pruned.groupby(["base", "arm", "sparsity"], sort=False):
        row = {"method": base, "arm": arm, "sparsity": sparsity, "seeds": len(part),
               "accuracy": f"{part.accuracy.mean():.3f} ± {part.accuracy.std(ddof=1) if len(part) > 1 else 0:.3f}",
               "violation": f"{part.accuracy_gap.mean():.3f} ± "
                            f"{part.accuracy_gap.std(ddof=1) if len(part) > 1 else 0:.3f}"}
        paper = REFERENCES.get(reference or "", {}).get(arm, {}).get(round(float(sparsity), 2))
        if reference:
            row["paper accuracy"], row["paper violation"] = paper if paper else ("", "")
        rows.append(row)
    return pd.DataFrame(rows)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.03, 1, 1))  # room for the note under the axes
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_page(table: pd.DataFrame, figure_paths: list[Path], timings: pd.DataFrame, data_info: dict,
                  extra_sections: list[str] = ()) -> str:
    columns = ["accuracy", *[g for g in GAPS if g in table], "sparsity_actual",
               *[c for c in ("mac_reduction", "speedup") if c in table]]
    grouped = table.groupby(["method", "sparsity"], sort=False)
    aggregate = grouped[columns].mean()
    spread = grouped[["accuracy", "accuracy_gap"]].std().fillna(0.0).add_suffix("_std")
    aggregate = aggregate.join(spread)[["accuracy", "accuracy_std", "accuracy_gap", "accuracy_gap_std",
                                        *columns[2:]]].reset_index()
    parts = [
        "# fairprune report",
        f"Dataset `{data_info.get('dataset')}`, target `{data_info.get('target')}`, group `{data_info.get('group')}`; "
        f"split `{table.split.iloc[0]}`; seeds {sorted(table.seed.unique().tolist())}.",
        "## Accuracy and fairness gaps (mean over seeds; _std = standard deviation across seeds)",
        markdown_table(aggregate),
        "## Per-group accuracy",
        markdown_table(table[["run", *[c for c in table.columns if c.startswith("acc/")]]]),
        "## Figures",
        *[f"![{p.stem}](figures/{p.name})" for p in figure_paths],
        *extra_sections,
        "## Stage wall time (seconds)",
        markdown_table(timings, ".1f"),
        "Gaps are defined in the project README (metrics contract): accuracy_gap = max - min group accuracy; "
        "excess_loss_gap = max - min of R(a) = J_pruned(a) - J_dense(a); degradation_gap = max - min of the "
        "group accuracy drops; worst_excess_drop = max over groups of (group drop - overall drop).",
    ]
    return "\n\n".join(parts) + "\n"


# Tables the report writes only when they apply: removed first, so that none is left from an earlier run.
OPTIONAL_TABLES = ("arms.csv", "dense_variants.csv", "bifp_claims.csv", "bifp_efficiency.csv", "tradeoff.csv")


def remove_optional_tables(out: Path) -> None:
    for name in OPTIONAL_TABLES:
        (out / name).unlink(missing_ok=True)


def tuning_section(record: dict | None, current_digest: str) -> list[str]:
    """The tune stage's result (its pareto.json) when it was made from the current params and data;
    otherwise a line saying that reports/tune/ belongs to another run."""
    if record is None:
        return []
    if record.get("inputs_digest") != current_digest:
        return ["## Tuning", "When this report was made, `reports/tune/` held a study of other params or data, "
                "not this run's (plain `dvc repro` runs `tune` before `report`; `make run CONFIG=...` leaves it "
                "out): `dvc repro tune` redoes it for the current ones."]
    chosen = record.get("chosen")
    return ["## Tuning", f"{record['method']} at sparsity {record['sparsity']:g}, study `{record['study']}`: "
            + (f"trial {chosen['number']} chosen on validation" if chosen else "no trial met the rule")
            + "; [reports/tune/README.md](tune/README.md)."]
