"""Plain `dvc repro` validates the whole params file first: a key no stage reads, or a bad value in a
stage that would otherwise run, stops it before DVC deletes any output."""
import subprocess

import yaml
from conftest import make_project, sh


def repro(work, env, *stages):
    result = subprocess.run(["dvc", "repro", *stages], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_a_bad_params_file_stops_dvc_repro_before_any_output_is_deleted(tmp_path):
    env = make_project(tmp_path, {"base": {"threads": 1}})
    sh(["dvc", "repro", "prepare"], tmp_path, env)
    prepared = (tmp_path / "data" / "prepared.pt").read_bytes()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())

    params["foo"] = 1  # read by no stage: passed with exit 0 before
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code, output = repro(tmp_path, env)
    assert code != 0 and "params key 'foo'" in output and "unknown key" in output
    assert (tmp_path / "data" / "prepared.pt").read_bytes() == prepared

    del params["foo"]
    params["data"]["val_fraction"] = "0.2"  # prepare would run, and DVC would delete its outputs first
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code, output = repro(tmp_path, env, "prepare")
    assert code != 0 and "data.val_fraction" in output
    assert (tmp_path / "data" / "prepared.pt").read_bytes() == prepared


def test_editing_a_manifest_reruns_prepare(tmp_path):
    """prepare depended on no data file: cutting a manifest from 40 rows to 36 left the old data."""
    import json

    from test_data import write_manifest

    (tmp_path / "own").mkdir()
    csv_path = write_manifest(tmp_path / "own", with_split=True)
    work = tmp_path / "project"
    work.mkdir()
    env = make_project(work, {"base": {"threads": 1},
                                                "data": {"dataset": "manifest", "root": str(csv_path),
                                                         "image_size": 8, "target": "target", "group": "group",
                                                         "imbalance": {"groups": [], "fraction": 1.0}}})
    sh(["dvc", "repro", "prepare"], work, env)
    assert json.loads((work / "data" / "stats.json").read_text())["n_per_split"]["train"] == 24
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(rows[:-4]) + "\n")  # rows i = 36-39, all in the test split
    code, output = repro(work, env, "prepare")
    assert code == 0 and "Running stage 'prepare'" in output
    assert sum(json.loads((work / "data" / "stats.json").read_text())["n_per_split"].values()) == 36
    code, output = repro(work, env, "prepare")
    assert "Running stage 'prepare'" not in output  # unchanged data: skipped


def _force_prepare(work, **base):
    """Change a data param, so that prepare would rerun (and DVC delete its outputs first)."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["val_fraction"] = 0.2
    params["base"].update(base)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_an_unusable_tracking_store_stops_dvc_repro_before_any_output_is_written(tmp_path):
    """An unwritable store gave a traceback after data/prepared.pt had been overwritten."""
    env = make_project(tmp_path, {"base": {"threads": 1}})
    sh(["dvc", "repro", "prepare"], tmp_path, env)
    prepared = (tmp_path / "data" / "prepared.pt").read_bytes()

    _force_prepare(tmp_path, tracking_uri="sqlite:///no/such/folder/mlflow.db")
    code, output = repro(tmp_path, env, "prepare")
    assert code != 0 and "no/such/folder" in output and "does not exist" in output and "tracking_uri" in output
    assert (tmp_path / "data" / "prepared.pt").read_bytes() == prepared

    _force_prepare(tmp_path, tracking_uri="sqlite:///mlflow.db")
    code, output = repro(tmp_path, {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "prepare")
    assert code != 0 and "http://127.0.0.1:9 does not answer" in output
    assert (tmp_path / "data" / "prepared.pt").read_bytes() == prepared


def test_a_python_without_fairprune_on_path_is_named_before_any_stage_runs(tmp_path):
    """`.venv/bin/dvc repro` without the venv activated: "No module named 'fairprune'" after DVC had
    deleted outputs. The validate stage, first in every repro, now names the cause and the fix."""
    import os
    import sys

    env = make_project(tmp_path, {"base": {"threads": 1}})
    sh(["dvc", "repro", "prepare"], tmp_path, env)
    prepared = (tmp_path / "data" / "prepared.pt").read_bytes()
    _force_prepare(tmp_path)
    shim = tmp_path / "other-python"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages
    (shim / "python").chmod(0o755)
    code, output = repro(tmp_path, {**env, "PATH": f"{shim}{os.pathsep}{env['PATH']}"}, "prepare")
    assert code != 0 and "not the project's environment" in output and "source .venv/bin/activate" in output
    assert (tmp_path / "data" / "prepared.pt").read_bytes() == prepared
    assert sh(["dvc", "repro", "prepare"], tmp_path, env)  # with the right python it goes on


def test_store_problem_names_each_kind_of_unusable_store(tmp_path, monkeypatch):
    from fairprune.config import BaseParams
    from fairprune.tracking import store_problem

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_problem(BaseParams()) is None  # the default: a new SQLite file in the project
    (tmp_path / "mlflow.db").write_text("not a database")
    assert "is not an SQLite database" in store_problem(BaseParams())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert "does not answer" in store_problem(BaseParams(), timeout_s=1)
