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
