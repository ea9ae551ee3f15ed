"""Stage `evaluate`: one pass per model (dense and every pruned one) over the evaluation split,
writing per-sample predictions and the per-group metrics and fairness gaps of each model."""
import torch

from fairprune import artifacts, models, tracking
from fairprune.config import arm_label, split_arm
from fairprune.data import load_prepared
from fairprune.device import resolve
from fairprune.errors import DataError
from fairprune.evaluation import evaluate_split
from fairprune.fairness import fairness_gaps, undefined_gaps
from fairprune.fairness.surrogate import surrogate_excess
from fairprune.pruning import measure_sparsity
from fairprune.statistics import pack_correct
from fairprune.stage import run


COST_KEYS = ("macs", "mac_reduction", "latency_ms", "speedup")


def metrics_record(run_name, method, sparsity, seed, split, model, preds, dense_stats, exclude_output_layer,
                   surrogate: str, prune_record=None):
    stats = preds.stats()
    dense_stats = dense_stats or stats
    size = measure_sparsity(model, exclude_output_layer)
    if prune_record and prune_record.get("structured"):
        size["sparsity_actual"] = prune_record["sparsity_actual"]  # fraction of parameters removed
    groups = {}
    for g, name in enumerate(preds.group_names):
        groups[name] = {
            "n": int(stats.n[g]), "accuracy": float(stats.accuracy[g]), "loss": float(stats.loss[g]),
            "accuracy_drop": float(dense_stats.accuracy[g] - stats.accuracy[g]),
            "excess_loss": float(stats.loss[g] - dense_stats.loss[g]),
        }
    errors, excess = surrogate_excess(torch.from_numpy(preds.margin), torch.from_numpy(preds.group),
                                      len(preds.group_names), surrogate)
    for name, error in zip(preds.group_names, errors.tolist()):
        groups[name]["surrogate_error"] = error
    correct = preds.y_true == preds.y_pred  # per sample, in split order within each group: paired bootstrap
    return {
        "run": run_name, "method": method, "sparsity": sparsity, "seed": seed, "split": split,
        "sparsity_actual": size["sparsity_actual"], "params_total": size["params_total"],
        "params_nonzero": size["params_nonzero"], "accuracy": stats.overall_accuracy, "loss": stats.overall_loss,
        "groups": groups, "fairness": {**fairness_gaps(stats, dense_stats), "surrogate_excess": excess},
        "fairness_undefined": undefined_gaps(stats, dense_stats),
        "cost": {key: (prune_record or {}).get(key) for key in COST_KEYS},
        "correct": {name: pack_correct(correct[preds.group == g]) for g, name in enumerate(preds.group_names)},
    }


def run_params(params, method: str, sparsity: float, seed: int, split: str) -> dict:
    """What defines an evaluated model, for MLflow's compare and chart views: method, arm, sparsity,
    seed, split, and the settings of the method and of its fair arm."""
    name, arm = split_arm(method)
    settings = {"method": method, "base_method": name, "arm": arm_label(method), "sparsity": sparsity, "seed": seed,
                "split": split, "data.dataset": params.data.dataset, "model.arch": params.model.arch}
    own = next((section for prefix, section in (("bifp", "bifp"), ("ceag", "ceag"), ("equal_loss", "ceag"),
                                                 ("fairgrape", "fairgrape")) if name.startswith(prefix)), None)
    if own:
        settings.update(tracking.flatten(getattr(params.prune, own).model_dump(), f"prune.{own}."))
    if arm or name.startswith("dense+"):
        settings.update(tracking.flatten(params.mitigation.model_dump(), "mitigation."))
    if method != "dense" and not name.startswith("dense"):
        settings.update(tracking.flatten(params.finetune.model_dump(), "finetune."))
    return settings


def main(params, args, timer):
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    split, several = params.evaluate.split, len(params.base.seeds) > 1
    jobs = artifacts.model_jobs(params)
    missing = [str(path) for *_, path in jobs if not path.exists()]
    if missing:
        raise DataError(f"models missing: {missing[:3]}...; run `dvc repro` so the train and prune stages run first")

    records, dense_stats = [], {}
    with tracking.stage_run(params.base, "evaluate", "evaluate", {"evaluate": params.evaluate.model_dump()}):
        import mlflow
        for method, sparsity, seed, path in jobs:
            name = artifacts.run_name(method, sparsity, seed, several)
            model, extra = models.load(path)
            # latency, speed-up and the MLflow model id change on every run: they live in the stage's metrics
            # file, not in the model file DVC hashes
            metrics_file = (artifacts.train_metrics(seed, split_arm(method)[1] or "plain")
                            if method.startswith("dense") else artifacts.prune_metrics(method, sparsity, seed))
            stage_metrics = artifacts.read_json(metrics_file) if metrics_file.exists() else {}
            preds = evaluate_split(model, data, split, params.evaluate.batch_size, device)
            if method == "dense":
                dense_stats[seed] = preds.stats()
            record = metrics_record(name, method, sparsity, seed, split, model, preds,
                                    dense_stats[seed], params.prune.exclude_output_layer, params.prune.bifp.surrogate,
                                    {**(extra.get("record") or {}), **stage_metrics})
            artifacts.PREDICTIONS_DIR.mkdir(parents=True, exist_ok=True)
            preds.save(artifacts.PREDICTIONS_DIR / f"{name}.npz")
            artifacts.write_json(artifacts.EVAL_DIR / f"{name}.json", record)
            artifacts.write_json(artifacts.MODEL_METRICS_DIR / f"{name}.json", artifacts.model_metrics(record))
            records.append(record)
            model_id = stage_metrics.get("mlflow_model_id")
            with mlflow.start_run(run_name=name, nested=True,
                                  tags={"stage": "evaluate", "method": record["method"], "sparsity": str(sparsity),
                                        "seed": str(seed), "split": split, "model_id": str(model_id)}):
                mlflow.log_params({tracking.metric_name(k): str(v)[:6000]
                                   for k, v in run_params(params, method, sparsity, seed, split).items()})
                tracking.log_dataset(data, artifacts.PREPARED, "evaluation")
                mlflow.log_table({"group": list(record["groups"]),
                                  **{key: [g[key] for g in record["groups"].values()]
                                     for key in ("n", "accuracy", "accuracy_drop", "loss", "excess_loss")}},
                                 artifact_file="per_group.json")
                tracking.log_metrics({"accuracy": record["accuracy"], "loss": record["loss"],
                                      "sparsity_actual": record["sparsity_actual"], **record["fairness"],
                                      **{f"acc/{g}": v["accuracy"] for g, v in record["groups"].items()},
                                      **{f"loss/{g}": v["loss"] for g, v in record["groups"].items()}},
                                     model_id=model_id)
            print(f"{name:>24}: accuracy {record['accuracy']:.4f}  accuracy_gap "
                  f"{record['fairness']['accuracy_gap']:.4f}  sparsity {record['sparsity_actual']:.3f}")
        artifacts.write_json(artifacts.EVALUATE_METRICS, {"models_evaluated": len(records), "split": split,
                                                          "wall_s": timer.seconds})


if __name__ == "__main__":
    run(main)
