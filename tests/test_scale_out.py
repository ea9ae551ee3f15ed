"""fairprune.parallel on a two-node Ray cluster (both nodes on this machine, sharing its filesystem):
the stages land on both nodes with the metrics of a plain `dvc repro`, and a node lost mid-run costs
nothing: its stages are re-run elsewhere, each lands in dvc.lock once, no MLflow run stays RUNNING."""
import json
import re
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
    for log in logs.glob("train-*.log"):  # and only the retry finished: the lost attempt's process died with its node
        assert log.read_text().count("epochs, validation accuracy") == 1, log.read_text()[-3000:]
    assert all(n == 1 for name, n in attempts.items() if not name.startswith("train")), attempts


def test_tuning_workers_run_as_ray_tasks_on_both_nodes_and_a_lost_node_costs_no_trial(tmp_path, cluster, postgres):
    """On a cluster the study's extra workers are Ray tasks: they spread over the nodes and share the
    PostgreSQL study. A node lost while its worker holds a trial costs nothing: Ray re-runs the worker
    elsewhere, the trial's heartbeat goes stale and it is retried with the same parameters, and the trial
    budget stays exact."""
    import optuna

    cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = make_project(tmp_path, {**SMALL, "base": {"seeds": [0], "threads": 1}, "data": {"image_size": 16},
                                  # trials of a few seconds, so that the Ray workers (up in ~10 s) find some left
                                  "tune": {"trials": 10, "sampler": "random", "epochs": 8,
                                           "heartbeat_s": 1, "grace_s": 3}})
    sh(["dvc", "repro", "train"], tmp_path, env, timeout=600)
    tune = subprocess.Popen([sys.executable, "pipeline/tune.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**env, "RAY_ADDRESS": cluster.address, "FAIRPRUNE_TUNE_WORKERS": "3",
                                 "FAIRPRUNE_TUNE_STORAGE": postgres})
    deadline = time.time() + 300
    while True:  # every worker busy: the doomed node's worker holds a trial
        assert time.time() < deadline and tune.poll() is None, "the three workers never ran at once"
        names = optuna.get_all_study_names(postgres)
        trials = optuna.load_study(study_name=names[0], storage=postgres).get_trials(deepcopy=False) if names else []
        if sum(t.state == optuna.trial.TrialState.RUNNING for t in trials) == 3:
            break
        time.sleep(0.2)
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would bring
    out, _ = tune.communicate(timeout=900)
    assert tune.returncode == 0, out[-4000:]
    attempts = [node for log in (tmp_path / ".dvc" / "tmp" / "parallel").glob("tune-worker-*.log")
                for node in re.findall(r"^--- attempt on node (\w+)", log.read_text(), flags=re.MULTILINE)]
    assert len(attempts) == 3 and len(set(attempts)) >= 2, (attempts, out[-3000:])  # the lost worker ran again
    (name,) = optuna.get_all_study_names(postgres)
    trials = optuna.load_study(study_name=name, storage=postgres).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    stale = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and "fail_reason" not in t.user_attrs]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert len(complete) == 10, [(t.number, t.state.name) for t in trials]
    assert len(stale) == 1 and [t.system_attrs["failed_trial"] for t in retries] == [stale[0].number], (
        [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials], out[-3000:])
    assert retries[0].params == stale[0].params and retries[0].state == optuna.trial.TrialState.COMPLETE
