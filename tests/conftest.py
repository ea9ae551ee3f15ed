import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FAIRPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def repo() -> Path:
    return REPO


def sh(cmd, cwd, env, timeout=400, expect=0):
    result = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == expect, f"{cmd} exited {result.returncode}:\n{output[-6000:]}"
    return result.stdout


def write_params(work: Path, overrides: dict) -> None:
    """The repository's params.yaml with the given sections updated, into `work`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(work: Path, overrides: dict) -> dict:
    """A git + DVC copy of the pipeline in `work` with params.yaml's sections updated by
    `overrides` and the MLflow store created; returns the environment to run it with."""
    for name in ["pipeline", "src", "dvc.yaml", ".dvcignore", ".gitignore"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    write_params(work, overrides)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sh(["git", "init", "-q"], work, env)
    sh(["dvc", "init", "-q"], work, env)
    sh([sys.executable, "-m", "fairprune.tracking"], work, env)
    return env


def clean_env(extra: dict | None = None) -> dict:
    """The environment for a stage, without the MLflow URI an in-process test may have exported
    (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI), so the stage logs into its own project."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, **(extra or {})}


def python(script: str, cwd: Path, *args: str, env: dict | None = None, check: bool = True, **kwargs):
    cmd = [sys.executable, str(REPO / "pipeline" / script), *args]
    result = subprocess.run(cmd, check=False, cwd=cwd, env=clean_env(env), capture_output=True, text=True,
                            timeout=300, **kwargs)
    if check:
        assert result.returncode == 0, f"{cmd}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def prepared_and_trained(work: Path, overrides: dict) -> Path:
    """A project folder (no git, no DVC) with params.yaml updated by `overrides`, the prepared
    embedded data and seed 0's plain dense model."""
    write_params(work, overrides)
    python("prepare.py", work)
    python("train.py", work, "--seed", "0", "--variant", "plain")
    return work
