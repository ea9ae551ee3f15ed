"""The whole `dvc repro` on a tiny config in a temporary copy of the repository."""
import json
import sys

import numpy as np
import pytest
import yaml
from conftest import make_project, sh

TINY = {
    "base": {"seeds": [0, 1], "threads": 1},
    "data": {"imbalance": {"groups": ["8"], "fraction": 0.3}},
    "train": {"epochs": 3, "variants": ["plain", "relaxed"]},
    "prune": {"methods": ["magnitude", "magnitude+fair_both", "bifp_uns", "bifp_str", "bifp_no_fair"],
              "sparsities": [0.5, 0.9]},
    "finetune": {"epochs": 1},
    "diagnose": {"per_group": 32, "iterations": 3},
    "tune": {"trials": 2, "epochs": 1},
    "tradeoff": {"sparsity": 0.9, "sweeps": {"bifp_uns": {"keys": ["prune.bifp.lambda_w", "prune.bifp.lambda_m"],
                                                          "values": [0.0, 1.0]},
                                          "magnitude+fair_aft": {"keys": ["mitigation.tolerance"], "values": [0.05]}}},
}
METHODS = ("magnitude", "magnitude+fair_both", "bifp_uns", "bifp_str", "bifp_no_fair")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("project")
    env = {**make_project(work, TINY), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}  # stages last seconds
    sh(["dvc", "repro"], work, env, timeout=1200)  # about 4 min alone on 2 cores; a safety net, not a benchmark
    return work, env


def test_outputs_exist_for_every_model(project):
    work, _ = project
    names = ("dense", "dense+relaxed", *[f"{m}-{s}" for m in METHODS for s in ("0.5", "0.9")])
    runs = [f"{name}-s{seed}" for seed in (0, 1) for name in names]
    for run in runs:
        assert (work / "predictions" / f"{run}.npz").is_file()
        assert (work / "metrics" / "eval" / f"{run}.json").is_file()
        assert (work / "metrics" / "diagnose" / f"{run}.json").is_file()
    for name in ("summary.csv", "summary.json", "README.md", "figures/group_accuracy_vs_sparsity.png",
                 "figures/fairness_gaps_vs_sparsity.png", "figures/accuracy_vs_sparsity.png",
                 "figures/diagnostics_correlations.png", "figures/diagnostics_vs_sparsity.png",
                 "figures/diagnostics_bound.png"):
        assert (work / "reports" / name).is_file()
    summary = json.loads((work / "reports" / "summary.json").read_text())
    assert set(summary) == set(runs) and "acc/8" in summary["dense-s0"]
    page = (work / "reports" / "README.md").read_text()
    assert "wall time" in page and "Proposition 1" in page


def test_diagnostics_cover_every_group_and_bound_pruned_models(project):
    work, _ = project
    claims = json.loads((work / "metrics" / "diagnose.json").read_text())["claims"]
    assert claims["proposition1_size_vs_grad_norm"]["models"] == 2 and claims["proposition1_size_vs_grad_norm"]["groups"] == 10
    assert claims["accuracy_vs_grad_norm"]["models"] == 24
    record = json.loads((work / "metrics" / "diagnose" / "magnitude+fair_both-0.9-s1.json").read_text())
    assert len(record["groups"]) == 10 and record["parameter_distance"] > 0
    for group in record["groups"]:
        assert group["grad_norm"] > 0 and group["bound"] > 0 and "bound_holds" not in group
        ratio = group["bound"] / group["one_shot_excess_loss"] if group["one_shot_excess_loss"] > 0 else None
        # NaN (no excess loss to bound) is written as null
        assert group["bound_ratio"] is None if ratio is None else group["bound_ratio"] == pytest.approx(ratio)


def test_tune_stage_writes_its_front_and_choice(project):
    work, _ = project
    result = json.loads((work / "reports" / "tune" / "pareto.json").read_text())
    assert result["complete"] == 2 and result["pareto"]
    assert (work / "tune" / "optuna.db").is_file()  # the study persists outside DVC's outputs
    assert "chosen.yaml" in (work / "reports" / "tune" / "README.md").read_text()


