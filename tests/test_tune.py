"""The `tune` stage: a tiny Optuna study on the embedded default, its Pareto front and choice,
resuming after a kill, several workers on SQLite and on a throwaway PostgreSQL."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import clean_env, prepared_and_trained, python

from fairprune import config
from fairprune.tuning.study import FAIL_REASON, INTERRUPTED, RETRY_OF, open_study, requeue_interrupted, study_name
from fairprune.tuning.summary import dominates

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "base": {"seeds": [0], "threads": 1},
    "train": {"epochs": 2},
    "finetune": {"epochs": 1},
    "tune": {"trials": 4, "sampler": "random", "heartbeat_s": 1, "grace_s": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A project folder with the prepared embedded data and one dense model."""
    return prepared_and_trained(tmp_path_factory.mktemp("tune_base"), TINY)


@pytest.fixture
def project(trained, tmp_path) -> Path:
    work = tmp_path / "project"
    shutil.copytree(trained, work, ignore=shutil.ignore_patterns("tune", "reports", "mlflow.db", "mlruns"))
    return work


def set_tune(work: Path, **values) -> config.Params:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["tune"].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return config.validate(params)


def load_study(work: Path, url: str | None = None) -> optuna.Study:
    url = url or f"sqlite:///{work / 'tune' / 'optuna.db'}"
    names = optuna.get_all_study_names(url)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=url)


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def test_tiny_study_gives_a_non_dominated_front_a_choice_and_mlflow_runs(project):
    python("tune.py", project)
    result = json.loads((project / "reports" / "tune" / "pareto.json").read_text())
    assert result["complete"] == 4 and result["pareto"]
    points = [(p["val_accuracy"], p["val_gap"]) for p in result["pareto"]]
    assert not any(dominates(a, b) for a in points for b in points)
    others = [(t["val_accuracy"], t["val_gap"]) for t in result["trials"] if "val_accuracy" in t]
    assert all(any(dominates(p, o) or p == o for p in points) for o in others)  # the front covers every trial
    chosen = result["chosen"]
    assert chosen["number"] in {p["number"] for p in result["pareto"]}
    assert 0 <= result["chosen_test"]["test_accuracy"] <= 1
    assert result["chosen_test"]["val_accuracy"] == pytest.approx(chosen["val_accuracy"])  # the re-run reproduces
    override = yaml.safe_load((project / "reports" / "tune" / "chosen.yaml").read_text())
    assert override["mitigation"]["dual_lr"] == pytest.approx(chosen["params"]["mitigation.dual_lr"])
    applied = config.apply_override(project / "params.yaml", project / "reports" / "tune" / "chosen.yaml")
    assert float(applied["finetune"]["lr"]) == pytest.approx(chosen["params"]["finetune.lr"])
    assert (project / "reports" / "tune" / "pareto.png").stat().st_size > 0

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fairprune")
    parent = client.search_runs([experiment.experiment_id], "tags.stage = 'tune' and tags.dvc_stage = 'tune'")
    assert len(parent) == 1
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 4
    assert all("val_accuracy" in run.data.metrics and "val_acc/9" in run.data.metrics for run in children)
    assert "chosen/test_accuracy" in parent[0].data.metrics


def test_failed_trials_are_recorded_with_their_reason_and_the_study_goes_on(project):
    set_tune(project, trials=3, search={"finetune.lr": {"choices": [1.0e6]}})
    python("tune.py", project)
    study = load_study(project)
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 3
    assert all("training loss became nan" in t.user_attrs[FAIL_REASON] for t in failed)
    result = json.loads((project / "reports" / "tune" / "pareto.json").read_text())
    assert result["failed"] == 3 and result["chosen"] is None


def test_a_collapsed_trial_fails_with_its_reason_and_an_infeasible_one_is_marked_for_the_dashboard(project, monkeypatch):
    """A trial whose model predicts one class was recorded COMPLETE (and squashed the Pareto plot); a trial
    over tune.gap_budget showed as feasible in optuna-dashboard, which reads the list-format constraints."""
    from fairprune.tuning import objective

    monkeypatch.chdir(project)
    params = set_tune(project, gap_budget=0.05)
    study = open_study(params, f"sqlite:///{project / 'optuna.db'}")
    outcomes = iter([(1, 0.10, 0.0), (10, 0.90, 0.20)])  # classes predicted, accuracy, gap

    def score(self, params, splits=("val",), log=None, **_):
        classes, accuracy, gap = next(outcomes)
        record = {"val_accuracy": accuracy, "val_accuracy_gap": gap, "val_classes_predicted": classes}
        return {"val": objective.Scores(accuracy, gap, record, 0.0)}

    monkeypatch.setattr(objective.TrialRunner, "score", score)
    study.optimize(objective.TrialRunner(params, torch.device("cpu"), None, None), n_trials=2, catch=(Exception,))
    collapsed, infeasible = study.get_trials(deepcopy=False)
    assert collapsed.state == optuna.trial.TrialState.FAIL and "collapsed" in collapsed.user_attrs[FAIL_REASON]
    assert infeasible.state == optuna.trial.TrialState.COMPLETE
    assert infeasible.system_attrs["constraints"] == [pytest.approx(0.15)]  # what optuna-dashboard reads
    assert study.best_trials == []  # and Optuna too


