"""Stage `report`: the summary table, figures and reports/README.md, also logged to MLflow."""

import pandas as pd

from fairprune import artifacts, registry, tracking
from fairprune import report_bifp, report_diagnostics
from fairprune.config import MITIGATED_DENSE_ARMS, split_arm
from fairprune.report import (arms_table, figures, markdown_page, markdown_table, remove_optional_tables,
                              summary_table, tuning_section)
from fairprune.stage import run


def stage_timings(params) -> pd.DataFrame:
    rows = [("prepare", artifacts.read_json(artifacts.PREPARE_METRICS)["wall_s"])]
    rows += [(f"train@{s}-{v}", artifacts.read_json(artifacts.train_metrics(s, v))["wall_s"])
             for s in params.base.seeds for v in params.train.variants]
    for s in params.base.seeds:
        for m in params.prune.methods:
            for p in params.prune.sparsities:
                record = artifacts.read_json(artifacts.prune_metrics(m, p, s))
                rows.append((f"prune@{m}-{artifacts.sparsity_label(p)}-{s}", record["wall_s"]))
    rows.append(("evaluate", artifacts.read_json(artifacts.EVALUATE_METRICS)["wall_s"]))
    rows.append(("diagnose", artifacts.read_json(artifacts.DIAGNOSE_METRICS)["wall_s"]))
    frame = pd.DataFrame(rows, columns=["stage", "wall_s"])
    return pd.concat([frame, pd.DataFrame([("total", frame.wall_s.sum())], columns=frame.columns)])


def dense_variants_table(params, table: pd.DataFrame) -> pd.DataFrame:
    """Tran et al.'s Table 1: plain versus relaxed versus full dense training, per-group and overall
    accuracy (mean over seeds) and training wall time."""
    rows = []
    for variant in params.train.variants:
        part = table[table.method == artifacts.dense_label(variant)]
        wall = [artifacts.read_json(artifacts.train_metrics(s, variant))["wall_s"] for s in params.base.seeds]
        rows.append({"variant": variant, "accuracy": part.accuracy.mean(), "accuracy_std": part.accuracy.std(),
                     "accuracy_gap": part.accuracy_gap.mean(), "train_wall_s": sum(wall) / len(wall),
                     **{c: part[c].mean() for c in part.columns if c.startswith("acc/")}})
    frame = pd.DataFrame(rows)
    frame["wall_vs_plain"] = frame.train_wall_s / frame.train_wall_s.iloc[0]
    return frame


def bifp_sections(params, table: pd.DataFrame, group_names: list[str], out) -> tuple[list[str], list]:
    """BiFP's claim table, efficiency (Figure 6) and ablations (Figure 7) when a BiFP method ran."""
    sections, figures = tradeoff_section(params, table, out)
    if not any(m in report_bifp.BIFP for m in params.prune.methods):
        return sections, figures
    sparsity = report_bifp.nearest(params.prune.sparsities, params.report.claims_sparsity)
    dense = {}
    for seed in params.base.seeds:
        dense[(seed, "plain")] = artifacts.read_json(artifacts.train_metrics(seed, "plain"))
        if any(split_arm(m)[1] in MITIGATED_DENSE_ARMS for m in params.prune.methods):
            dense[(seed, "mitigated")] = artifacts.read_json(artifacts.train_metrics(seed, params.mitigation.variant))
    records = [artifacts.read_json(artifacts.prune_metrics(m, sparsity, s))
               for m in params.prune.methods for s in params.base.seeds]
    efficiency, curves = report_bifp.efficiency_table(records, dense, group_names, sparsity, params.report.target_gap,
                                                      params.report.target_accuracy_drop)
    claims = report_bifp.claims_table(table, sparsity, params.prune.bifp.tolerance, efficiency)
    claims.to_csv(out / "bifp_claims.csv", index=False)
    efficiency.to_csv(out / "bifp_efficiency.csv", index=False)
    landscape = artifacts.read_json(artifacts.LANDSCAPE_METRICS)
    efficiency_figure = report_bifp.efficiency_figure(curves, efficiency, out / "figures" / "bifp_efficiency.png")
    ablation_figures = [f for f in (report_bifp.ablation_figure(table, sparsity, out / "figures" / "bifp_ablations.png"),
                                    report_bifp.landscape_figure(landscape, out / "figures" / "bifp_landscape.png"))
                        if f is not None]
    figures += [f for f in (efficiency_figure, *ablation_figures) if f is not None]
    sections += [f"## BiFP: the paper's claims at sparsity {sparsity:g} (evaluation split)",
                "mean ± std over seeds; paired p: two-sided paired t-test across seeds of the two columns "
                f"(significant below {report_bifp.SIGNIFICANCE}); n/a with fewer than two seeds",
                markdown_table(claims),
                "## BiFP: passes and wall time to the fairness target (Figure 6)",
                f"target on validation: accuracy within {params.report.target_accuracy_drop} of the plain dense "
                "model's and accuracy gap at most " + ("the dense model's" if params.report.target_gap is None
                                                       else str(params.report.target_gap))
                + "; two-stage fair_then_prune is charged its fair dense training; epoch granularity",
                markdown_table(report_bifp.efficiency_summary(efficiency), ".1f"),
                *([f"![{efficiency_figure.stem}](figures/{efficiency_figure.name})"] if efficiency_figure else [])]
    if ablation_figures:  # only when an ablation (bifp_no_*) is in prune.methods
        sections += ["## BiFP: ablations",
                     "Ablations (Figure 7) and the straight line from bifp_uns to each ablation (Figure 8: "
                     "alpha = 0 is BiFP, 1 the ablation; masks folded into the weights)",
                     *[f"![{p.stem}](figures/{p.name})" for p in ablation_figures]]
    return sections, figures


