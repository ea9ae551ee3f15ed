"""A throwaway copy of the project for a benchmark: the pipeline's files (of the work tree or of a git
ref), a git and DVC repository, the MLflow store, and the environment that runs the copy's own code."""
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("pipeline", "src", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")


def checkout(ref: str | None, work: Path) -> None:
    if ref is None:
        for name in PROJECT:
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        return
    archive = subprocess.run(["git", "archive", ref, *PROJECT], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")


def environment(work: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(work / "src")}  # this copy's code, not the installed one
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def make_copy(work: Path, ref: str | None = None, config: Path | None = None) -> dict:
    """The project in `work` (with `config` merged into its params.yaml); returns the environment to run it."""
    checkout(ref, work)
    env = environment(work)
    commands = [["git", "init", "-q"], ["dvc", "init", "-q"]]
    if config is not None:
        commands.append(["fairprune-params", "apply", str(config.resolve())])
    commands.append([sys.executable, "-m", "fairprune.tracking"])
    for cmd in commands:
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    return env


def run_timed(cmd: list[str], work: Path, env: dict) -> tuple[float, str]:
    """(seconds, stdout) of a command in the copy; exits with its output's tail when it fails."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {work}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout
