"""The MLflow Model Registry: the report registers the evaluated models and names a champion.

Every model the run evaluated (its MLflow logged model) becomes a version of one registered model per
experiment and data (`<experiment>-<dataset>-<target>`), tagged with its run name. The alias `champion`
(MLflow's aliases, not the deprecated stages) goes to the most accurate pruned configuration whose
fairness target holds on the evaluation split with 95 % confidence: the upper end of its accuracy
gap's two-level bootstrap interval (fairprune.statistics) is at most `report.champion_gap`, or the
dense model's gap when that is null. Its version is the model of the first seed. When none qualifies,
the alias is removed and the report says why.
"""
from __future__ import annotations

from dataclasses import dataclass

from fairprune.statistics import Bootstrap


@dataclass
class Candidate:
    method: str
    sparsity: float
    accuracy: float
    accuracy_interval: tuple[float, float]
    gap: float
    gap_upper: float
    qualifies: bool


def candidates(records: list[dict], target_gap: float | None) -> tuple[list[Candidate], float]:
    """Every pruned (method, sparsity) with its accuracy and gap estimates, and the gap target used."""
    boot = Bootstrap(records)
    target = boot.metric("dense", 0.0, "accuracy_gap").value if target_gap is None else target_gap
    rows = []
    for method, sparsity in sorted({(r["method"], r["sparsity"]) for r in records
                                    if not r["method"].startswith("dense")}):
        accuracy, gap = boot.metric(method, sparsity, "accuracy"), boot.metric(method, sparsity, "accuracy_gap")
        upper = gap.interval()[1]
        rows.append(Candidate(method, sparsity, accuracy.value, accuracy.interval(), gap.value, upper,
                              upper <= target))
    return rows, target


def champion(rows: list[Candidate]) -> Candidate | None:
    qualifying = [c for c in rows if c.qualifies]
    return max(qualifying, key=lambda c: c.accuracy) if qualifying else None


def register(name: str, models: dict[str, str], champion_run: str | None) -> str | None:
    """Register `models` ({run name: MLflow model id}) as versions of `name` (each once, however often
    the report runs) and point the alias `champion` at `champion_run`'s version (removed when None).
    Returns the champion's version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="fairprune: every evaluated model of this experiment "
                                                         "and data; alias `champion`: see the report")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    versions = {v.tags.get("model_id"): v.version for v in client.search_model_versions(f"name = '{name}'")}
    for run, model_id in models.items():
        if model_id not in versions:
            version = mlflow.register_model(f"models:/{model_id}", name, tags={"model_id": model_id, "run": run})
            versions[model_id] = version.version
    if champion_run is None or champion_run not in models:
        try:
            client.delete_registered_model_alias(name, "champion")
        except MlflowException:
            pass
        return None
    version = versions[models[champion_run]]
    client.set_registered_model_alias(name, "champion", version)
    return str(version)
