"""fairprune.parallel on a two-node Ray cluster (both nodes on this machine, sharing its filesystem):
the stages land on both nodes with the metrics of a plain `dvc repro`, and a node lost mid-run costs
nothing: its stages are re-run elsewhere, each lands in dvc.lock once, no MLflow run stays RUNNING."""
import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import make_project, sh, start_mlflow_server

SMALL = {
    "base": {"seeds": [0, 1], "threads": 1},
    "train": {"epochs": 2, "variants": ["plain"]},
    "prune": {"methods": ["magnitude", "snip"], "sparsities": [0.5]},
    "finetune": {"epochs": 1},
}
STAGES = {"validate", "prepare", "evaluate", *(f"train@{s}-plain" for s in (0, 1)),
          *(f"prune@{m}-0.5-{s}" for m in ("magnitude", "snip") for s in (0, 1))}


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_worker_niceness", "0")  # the nodes' workers at normal priority (docs/scale-out.md)
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})  # the head runs no stage
    yield cluster
    cluster.shutdown()


def parallel(work, env, address, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fairprune.parallel", "evaluate"], cwd=work,
                            env={**env, "RAY_ADDRESS": address}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def metrics(work):
    return {p.name: json.loads(p.read_text()) for p in sorted((work / "metrics" / "models").glob("*.json"))}


def assert_complete(work, env, tracking_uri=None) -> list:
    """Every stage in dvc.lock, `dvc status` clean, no MLflow run left RUNNING; returns the stage runs."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert STAGES <= set(lock)
    assert set(json.loads(sh(["dvc", "status", "--json", "evaluate"], work, env))) <= {"validate"}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri or f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fairprune").experiment_id
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
    return [r for r in client.search_runs([experiment], max_results=1000) if "mlflow.parentRunId" not in r.data.tags]


def test_two_nodes_log_to_a_tracking_server_on_postgresql_with_the_metrics_of_plain_dvc_repro(
        tmp_path, cluster, postgres):
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray_work, plain_work = tmp_path / "ray", tmp_path / "plain"
    ray_work.mkdir()
    plain_work.mkdir()
    server, uri = start_mlflow_server(tmp_path, postgres)
    try:
        env = {**make_project(ray_work, SMALL), "MLFLOW_TRACKING_URI": uri}
        run = parallel(ray_work, env, cluster.address)
        out, _ = run.communicate(timeout=900)
        assert run.returncode == 0, out[-4000:]
        assert "9 ran, 0 up to date, 0 failed" in out and "on 2 node(s)" in out, out[-4000:]
        runs = assert_complete(ray_work, env, uri)  # every stage's run reached the server, from both nodes
        assert sorted(r.data.tags["dvc_stage"] for r in runs) == sorted(STAGES - {"validate"})
    finally:
        server.terminate()
        server.wait(timeout=30)
    plain_env = make_project(plain_work, SMALL)
    sh(["dvc", "repro", "evaluate"], plain_work, plain_env, timeout=900)
    assert metrics(ray_work) == metrics(plain_work) and len(metrics(ray_work)) == 6


def test_a_node_lost_mid_run_costs_nothing(tmp_path, cluster):
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    env = make_project(tmp_path, SMALL)
    run = parallel(tmp_path, env, cluster.address)
    logs = tmp_path / ".dvc" / "tmp" / "parallel"
    deadline = time.time() + 300
    while not list(logs.glob("train-*.log")):  # training has started
        assert time.time() < deadline and run.poll() is None, "no train stage started"
        time.sleep(0.5)
    time.sleep(3)
    cluster.remove_node(doomed, allow_graceful=False)  # its workers and their stage processes die
    cluster.add_node(num_cpus=2)  # a replacement, as an autoscaler would bring
    out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out[-4000:]
    assert "9 ran, 0 up to date, 0 failed" in out, out[-4000:]
    assert_complete(tmp_path, env)  # its MLflow runs were resumed or ended, none is left RUNNING
    attempts = {p.name: p.read_text().count("--- attempt on node") for p in logs.glob("*.log")}
    assert max(attempts.values()) >= 2, attempts  # the lost node's stages ran again
    assert all(n == 1 for name, n in attempts.items() if not name.startswith("train")), attempts


def test_tuning_workers_run_as_ray_tasks_on_both_nodes_with_an_exact_budget(tmp_path, cluster, postgres):
    """On a cluster the study's extra workers are Ray tasks: they spread over the nodes, share the
    PostgreSQL study and the trial budget stays exact."""
    import optuna

    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = make_project(tmp_path, {**SMALL, "base": {"seeds": [0], "threads": 1},
                                  "tune": {"trials": 6, "sampler": "random", "epochs": 1}})
    sh(["dvc", "repro", "train"], tmp_path, env, timeout=600)
    out = sh([sys.executable, "pipeline/tune.py"], tmp_path,
             {**env, "RAY_ADDRESS": cluster.address, "FAIRPRUNE_TUNE_WORKERS": "3", "FAIRPRUNE_TUNE_STORAGE": postgres},
             timeout=900)
    nodes = {line.split("Ray node ")[1] for line in out.splitlines() if "on Ray node" in line}
    assert len(nodes) == 2, out[-3000:]  # workers 1 and 2, one per node (each node has one CPU)
    (name,) = optuna.get_all_study_names(postgres)
    trials = optuna.load_study(study_name=name, storage=postgres).get_trials(deepcopy=False)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 6