def tradeoff_section(params, table: pd.DataFrame, out) -> tuple[list[str], list]:
    """BiFP Figure 5 from the tradeoff stage, when it swept anything."""
    tradeoff = artifacts.read_json(artifacts.TRADEOFF_METRICS)
    summary = report_bifp.tradeoff_table(tradeoff)
    if not len(summary):
        return [], []
    summary.to_csv(out / "tradeoff.csv", index=False)
    figure = report_bifp.tradeoff_figure(summary, tradeoff, table, out / "figures" / "tradeoff.png")
    sweeps = "; ".join(f"{m}: {', '.join(s.keys)}" for m, s in params.tradeoff.sweeps.items())
    return [f"## Accuracy-fairness trade-off at sparsity {tradeoff['sparsity']:g} (BiFP Figure 5)",
            f"swept: {sweeps}; mean over seeds {params.base.seeds}; lines join each method's Pareto front "
            "(evaluation split); crosses: the matrix's other methods at this sparsity",
            markdown_table(summary), f"![{figure.stem}](figures/{figure.name})"], [figure]


def registry_section(params, records: list[dict]) -> tuple[list[str], str]:
    """Register the evaluated models, set the alias `champion` (fairprune.registry); the report's section
    and the report run's tag."""
    several = len(params.base.seeds) > 1
    models = {}
    for label, sparsity, seed, _ in artifacts.model_jobs(params):
        path = (artifacts.train_metrics(seed, split_arm(label)[1] or "plain") if label.startswith("dense")
                else artifacts.prune_metrics(label, sparsity, seed))
        model_id = artifacts.read_json(path).get("mlflow_model_id") if path.exists() else None
        if model_id:
            models[artifacts.run_name(label, sparsity, seed, several)] = model_id
    rows, target = registry.candidates(records, params.report.champion_gap)
    best = registry.champion(rows)
    best_run = best and artifacts.run_name(best.method, best.sparsity, params.base.seeds[0], several)
    name = f"{params.base.experiment}-{params.data.dataset}-{params.data.target}"
    version = registry.register(name, models, best_run)
    bound = (f"accuracy gap's 95 % upper bound (evaluation split, seeds and samples resampled) at most "
             f"{target:.4f}" + (" (the dense model's gap)" if params.report.champion_gap is None
                                else " (report.champion_gap)"))
    rule = f"the most accurate pruned configuration with an {bound}"
    if best is None:
        closest = min(rows, key=lambda c: c.gap_upper) if rows else None
        reason = (f"none qualifies: no pruned configuration has an {bound}"
                  + (f"; the closest, {closest.method} at {closest.sparsity:g}, has {closest.gap_upper:.4f}"
                     if closest else ""))
        return ["## Model Registry", f"{len(models)} models registered as `{name}`; alias `champion`: {reason}."], \
            "none: " + reason
    low, high = best.accuracy_interval
    return ["## Model Registry", f"{len(models)} models registered as `{name}`. Alias `champion` -> version "
            f"{version} (`{best_run}`): {best.method} at sparsity {best.sparsity:g}, accuracy {best.accuracy:.4f} "
            f"[{low:.4f}, {high:.4f}], accuracy gap {best.gap:.4f} (upper bound {best.gap_upper:.4f}); rule: {rule}. "
            f"Load it with `mlflow.pytorch.load_model('models:/{name}@champion')`."], best_run


