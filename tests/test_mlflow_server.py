"""fairprune's MLflow logging against a real `mlflow server` process, queried through the client:
params on nested runs, the dataset input, the per-group table, and evaluation metrics linked to the
logged model."""
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import start_mlflow_server

from fairprune import tracking
from fairprune.config import BaseParams


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    """A real `mlflow server` process, its store in SQLite or in a throwaway PostgreSQL (the many-writer setup)."""
    backend = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
               else request.getfixturevalue("postgres"))
    process, uri = start_mlflow_server(tmp_path, backend)
    yield uri, tmp_path
    process.terminate()
    process.wait(timeout=30)


def test_nested_evaluation_runs_carry_params_dataset_table_and_model_link(server, tmp_path, monkeypatch):
    import mlflow

    uri, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "prepared.pt"
    prepared.write_bytes(os.urandom(64))
    data = SimpleNamespace(info={"dataset": "utkface", "target": "race", "group": ["race", "gender"],
                                 "source": "/data/UTKFace.tar.gz"},
                           stats=lambda: {"n_per_split": {"train": 10, "val": 3, "test": 4}})
    base = BaseParams(experiment="server-test")
    with tracking.stage_run(base, "evaluate", "evaluate", {"evaluate": {"split": "test"}}):
        with mlflow.start_run(run_name="magnitude-0.9-s0", nested=True):
            model_id = tracking.log_model(torch.nn.Linear(2, 2), name="magnitude-0.9-s0")
            mlflow.log_params({"method": "magnitude", "sparsity": "0.9", "seed": "0"})
            tracking.log_dataset(data, prepared, "evaluation")
            mlflow.log_table({"group": ["White/male", "Black/female"], "accuracy": [0.9, 0.7]},
                             artifact_file="per_group.json")
            tracking.log_metrics({"accuracy": 0.8, "acc/White/male": 0.9}, model_id=model_id)
            child = mlflow.active_run().info.run_id

    client = mlflow.MlflowClient(uri)
    run = client.get_run(child)
    assert run.data.params["method"] == "magnitude" and run.data.tags.get("mlflow.parentRunId")
    dataset = run.inputs.dataset_inputs[0]
    assert dataset.dataset.name == "utkface:race/racexgender" and len(dataset.dataset.digest) == 16
    assert {t.key: t.value for t in dataset.tags}["n_test"] == "4"
    assert "per_group.json" in {a.path for a in client.list_artifacts(child)}
    logged = client.get_logged_model(model_id)
    assert logged.name == "magnitude-0_9-s0"  # '.' is not allowed in a model name
    assert {m.key for m in logged.metrics} >= {"accuracy", "acc/White/male"}


def test_a_stage_resumed_after_its_tracking_store_was_lost_logs_into_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = BaseParams(experiment="resume-test")
    with tracking.stage_run(base, "train", "train@0-plain", {"train": {"epochs": 1}},
                            run_id="0123456789abcdef0123456789abcdef") as run:
        assert run.info.run_id != "0123456789abcdef0123456789abcdef"
    assert "not in the tracking store" in capsys.readouterr().err
