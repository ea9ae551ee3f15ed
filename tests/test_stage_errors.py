"""Each bad input stops the stage with one message (key, value, what is allowed), exit 2, nothing written."""
import subprocess
import sys

import pytest
import yaml


def run_stage(repo, tmp_path, script, params, *args):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(repo / "pipeline" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def write_manifest(tmp_path):
    from PIL import Image
    rows = ["path,target,group,split"]
    for i, split in enumerate(["train", "val", "test", "train"]):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{'solo' if i == 3 else 'all'},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "m.csv")


CASES = {
    "unknown key": ({"train": {"epoch": 3}}, "train.epoch"),
    "wrong type": ({"train": {"lr": "fast"}}, "train.lr"),
    "sparsity outside [0, 1)": ({"prune": {"sparsities": [0.5, 1.2]}}, "prune.sparsities.1"),
    "unknown dataset": ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    "unknown model": ({"model": {"arch": "vgg99"}}, "model.arch"),
    "unknown method": ({"prune": {"methods": ["oracle"]}}, "prune.methods.0"),
    "group attribute that does not exist": (
        {"data": {"dataset": "celeba", "root": "/nowhere", "group": "Hair_Colour"}}, "data.group"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_stop_prepare_before_any_output(repo, tmp_path, case):
    params, key = CASES[case]
    result = run_stage(repo, tmp_path, "prepare.py", params)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"'{key}'" in error_lines[0] and "allowed:" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_group_missing_from_a_split(repo, tmp_path):
    csv_path = write_manifest(tmp_path)
    before = sorted([p.name for p in tmp_path.iterdir()] + ["params.yaml"])
    result = run_stage(repo, tmp_path, "prepare.py", {"data": {"dataset": "manifest", "root": csv_path}})
    assert result.returncode == 2
    assert "'data.group'" in result.stderr and "['solo']" in result.stderr and "'val'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_prune_stage_rejects_out_of_range_sparsity_argument(repo, tmp_path):
    result = run_stage(repo, tmp_path, "prune.py", {}, "--method", "magnitude", "--sparsity", "1.0", "--seed", "0")
    assert result.returncode == 2 and "'prune.sparsities'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
