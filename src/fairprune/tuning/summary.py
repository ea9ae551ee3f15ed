"""What a finished study gives the user: the Pareto front, one chosen trial under a stated rule,
the chosen values as a params override, and a plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from fairprune.config import Params
from fairprune.report import markdown_table, plt, save_figure
from fairprune.tuning.study import FAIL_REASON, SURPLUS


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, gap): a is no worse in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def feasible(trial: FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def choice_rule(params: Params) -> str:
    tune = params.tune
    if tune.gap_budget is not None:
        return f"the most accurate trial with validation {tune.gap} <= {tune.gap_budget} (tune.gap_budget)"
    return (f"the Pareto trial with the smallest validation {tune.gap} among those within "
            f"{tune.max_accuracy_drop} of the best validation accuracy (tune.max_accuracy_drop)")


def choose(study: optuna.Study, params: Params) -> FrozenTrial | None:
    front = study.best_trials  # feasible trials only when a budget is set
    if not front:
        return None
    if params.tune.gap_budget is not None:
        return max(front, key=lambda t: (t.values[0], -t.values[1]))
    best = max(t.values[0] for t in front)
    near = [t for t in front if t.values[0] >= best - params.tune.max_accuracy_drop]
    return min(near, key=lambda t: (t.values[1], -t.values[0]))


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    row = {"number": trial.number, "state": trial.state.name, "params": trial.params}
    if trial.values:
        row.update(val_accuracy=trial.values[0], val_gap=trial.values[1], feasible=feasible(trial))
    for key in (FAIL_REASON, SURPLUS, "mlflow_run_id", "train_s"):
        if key in trial.user_attrs:
            row[key] = trial.user_attrs[key]
    return row


def write_override(path: Path, nested: dict, header: str) -> None:
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(nested, sort_keys=True))


def _dotted(nested: dict, prefix: str = "") -> list[tuple[str, Any]]:
    pairs = []
    for key, value in nested.items():
        pairs += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return pairs


def exp_run_command(nested: dict) -> str:
    return "dvc exp run " + " ".join(f"-S {key}={value}" for key, value in _dotted(nested))


def pareto_figure(study: optuna.Study, front: list[FrozenTrial], chosen: FrozenTrial | None, params: Params,
                  path: Path) -> Path:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([t.values[1] for t in complete], [t.values[0] for t in complete], c="0.7", label="trials")
    ordered = sorted(front, key=lambda t: t.values[1])
    ax.step([t.values[1] for t in ordered], [t.values[0] for t in ordered], where="post", c="C0")
    ax.scatter([t.values[1] for t in ordered], [t.values[0] for t in ordered], c="C0", label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen.values[1]], [chosen.values[0]], marker="*", s=250, c="C3", label=f"chosen (#{chosen.number})")
    if params.tune.gap_budget is not None:
        ax.axvline(params.tune.gap_budget, ls="--", c="0.4", label="gap budget")
    ax.set_xlabel(f"validation {params.tune.gap} (lower is fairer)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{params.tune.method} at {params.tune.sparsity:.0%} sparsity: {len(complete)} trials")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def markdown_page(summary: dict) -> str:
    chosen, test, default = summary.get("chosen"), summary.get("chosen_test"), summary.get("default_test")
    lines = [f"# Tuning: {summary['method']} at sparsity {summary['sparsity']}", "",
             f"Study `{summary['study']}` in `{summary['storage']}`: {summary['complete']} complete, "
             f"{summary['failed']} failed (own reason), {summary['surplus']} surplus, {summary['retried']} "
             f"interrupted/stale and retried. Objectives on the validation split: maximise accuracy, "
             f"minimise {summary['gap']}.", "", "![Pareto front](pareto.png)", "", "## Pareto front", ""]
    rows = [{"trial": r["number"], "val accuracy": r["val_accuracy"], f"val {summary['gap']}": r["val_gap"],
             **r["params"]} for r in summary["pareto"]]
    lines.append(markdown_table(pd.DataFrame(rows), ".4g") if rows else "(empty: no feasible trial)")
    lines += ["", "## Chosen", "", f"Rule: {summary['rule']}.", ""]
    if chosen:
        lines += [f"Trial {chosen['number']}: {chosen['params']}", "",
                  f"Apply to the main pipeline: `.venv/bin/fairprune-params apply reports/tune/chosen.yaml && "
                  f"dvc repro`, or `{summary['dvc_exp_run']}`.", ""]
    if test:
        gap = summary["gap"]
        rows = [{"configuration": "chosen", "split": "validation (trial)", "accuracy": chosen["val_accuracy"],
                 gap: chosen["val_gap"]}]
        for name, scores in (("chosen", test), ("untuned params.yaml", default)):
            for split in ("val", "test"):
                rows.append({"configuration": name, "split": {"val": "validation", "test": "test (once)"}[split],
                             "accuracy": scores[f"{split}_accuracy"], gap: scores[f"{split}_{gap}"]})
        lines.append(markdown_table(pd.DataFrame(rows)))
    return "\n".join(lines) + "\n"
