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
