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
