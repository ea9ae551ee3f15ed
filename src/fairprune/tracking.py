"""MLflow helpers: one store per project, one run per stage execution, per-group metrics.

The store is SQLite (`sqlite:///mlflow.db`) with artifacts under `mlruns/`, both resolved
against the project root, so queued `dvc exp` runs (which execute in a temporary copy under
`.dvc/tmp/exps/`) log into the project's store instead of a throwaway one.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from fairprune.config import BaseParams

logging.getLogger("mlflow").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def project_root(start: Path | None = None) -> Path:
    """The working directory, or the real project when running inside a queued DVC experiment."""
    start = (start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return start


def resolve_uri(base: BaseParams, root: Path | None = None) -> tuple[str, str]:
    """(tracking URI, artifact location URI); MLFLOW_TRACKING_URI in the environment wins."""
    root = root or project_root()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or base.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    artifacts = Path(base.artifact_root)
    artifacts = artifacts if artifacts.is_absolute() else root / artifacts
    return uri, artifacts.resolve().as_uri()


def store_problem(base: BaseParams, timeout_s: float = 5.0) -> str | None:
    """Why the tracking store could not take this run's records, or None: checked by the validate stage
    before any stage writes, without importing MLflow (a second of start-up on every `dvc repro`)."""
    uri, artifacts = resolve_uri(base)
    fix = "fix base.tracking_uri / base.artifact_root in params.yaml or MLFLOW_TRACKING_URI, or start the server"
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.parent.is_dir():
            return f"the MLflow store {uri}: its folder {database.parent} does not exist; {fix}"
        if database.exists():
            with open(database, "rb") as handle:
                header = handle.read(16)
            if header and header != b"SQLite format 3\x00":
                return f"the MLflow store {database} is not an SQLite database; move it aside, or {fix}"
        target = database if database.exists() else database.parent
        if not os.access(target, os.W_OK):
            return f"the MLflow store {target} is not writable; {fix}"
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except (urllib.error.URLError, OSError) as exc:
            return f"the MLflow tracking server {uri} does not answer ({getattr(exc, 'reason', exc)}); {fix}"
    elif "://" in uri and not uri.startswith("file:"):  # a database URL (postgresql://, mysql://...)
        import sqlalchemy

        try:
            sqlalchemy.create_engine(uri).connect().close()
        except Exception as exc:  # noqa: BLE001 (every driver raises its own)
            return f"the MLflow store {uri.split('@')[-1]} cannot be opened ({type(exc).__name__}); {fix}"
    if artifacts.startswith("file:"):
        from urllib.parse import unquote, urlparse

        folder = Path(unquote(urlparse(artifacts).path))
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            return f"the MLflow artifact folder {folder} is not writable; {fix}"
    return None


def ensure_store(base: BaseParams) -> str:
    """Create the database schema and the experiment once; return the experiment id.

    A fresh SQLite store breaks when several processes create its schema at once, so the
    creation is serialised with a file lock next to the database.
    """
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # mlflow's import sets its own INFO level
    uri, artifacts = resolve_uri(base)
    mlflow.set_tracking_uri(uri)
    lock_dir = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else project_root()
    with FileLock(str(lock_dir / ".mlflow.lock")):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(base.experiment)
        if experiment is None:
            return client.create_experiment(base.experiment, artifact_location=artifacts)
        return experiment.experiment_id


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=project_root()).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def process_tags() -> dict[str, str]:
    """Which process writes the run: a run left RUNNING by a process that no longer exists is ended."""
    import socket

    import psutil

    return {"fairprune.host": socket.gethostname(), "fairprune.pid": str(os.getpid()),
            "fairprune.pid_started": f"{psutil.Process().create_time():.3f}"}


def _alive(pid: str, started: str) -> bool:
    import psutil

    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started  # not a reused pid
    except (psutil.Error, ValueError):
        return False


def end_orphaned_runs(experiment_id: str, keep: str | None = None) -> int:
    """End the runs of this experiment left RUNNING by a process of this machine that died (kill -9, a
    lost node, an Optuna worker whose trial Optuna then marked FAIL; DVC restoring a stage from its run
    cache starts no process that would end them). Tune trials end FAILED, as Optuna records them;
    stage runs KILLED. Returns how many it ended."""
    import socket

    import mlflow

    client, host, ended = mlflow.MlflowClient(), socket.gethostname(), 0
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if run.info.run_id == keep or tags.get("fairprune.host") != host or "fairprune.pid" not in tags:
            continue
        if not _alive(tags["fairprune.pid"], tags.get("fairprune.pid_started", "")):
            client.set_terminated(run.info.run_id, "FAILED" if "trial" in tags else "KILLED")
            ended += 1
    if ended:
        print(f"note: ended {ended} MLflow run(s) left RUNNING by killed processes", file=sys.stderr)
    return ended


@contextlib.contextmanager
def stage_run(base: BaseParams, stage: str, dvc_stage: str, params: dict, run_id: str | None = None,
              system_metrics: bool = False, **tags) -> Iterator[object]:
    """An MLflow run for one stage execution, tagged and with its params logged.

    Pass `run_id` to continue a run (a resumed training keeps its metric history). `system_metrics`
    samples CPU, memory and GPU use into the run (`system/...` metrics) while it lasts.
    """
    import mlflow

    experiment_id = ensure_store(base)
    end_orphaned_runs(experiment_id, keep=run_id)
    all_tags = {"stage": stage, "dvc_stage": dvc_stage, "git_commit": git_commit(), **process_tags(),
                **{k: str(v) for k, v in tags.items()}}
    name = dvc_stage.replace("@", "-")
    mlflow.set_experiment(experiment_id=experiment_id)
    if run_id is not None and not _run_exists(run_id):
        print(f"note: MLflow run {run_id} of the interrupted {dvc_stage} is not in the tracking store (a new or "
              f"lost store); the resumed stage logs into a new run", file=sys.stderr)
        run_id = None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name, tags=all_tags,
                          log_system_metrics=system_metrics) as run:
        if run_id is not None:
            mlflow.set_tags(process_tags())  # resumed by this process
        if run_id is None:
            mlflow.log_params({metric_name(k): str(v)[:6000] for k, v in flatten(params).items()})
        yield run


def _run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def metric_name(name: str) -> str:
    """MLflow metric and param names allow letters, digits, _ - . / and spaces ('+' of method arms not)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    """Numbers only, NaN left out; `model_id` links them to a logged model (its page lists them)."""
    import math

    import mlflow

    clean = {metric_name(k): float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not math.isnan(float(v))}
    mlflow.log_metrics(clean, step=step, **({"model_id": model_id} if model_id else {}))