def test_the_study_is_new_when_the_dense_model_changes_and_a_worker_cannot_start_one(project, monkeypatch):
    monkeypatch.chdir(project)
    params = config.validate(yaml.safe_load((project / "params.yaml").read_text()))
    name = study_name(params)
    assert study_name(params) == name
    assert study_name(params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 9})})) == name
    dense = project / "models" / "dense" / "s0" / "plain.pt"
    dense.write_bytes(dense.read_bytes() + b"retrained")  # what `dvc repro` does after a code change
    assert study_name(params) != name
    lone = python("tune.py", project, "--worker", "1", "--of", "2", check=False)  # a worker never makes a study
    assert lone.returncode != 0 and f"no study {study_name(params)}" in lone.stderr
    assert "dense model" in lone.stderr and "Traceback" not in lone.stderr


def test_a_trial_interrupted_before_its_training_starts_is_still_requeued(project, monkeypatch):
    # SIGTERM can land in the trial's bookkeeping around the training (the surplus check, the
    # sampler); the trial must be marked interrupted there too, or it is lost instead of retried.
    from fairprune.tuning import objective

    monkeypatch.chdir(project)
    params = config.validate(yaml.safe_load((project / "params.yaml").read_text()))
    study = open_study(params, f"sqlite:///{project / 'optuna.db'}")
    runner = objective.TrialRunner(params, torch.device("cpu"), None, None)

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(objective, "is_surplus", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(runner, n_trials=1)
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(INTERRUPTED)
    assert requeue_interrupted(study) == [trial.number]
    assert study.metric_names == ["val_accuracy", "val_accuracy_gap"]  # named objectives for the dashboard


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
def test_an_interrupted_study_resumes_without_losing_or_repeating_trials(project, how, monkeypatch):
    params = set_tune(project, trials=5, epochs=8)  # trials of about a second: the signal lands inside one
    db = project / "tune" / "optuna.db"
    db.parent.mkdir()
    monkeypatch.chdir(project)  # the study name hashes the project's dense model and data
    open_study(params, f"sqlite:///{db}")  # the schema exists before this test polls it
    worker = subprocess.Popen([sys.executable, str(REPO / "pipeline" / "tune.py"), "--worker", "0"], cwd=project,
                              env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            time.sleep(0.1)
            states = [t.state for t in load_study(project).get_trials(deepcopy=False)]
            if optuna.trial.TrialState.COMPLETE in states and states[-1] == optuna.trial.TrialState.RUNNING:
                break
        else:
            pytest.fail("the worker never got one trial done and a second one running")
        before = {t.number: (t.params, t.values) for t in completed(load_study(project))}
        worker.send_signal(how)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    if how == signal.SIGKILL:
        time.sleep(3)  # past grace_s: the killed trial's heartbeat is stale
    python("tune.py", project)

    study = load_study(project)
    done = completed(study)
    assert len(done) == 5
    assert {t.number: (t.params, t.values) for t in done if t.number in before} == before  # kept as they were
    trials = study.get_trials(deepcopy=False)
    interrupted = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(interrupted) == 1, [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
    assert FAIL_REASON not in interrupted[0].user_attrs
    retry = [t for t in done if t.user_attrs.get(RETRY_OF) == interrupted[0].number
             or t.system_attrs.get("failed_trial") == interrupted[0].number]
    assert len(retry) == 1 and retry[0].params == interrupted[0].params  # the lost trial, redone once
    if how == signal.SIGTERM:
        assert interrupted[0].user_attrs.get(INTERRUPTED)


def assert_budget_shared(study: optuna.Study, trials: int) -> None:
    done = completed(study)
    assert len(done) == trials
    assert len({tuple(sorted(t.params.items())) for t in done}) == trials  # no trial ran twice
    workers_seen = {t.user_attrs.get("mlflow_run_id") for t in done}
    assert len(workers_seen) == trials


def test_two_workers_on_one_sqlite_file_share_the_budget(project):
    # Trials of a few seconds, so the second worker's start-up (imports, data) ends well before the study.
    set_tune(project, trials=6, epochs=20)
    out = python("tune.py", project, env={"FAIRPRUNE_TUNE_WORKERS": "2"}).stdout
    assert "worker 0: ran" in out and "worker 1: ran" in out
    ran = [int(line.split("ran ")[1].split()[0]) for line in out.splitlines() if line.startswith("worker ")]
    assert sum(ran) >= 6 and all(r > 0 for r in ran)
    assert_budget_shared(load_study(project), 6)


def test_two_workers_on_postgresql_share_the_budget(project, postgres):
    set_tune(project, trials=4)
    python("tune.py", project, env={"FAIRPRUNE_TUNE_WORKERS": "2", "FAIRPRUNE_TUNE_STORAGE": postgres})
    assert_budget_shared(load_study(project, postgres), 4)
    assert not (project / "tune" / "optuna.db").exists()
    assert "postgresql" in json.loads((project / "reports" / "tune" / "pareto.json").read_text())["storage"]