def test_bifp_claims_efficiency_and_structured_export(project):
    work, _ = project
    claims = (work / "reports" / "bifp_claims.csv").read_text()
    assert "bifp_uns: accuracy gap no larger than the dense model's" in claims and "bifp_str" in claims
    efficiency = (work / "reports" / "bifp_efficiency.csv").read_text().splitlines()
    assert len(efficiency) == 1 + len(METHODS) * 2  # one row per method and seed at the claims sparsity (0.5)
    assert "removing a component hurts: bifp_no_fair" in claims
    assert (work / "reports" / "figures" / "bifp_efficiency.png").is_file()
    record = json.loads((work / "metrics" / "prune" / "bifp_str-0.9-s0.json").read_text())
    assert record["structured"] and record["params_total"] < 0.2 * record["params_dense"]
    assert [h["steps"] for h in record["history"]] == [record["history"][0]["steps"]]  # one epoch of passes
    evaluated = json.loads((work / "metrics" / "eval" / "bifp_uns-0.5-s0.json").read_text())
    errors = [g["surrogate_error"] for g in evaluated["groups"].values() if g["n"] > 0]
    assert evaluated["fairness"]["surrogate_excess"] == pytest.approx(max(errors) - np.mean(errors), abs=1e-6)


def test_tradeoff_sweep_and_landscape_lines(project):
    work, _ = project
    tradeoff = json.loads((work / "metrics" / "tradeoff.json").read_text())
    assert sorted((p["method"], p["value"], p["seed"]) for p in tradeoff["points"]) == [
        ("bifp_uns", 0.0, 0), ("bifp_uns", 0.0, 1), ("bifp_uns", 1.0, 0), ("bifp_uns", 1.0, 1),
        ("magnitude+fair_aft", 0.05, 0), ("magnitude+fair_aft", 0.05, 1)]
    assert all(0 < p["test_accuracy"] <= 1 and p["test_accuracy_gap"] > 0 for p in tradeoff["points"])
    landscape = json.loads((work / "metrics" / "landscape.json").read_text())
    assert [(line["ablation"], line["seed"]) for line in landscape["lines"]] == [("bifp_no_fair", 0), ("bifp_no_fair", 1)]
    ends = landscape["lines"][0]["points"]
    evaluated = json.loads((work / "metrics" / "eval" / "bifp_uns-0.5-s0.json").read_text())
    assert len(ends) == 11 and abs(ends[0]["accuracy"] - evaluated["accuracy"]) < 1e-9  # alpha 0 is bifp_uns itself
    for figure in ("tradeoff.png", "bifp_landscape.png", "bifp_ablations.png"):
        assert (work / "reports" / "figures" / figure).is_file()
    assert "Figure 5" in (work / "reports" / "README.md").read_text()


def test_eval_metrics_match_predictions(project):
    work, _ = project
    for path in sorted((work / "metrics" / "eval").glob("*.json")):
        record = json.loads(path.read_text())
        with np.load(work / "predictions" / f"{path.stem}.npz") as preds:
            names = [str(n) for n in preds["group_names"]]
            assert set(names) == set(record["groups"])
            for g, name in enumerate(names):
                rows = preds["group"] == g
                assert record["groups"][name]["n"] == int(rows.sum())
                expected = float(np.mean(preds["y_true"][rows] == preds["y_pred"][rows]))
                assert record["groups"][name]["accuracy"] == pytest.approx(expected, abs=1e-12)
        if record["method"] == "magnitude":
            assert record["sparsity_actual"] == pytest.approx(record["sparsity"], abs=1e-3)
            accuracies = [g["accuracy"] for g in record["groups"].values() if g["n"] > 0]
            assert record["fairness"]["accuracy_gap"] == pytest.approx(max(accuracies) - min(accuracies), abs=1e-12)
            drops = [g["accuracy_drop"] for g in record["groups"].values() if g["n"] > 0]
            assert record["fairness"]["degradation_gap"] == pytest.approx(max(drops) - min(drops), abs=1e-12)