def log_dataset(data, path: Path, context: str) -> None:
    """The prepared data as the run's input (MLflow's Dataset column): its name (dataset:target/group),
    a digest of the prepared tensors, its source and split sizes, so runs on different data never
    compare silently."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    info = data.info
    group = info.get("group")
    name = f"{info.get('dataset', 'data')}:{info.get('target')}/{'x'.join(group) if isinstance(group, list) else group}"
    path = Path(path).resolve()
    source = LocalArtifactDatasetSource(str(info.get("source", path)))
    sizes = data.stats().get("n_per_split", {})
    mlflow.log_input(MetaDataset(source, name=name, digest=_digest(str(path), path.stat().st_mtime_ns)),
                     context=context, tags={f"n_{split}": str(n) for split, n in sizes.items()})


@functools.lru_cache(maxsize=4)
def _digest(path: str, mtime_ns: int) -> str:
    """Once per prepared file (the evaluate stage logs it for every model; hashing it is the cost)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def log_model(model, name: str = "model") -> str | None:
    """Log a model that reloads (mlflow.pytorch.load_model) as the project's own module; its MLflow
    model id, which the evaluation links its metrics to."""
    from importlib.metadata import version

    import mlflow.pytorch
    import torch

    # Pickle is deliberate: it is the format that reloads pruned and physically smaller models
    # as the project's own modules; MLflow warns about it on every call.
    warnings.filterwarnings("ignore", message="Saving pytorch model by Pickle")
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    name = "".join("_" if c in "/:.%\"'" else c for c in name)  # what MLflow's model names refuse
    info = mlflow.pytorch.log_model(
        model.cpu(), name=name, serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"torchvision=={version('torchvision').split('+')[0]}", "fairprune"],
    )
    return getattr(info, "model_id", None)


if __name__ == "__main__":
    # `python -m fairprune.tracking`: create the store and experiment before stages fan out.
    from fairprune import config

    base = config.load().base
    experiment = ensure_store(base)
    print(f"MLflow store {resolve_uri(base)[0]}, experiment '{base.experiment}' (id {experiment})")
