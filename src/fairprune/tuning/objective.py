"""One trial: the searched values applied to params, prune + fine-tune from the dense checkpoint
(never retrained), scored on the validation split: (accuracy, fairness gap)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch

from fairprune import artifacts, config, models, tracking
from fairprune.config import Params, SearchRange
from fairprune.device import seed_everything
from fairprune.errors import FairpruneError, TrainingCollapsed, TrainingDiverged
from fairprune.evaluation import evaluate_split
from fairprune.fairness import GroupStats, fairness_gaps
from fairprune.pruning.finetune import prune_and_finetune
from fairprune.tuning.study import FAIL_REASON, INTERRUPTED, SURPLUS, is_surplus, set_gap_constraint


def suggest(trial: optuna.Trial, search: dict[str, SearchRange]) -> dict[str, Any]:
    values = {}
    for key, space in search.items():
        if space.choices is not None:
            values[key] = trial.suggest_categorical(key, space.choices)
        elif space.integer:
            values[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
        else:
            values[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
    return values


def overrides_of(params: Params, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The searched values as a nested params override, with the trial's fine-tuning epochs."""
    nested = config.nested_override(values)
    if params.tune.epochs is not None:
        config.merge_into(nested, {"finetune": {"epochs": params.tune.epochs}})
    return nested


def with_overrides(params: Params, nested: dict[str, dict[str, Any]]) -> Params:
    raw = params.model_dump()
    config.merge_into(raw, nested)
    return config.validate(raw)


@dataclass
class Scores:
    accuracy: float
    gap: float
    record: dict[str, float]  # every gap and per-group accuracy, flat for MLflow
    train_s: float


class TrialRunner:
    """Everything a worker loads once (prepared data, the dense model's validation stats) and the
    objective it hands to Optuna."""

    def __init__(self, params: Params, device: torch.device, parent_run_id: str | None, experiment_id: str | None):
        from fairprune.data import load_prepared

        self.params, self.device = params, device
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.data = load_prepared(artifacts.PREPARED)
        self.dense_stats: dict[tuple[int, str], GroupStats] = {}  # per (seed, split), on first use

    def _predict(self, model, split: str):
        return evaluate_split(model, self.data, split, self.params.evaluate.batch_size, self.device)

    def _dense_stats(self, seed: int, split: str) -> GroupStats:
        if (seed, split) not in self.dense_stats:
            dense, _ = models.load(artifacts.dense_model(seed))
            self.dense_stats[(seed, split)] = self._predict(dense, split).stats()
        return self.dense_stats[(seed, split)]

    def score(self, params: Params, splits=("val",), log=None, method: str | None = None,
              sparsity: float | None = None, seed: int | None = None) -> dict[str, Scores]:
        """Prune and fine-tune with `params` (tune.method / sparsity / seed unless given), then score
        each split against the dense model."""
        tune = params.tune
        method = method or tune.method
        sparsity = tune.sparsity if sparsity is None else sparsity
        seed = tune.seed if seed is None else seed
        seed_everything(seed)
        start = time.perf_counter()
        result = prune_and_finetune(params, method, sparsity, seed, self.data, self.device, log=log)
        train_s = time.perf_counter() - start
        scores = {}
        for split in splits:
            predictions = self._predict(result.model, split)
            stats: GroupStats = predictions.stats()
            gaps = fairness_gaps(stats, self._dense_stats(seed, split))
            if tune.gap not in gaps:
                raise FairpruneError(f"tune.gap = {tune.gap} needs a binary target; this data has "
                                     f"{self.data.num_classes} classes; pick accuracy_gap or excess_loss_gap")
            record = {f"{split}_accuracy": stats.overall_accuracy, f"{split}_loss": stats.overall_loss,
                      **{f"{split}_{name}": value for name, value in gaps.items()},
                      **{f"{split}_acc/{group}": float(acc) for group, acc in zip(self.data.group_names, stats.accuracy)},
                      f"{split}_classes_predicted": int(np.unique(predictions.y_pred).size)}
            scores[split] = Scores(stats.overall_accuracy, gaps[tune.gap], record, train_s)
        return scores

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._trial(trial)
        except KeyboardInterrupt:  # anywhere in the trial, its bookkeeping included: retried at the next start
            trial.set_user_attr(INTERRUPTED, True)
            raise

    def _trial(self, trial: optuna.Trial) -> tuple[float, float]:
        import mlflow

        tune = self.params.tune
        if is_surplus(trial.study, trial.number, tune.trials):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: other workers already took the trial budget")
        values = suggest(trial, tune.search)
        try:
            trial_params = with_overrides(self.params, overrides_of(self.params, values))
            with mlflow.start_run(run_name=f"trial-{trial.number}", experiment_id=self.experiment_id,
                                  parent_run_id=self.parent_run_id, nested=self.parent_run_id is not None,
                                  tags={"stage": "tune", "study": trial.study.study_name,
                                        "trial": str(trial.number), "method": tune.method,
                                        "sparsity": str(tune.sparsity), **tracking.process_tags()}) as run:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                mlflow.log_params(values)
                val = self.score(trial_params, ("val",), log=tracking.log_metrics)["val"]
                if not (math.isfinite(val.accuracy) and math.isfinite(val.gap)):
                    raise TrainingDiverged(f"validation accuracy {val.accuracy} / {tune.gap} {val.gap} is not finite")
                tracking.log_metrics({**val.record, "train_s": val.train_s})
                if val.record["val_classes_predicted"] < 2 <= self.data.num_classes:
                    raise TrainingCollapsed(f"the model predicts one class for every validation sample (accuracy "
                                            f"{val.accuracy:.3f}): collapsed, not a trade-off; recorded as failed")
        except FairpruneError as exc:
            trial.set_user_attr(FAIL_REASON, str(exc))
            raise
        if tune.gap_budget is not None:
            set_gap_constraint(trial, val.gap - tune.gap_budget)
        for key, value in val.record.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("train_s", val.train_s)
        return val.accuracy, val.gap
