"""A stage stopped by SIGTERM (a timeout, `kill`, a scheduler) ends its MLflow run instead of leaving it
RUNNING forever, and exits 130 like Ctrl-C (its checkpoint kept for the rerun)."""
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO, clean_env

STAGE = '''
import time
from fairprune import tracking
from fairprune.stage import run

def main(params, args, timer):
    with tracking.stage_run(params.base, "train", "train@0-plain", {"train": {"epochs": 1}}):
        print("started", flush=True)
        time.sleep(120)

run(main)
'''


def test_sigterm_ends_the_mlflow_run_and_exits_130(tmp_path):
    import mlflow

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "stage.py").write_text(STAGE)
    process = subprocess.Popen([sys.executable, "stage.py"], cwd=tmp_path, env=clean_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while process.stdout.readline().strip() != "started":
        assert time.time() < deadline and process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in process.stderr.read()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fairprune").experiment_id])
    assert run.info.status in ("KILLED", "FAILED")


def test_runs_left_running_by_a_killed_process_are_ended_by_the_next_stage(tmp_path, monkeypatch):
    """kill -9 (or a lost node, or an Optuna worker killed mid-trial) leaves its MLflow run RUNNING, and a
    `dvc repro` that restores the stage from DVC's run cache starts nothing that would end it. The next
    stage run ends it: KILLED for a stage, FAILED for a tune trial (the state Optuna gives it)."""
    import mlflow

    from fairprune import tracking
    from fairprune.config import BaseParams

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = BaseParams()
    experiment = tracking.ensure_store(base)
    client = mlflow.MlflowClient()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    mine = tracking.process_tags()
    dead = {**mine, "fairprune.pid": gone}
    runs = {"stage": client.create_run(experiment, tags={**dead, "stage": "train"}),
            "trial": client.create_run(experiment, tags={**dead, "stage": "tune", "trial": "3"}),
            "live": client.create_run(experiment, tags={**mine, "stage": "prune"}),
            "reused pid": client.create_run(experiment, tags={**mine, "fairprune.pid_started": "1.000"}),
            "other host": client.create_run(experiment, tags={**dead, "fairprune.host": "another-node"})}
    with tracking.stage_run(base, "report", "report", {}):
        pass
    status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    assert status == {"stage": "KILLED", "trial": "FAILED", "live": "RUNNING", "reused pid": "KILLED",
                      "other host": "RUNNING"}


def test_training_and_pruning_runs_record_system_metrics(tmp_path, monkeypatch):
    import mlflow

    from fairprune import tracking
    from fairprune.config import BaseParams

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    with tracking.stage_run(BaseParams(), "train", "train@0-plain", {}, system_metrics=True) as run:
        time.sleep(2.5)
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert any(name.startswith("system/cpu_utilization") for name in metrics), sorted(metrics)
