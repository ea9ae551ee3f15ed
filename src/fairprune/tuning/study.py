"""The Optuna study behind `tune`: where it is stored, its name, and the worker loop.

The trial budget (`tune.trials`) is for the whole study, whatever the number of workers or
restarts, and no trial is lost or repeated:
- A trial counts once it is running, waiting, complete, or failed for a reason of its own
  (divergence, NaN: user attr `fail_reason`). A worker starts a trial only while the counted
  trials are under budget; if two workers race past it, the later trial (by number) sees that
  and ends as PRUNED with the reason "surplus" before doing any work.
- A trial whose worker was killed stops sending heartbeats; after `grace_s` Optuna marks it
  failed and enqueues a retry with the same parameters (RetryHeartbeatStaleTrialCallback). A trial
  interrupted with Ctrl-C or SIGTERM is marked `interrupted` and re-enqueued at the next start.
- A worker with nothing left to start waits for the running trials of others, so a stale one
  is retried by whoever is still there.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from filelock import FileLock
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from fairprune import artifacts, training
from fairprune.config import Params
from fairprune.errors import FairpruneError

ENV_STORAGE = "FAIRPRUNE_TUNE_STORAGE"
ENV_WORKERS = "FAIRPRUNE_TUNE_WORKERS"
DEFAULT_STORAGE = Path("tune/optuna.db")
FAIL_REASON, INTERRUPTED, RETRY_OF, SURPLUS = "fail_reason", "interrupted", "retry_of", "surplus"
DIRECTIONS = ("maximize", "minimize")  # validation accuracy, validation gap

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial retries are marked experimental; they are what makes resuming safe.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_url(params: Params, root: Path) -> str:
    """FAIRPRUNE_TUNE_STORAGE, else tune.storage, else SQLite in <root>/tune; relative SQLite paths
    are made absolute against the project root (so `dvc exp` copies share one study)."""
    url = os.environ.get(ENV_STORAGE) or params.tune.storage
    if url is None:
        url = f"sqlite:///{DEFAULT_STORAGE}"
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path = (root / url[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = prefix + str(path)
    return url


def redacted(url: str) -> str:
    """The URL without its password, for logs and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not an SQLAlchemy URL: print as given)
        return url


def shown_storage(url: str, root: Path) -> str:
    """The storage URL for reports: without its password, and relative when it lies in the project (an
    absolute path would name the machine that ran it)."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        try:
            return prefix + str(Path(url[len(prefix):]).resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return redacted(url)


def study_name(params: Params) -> str:
    """tune.study, or one name per search setting: changing anything a trial's result depends on
    (params, the dense model, the prepared data, fairprune's code) starts a new study, while
    raising tune.trials or adding workers continues the same one."""
    tune = params.tune
    if tune.study:
        return tune.study
    key = training.stage_fingerprint(
        params.data.model_dump(), params.model.model_dump(), params.train.model_dump(),
        params.prune.model_dump(exclude={"methods", "sparsities"}), params.finetune.model_dump(),
        params.mitigation.model_dump(),
        tune.model_dump(include={"method", "sparsity", "seed", "gap", "gap_budget", "sampler", "sampler_seed",
                                 "epochs", "search"}),
        inputs=[artifacts.dense_model(tune.seed), artifacts.PREPARED])
    return f"{tune.method}-{tune.sparsity}-{key[:8]}"


def make_sampler(params: Params, worker: int) -> optuna.samplers.BaseSampler:
    # Each worker its own seed: equal seeds would draw the same start-up points in every worker.
    seed = params.tune.sampler_seed * 1000 + worker
    if params.tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if params.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, params.tune.trials // 3)))


def open_study(params: Params, url: str, worker: int = 0) -> optuna.Study:
    sqlite = url.startswith("sqlite:///")
    engine = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    # Two processes creating a fresh SQLite schema at once collide ("table already exists").
    lock = FileLock(url.removeprefix("sqlite:///") + ".lock") if sqlite else contextlib.nullcontext()
    with lock:
        storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=params.tune.heartbeat_s,
                             grace_period=params.tune.grace_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        name = study_name(params)
        if worker == 0:
            study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS),
                                        sampler=make_sampler(params, worker), load_if_exists=True)
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(metric_names(params))  # the dashboard's axes and columns
            return study
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(params, worker))
        except KeyError:
            raise FairpruneError(
                f"no study {name} in {redacted(url)}: start `python pipeline/tune.py` (worker 0) first, on the same "
                "storage; if it runs, this worker's params, dense model, prepared data or fairprune code differ from "
                "its (the study name hashes them): take them from the same checkout and `dvc pull`, since a "
                "`dvc repro train` elsewhere rarely rebuilds the dense model byte for byte") from None


def metric_names(params: Params) -> list[str]:
    return ["val_accuracy", f"val_{params.tune.gap}"]


def counted(trial: FrozenTrial) -> bool:
    if trial.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE):
        return True
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def set_gap_constraint(trial: optuna.Trial, value: float) -> None:
    """`value` <= 0 means feasible. Stored in Optuna's list format (system attr "constraints"), which both
    Optuna 5 and optuna-dashboard 0.21 read: `trial.set_constraint` writes a per-name key the dashboard
    does not, so infeasible trials looked feasible there."""
    trial.storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS_KEY, [float(value)])


def finished(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs)


def is_surplus(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether the budget was already taken by trials numbered before this one."""
    return sum(counted(t) for t in study.get_trials(deepcopy=False) if t.number < number) >= budget


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue again, with the same parameters, every interrupted trial not retried yet."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}
    requeued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED) and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            requeued.append(trial.number)
    return requeued


def work(study: optuna.Study, objective: Callable[[optuna.Trial], tuple[float, float]], budget: int,
         catch: tuple[type[Exception], ...], poll_s: float, callbacks=()) -> int:
    """Run trials until the study has `budget` finished ones; return how many this worker ran."""
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = sum(finished(t) for t in trials)
        if done >= budget:
            return ran
        waiting = any(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if waiting or done + running < budget:
            study.optimize(objective, n_trials=1, catch=catch, callbacks=list(callbacks))
            ran += 1
        else:
            time.sleep(poll_s)