def main(params, args, timer):
    several = len(params.base.seeds) > 1
    names = [artifacts.run_name(label, p, s, several) for label, p, s, _ in artifacts.model_jobs(params)]
    records = [artifacts.read_json(artifacts.EVAL_DIR / f"{n}.json") for n in names]
    table = summary_table(records)
    out = artifacts.REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    remove_optional_tables(out)
    table.to_csv(out / "summary.csv", index=False)
    artifacts.write_json(out / "summary.json", {row["run"]: {k: v for k, v in row.items() if k != "run"}
                                               for row in table.to_dict(orient="records")})
    group_names = list(records[0]["groups"])
    figure_paths = figures(table, group_names, out / "figures")
    diagnostics = [artifacts.read_json(artifacts.DIAGNOSE_DIR / f"{n}.json") for n in names]
    diagnose_summary = artifacts.read_json(artifacts.DIAGNOSE_METRICS)
    diagnostic_figures = report_diagnostics.figures(diagnostics, params.prune.methods[0], out / "figures")
    timings = stage_timings(params)
    data_info = artifacts.read_json(artifacts.PREPARE_METRICS)["info"]
    why = ["## Why: Tran et al.'s diagnostics (split `%s`)" % params.diagnose.split,
           "Spearman's rho over (model, group) points, ranked within each seed; Theorem 1: share of "
           "(pruned model, group) pairs whose measured excessive loss is within the bound.",
           report_diagnostics.claims_markdown(diagnose_summary),
           *[f"![{p.stem}](figures/{p.name})" for p in diagnostic_figures]]
    sections = []
    arms = arms_table(table, params.report.reference)
    if len(arms):
        arms.to_csv(out / "arms.csv", index=False)
        sections += ["## Mitigation arms (Tran et al. Table 2 layout)",
                     "violation = max - min group accuracy; mean ± std over seeds"
                     + (f"; paper numbers from {params.report.reference}" if params.report.reference else ""),
                     markdown_table(arms)]
    if len(params.train.variants) > 1:
        variants = dense_variants_table(params, table)
        variants.to_csv(out / "dense_variants.csv", index=False)
        sections += ["## Dense training: plain versus mitigated (Tran et al. Table 1 layout)",
                     "accuracy on the evaluation split, mean over seeds; wall time of the train stage",
                     markdown_table(variants)]
    bifp, bifp_figures = bifp_sections(params, table, group_names, out)
    sections += bifp
    tune_record = artifacts.TUNE_DIR / "pareto.json"
    sections += tuning_section(artifacts.read_json(tune_record) if tune_record.exists() else None,
                               artifacts.tune_inputs_digest(params))
    with tracking.stage_run(params.base, "report", "report", {"seeds": params.base.seeds,
                                                              "methods": params.prune.methods,
                                                              "sparsities": params.prune.sparsities}):
        import mlflow
        registered, champion = registry_section(params, records)
        mlflow.set_tag("champion", champion)
        (out / "README.md").write_text(markdown_page(table, figure_paths, timings, data_info,
                                                     sections + registered + why))
        mlflow.log_table(table, "summary_table.json")
        mlflow.log_artifact(str(out / "summary.csv"))
        mlflow.log_artifact(str(out / "README.md"))
        for path in figure_paths + diagnostic_figures + bifp_figures:
            mlflow.log_artifact(str(path), "figures")
    print(timings.to_string(index=False))
    print(f"report written to {out}/README.md ({len(table)} models) in {timer.seconds:.1f}s")


if __name__ == "__main__":
    run(main)
