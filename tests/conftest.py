import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Debian's PostgreSQL server binaries, newest version first
PG_BIN = next((p.parent for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True,
                                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)),
              Path("/usr/lib/postgresql/15/bin"))
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing(why: str) -> None:
    """Skip, except in CI (.ci/run sets FAIRPRUNE_REQUIRE_POSTGRES): there a PostgreSQL test must run."""
    if os.environ.get("FAIRPRUNE_REQUIRE_POSTGRES"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a loopback port (Debian's server binaries, `initdb` in tmp)."""
    if not (PG_BIN / "initdb").exists():
        missing(f"PostgreSQL server binaries not found in {PG_BIN} (Debian: apt-get install postgresql)")
    run_as = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            missing("running as root without runuser to drop to the postgres user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no postgres user")
        run_as = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    home = Path(tempfile.mkdtemp(prefix="fairprune-pg-"))
    home.chmod(0o755)
    data = home / "pg"
    data.mkdir()
    if run_as:
        shutil.chown(data, "postgres")
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def start_mlflow_server(work: Path, backend: str):
    """`mlflow server` on a loopback port with `backend` as its store; (process, URI), or a skip."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", backend, "--artifacts-destination", str(work / "artifacts"),
                                "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("mlflow server did not start within 60 s")
