"""The report's Model Registry step: every evaluated model registered once, the alias `champion` on the
most accurate pruned configuration whose accuracy gap's upper bound meets the target, none otherwise."""
import mlflow
import pytest
import torch

from fairprune import registry, tracking
from fairprune.config import BaseParams


def record(method, sparsity, seed, accuracies, n=400):
    return {"method": method, "sparsity": sparsity, "seed": seed,
            "groups": {g: {"n": n, "accuracy": a} for g, a in zip(("a", "b"), accuracies)}}


def records(fair=(0.86, 0.85), accurate=(0.99, 0.80)):
    return [r for seed in (0, 1, 2) for r in (record("dense", 0.0, seed, (0.90, 0.80)),
                                             record("fair", 0.5, seed, fair),
                                             record("accurate", 0.5, seed, accurate))]


def test_the_champion_is_the_most_accurate_configuration_whose_gap_bound_meets_the_target():
    rows, target = registry.candidates(records(), None)
    assert target == pytest.approx(0.10)  # the dense model's gap
    by_method = {row.method: row for row in rows}
    assert not by_method["accurate"].qualifies and by_method["accurate"].accuracy > by_method["fair"].accuracy
    assert by_method["fair"].qualifies and by_method["fair"].gap_upper < 0.10
    assert registry.champion(rows).method == "fair"
    assert registry.champion(registry.candidates(records(), 0.0)[0]) is None  # nobody has a gap bound of 0
    # a gap whose point value meets the target but whose interval does not: not a champion
    borderline = registry.candidates(records(fair=(0.86, 0.78)), 0.08)[0]
    assert next(r for r in borderline if r.method == "fair").gap == pytest.approx(0.08)
    assert registry.champion(borderline) is None


def test_models_are_registered_once_and_the_alias_follows_the_champion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.ensure_store(BaseParams())
    models = {}
    for run in ("magnitude-0.5", "fair-0.5"):
        with mlflow.start_run(run_name=run):
            models[run] = tracking.log_model(torch.nn.Linear(2, 2), name=run)
    client = mlflow.MlflowClient()
    assert registry.register("fp-digits-class", models, "fair-0.5") == "2"
    assert client.get_model_version_by_alias("fp-digits-class", "champion").tags["run"] == "fair-0.5"
    assert registry.register("fp-digits-class", models, "magnitude-0.5") == "1"  # no new versions
    assert len(client.search_model_versions("name = 'fp-digits-class'")) == 2
    assert registry.register("fp-digits-class", models, None) is None
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("fp-digits-class", "champion")
    loaded = mlflow.pytorch.load_model("models:/fp-digits-class/2")
    assert isinstance(loaded, torch.nn.Linear)