def test_nothing_to_do_after_repro_and_param_change_reruns_only_affected(project):
    work, env = project
    # only the validate stage, which runs on every repro (and changes nothing downstream), is listed
    assert sh(["dvc", "status"], work, env).split() == ["validate:", "always", "changed"]
    params = yaml.safe_load((work / "params.yaml").read_text())
    original = yaml.safe_dump(params, sort_keys=False)
    params["finetune"]["epochs"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        # a prune stage depends on its method's params through validate's data/method_params/ (`make status`)
        sh(["dvc", "repro", "validate"], work, env)
        changed = set(json.loads(sh(["dvc", "status", "--json"], work, env)))
    finally:
        (work / "params.yaml").write_text(original)
        sh(["dvc", "repro", "validate"], work, env)
    # tune and tradeoff fine-tune too (tune with tune.epochs when set); both depend on the finetune section.
    assert changed == ({f"prune@{m}-{s}-{seed}" for m in METHODS for s in ("0.5", "0.9") for seed in (0, 1)}
                       | {"tune", "tradeoff", "validate"})


def test_mlflow_has_a_run_per_stage_with_group_metrics_and_reloadable_models(project):
    work, env = project
    import mlflow
    import torch
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fairprune")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_stage = {}
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            by_stage.setdefault(run.data.tags["stage"], []).append(run)
    assert {k: len(v) for k, v in by_stage.items()} == {"prepare": 1, "train": 4, "prune": 20, "evaluate": 1,
                                                        "diagnose": 1, "report": 1, "tune": 1, "tradeoff": 1}
    for run in by_stage["prune"]:
        tags = run.data.tags
        assert tags["method"] in METHODS and tags["dvc_stage"].startswith(f"prune@{tags['method']}-")
        assert {"seed", "sparsity", "git_commit", "arm"} <= set(tags)
    fair = [r for r in by_stage["prune"] if r.data.tags["arm"] == "fair_both"]
    history = MlflowClient(uri).get_metric_history(fair[0].info.run_id, "multiplier/loss/8")
    assert history and all(np.isfinite(m.value) for m in history)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    evaluated = [r for r in nested if r.data.tags["stage"] == "evaluate"]
    assert len(evaluated) == 24 and all("acc/8" in r.data.metrics for r in evaluated)
    for r in evaluated:  # the compare view can group by what defines each model, and the data is named
        assert {"method", "sparsity", "seed", "split", "arm"} <= set(r.data.params)
        assert r.inputs.dataset_inputs and r.inputs.dataset_inputs[0].dataset.name == "digits:class/class"
        assert r.data.tags["model_id"] != "None"
    arms = {r.data.params["method"]: r.data.params["arm"] for r in evaluated}
    assert arms["magnitude"] == "no_mitigation" and arms["magnitude+fair_both"] == "fair_both"
    assert arms["bifp_uns"] == "fair_method" and arms["dense+relaxed"] == "relaxed"
    bifp = next(r for r in evaluated if r.data.params["method"] == "bifp_uns")
    assert "prune.bifp.lambda_w" in bifp.data.params
    assert {r.data.tags["arm"] for r in by_stage["prune"] if r.data.tags["method"] == "bifp_uns"} == {"fair_method"}
    diagnosed = [r for r in nested if r.data.tags["stage"] == "diagnose"]
    assert len(diagnosed) == 24 and all("grad_norm/8" in r.data.metrics for r in diagnosed)
    train = by_stage["train"][0]
    assert "val_acc/8" in train.data.metrics and "train.lr" in train.data.params
    assert any(k.startswith("system/") for k in train.data.metrics)  # CPU/memory (GPU on a GPU runner)
    # the report registered every evaluated model and set the alias, or logged why none qualifies
    assert len(client.search_model_versions("name = 'fairprune-digits-class'")) == 24
    champion = by_stage["report"][0].data.tags["champion"]
    if champion.startswith("none: "):
        assert "no pruned configuration has an accuracy gap" in champion
    else:
        version = client.get_model_version_by_alias("fairprune-digits-class", "champion")
        assert version.tags["run"] == champion
    mlflow.set_tracking_uri(uri)
    run = next(r for r in by_stage["prune"] if r.data.tags["method"] == "magnitude")
    evaluation = next(r for r in evaluated if r.data.params["method"] == "magnitude")
    model = mlflow.pytorch.load_model(f"models:/{evaluation.data.tags['model_id']}")
    assert client.get_logged_model(evaluation.data.tags["model_id"]).name.startswith("magnitude-")
    from fairprune.models import Classifier
    assert isinstance(model, Classifier)
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    assert zeros > 0
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_per_epoch_curves_are_dvc_plots_on_a_page_that_opens_offline(project):
    work, env = project
    curve = (work / "metrics" / "curves" / "train" / "plain-s0.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_worst_group_acc"]
    assert [row.split("\t")[0] for row in curve[1:]] == ["1", "2", "3"]
    assert all(float(row.split("\t")[5]) <= float(row.split("\t")[4]) for row in curve[1:])  # worst <= overall
    assert len(list((work / "metrics" / "curves" / "prune").glob("*.tsv"))) == 2 * 2 * len(METHODS)
    sh([sys.executable, "-m", "fairprune.plots"], work, env, timeout=300)
    page = (work / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page  # the renderer is in the page, not on a CDN
    for label in ("dense training epoch", "fine-tuning epoch after pruning", "best minus worst group"):
        assert label in page
