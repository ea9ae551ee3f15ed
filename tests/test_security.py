"""Nothing runs from a file or a param: planted pickles, shell payloads in params, manifest paths
that leave their folder. Each test plants the payload and checks that it did not run."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, clean_env
from test_data import write_manifest
from fairprune import models, tensorfile, training
from fairprune.data import load_prepared, manifest
from fairprune.errors import DataError


class Payload:
    """Unpickling this runs `touch <marker>`: what a planted file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("loader", ["model", "prepared", "checkpoint"])
def test_a_planted_pickle_is_refused_and_does_not_run(tmp_path, loader):
    marker, planted = tmp_path / "ran", tmp_path / "planted.pt"
    torch.save({"model": Payload(marker), "fingerprint": "x"}, planted)
    if loader == "checkpoint":  # set aside with a warning; the stage starts over
        assert training.read_checkpoint(planted, "x") is None
        assert (tmp_path / "planted.pt.bad").exists() and not planted.exists()
    else:
        load = models.load if loader == "model" else load_prepared
        with pytest.raises(tensorfile.UnsafeFile, match=str(planted)):
            load(planted)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"])
def test_a_corrupted_checkpoint_is_set_aside_not_fatal(tmp_path, content):
    path = tmp_path / "stage.ckpt"
    path.write_bytes(content)
    assert training.read_checkpoint(path, "key") is None
    assert (tmp_path / "stage.ckpt.bad").read_bytes() == content
    with pytest.raises(tensorfile.CorruptFile, match="stage.ckpt.bad"):
        models.load(tmp_path / "stage.ckpt.bad")


@pytest.mark.parametrize("arch", ["small_cnn", "mobilenet_v2"])
def test_a_physically_pruned_model_round_trips_through_the_tensor_only_format(tmp_path, arch):
    import copy
    from types import SimpleNamespace

    from fairprune.pruning import PruneContext, get_method

    torch.manual_seed(0)
    model = models.Classifier(arch, (3, 16, 16), 3, [0.5] * 3, [0.25] * 3).eval()
    ctx = PruneContext(data=SimpleNamespace(input_shape=(3, 16, 16)), device=torch.device("cpu"))
    pruned = get_method("l1_filter").prune(copy.deepcopy(model), 0.5, ctx).eval()
    models.save(pruned, tmp_path / "m.pt", record={"sparsity": 0.5})
    loaded, extra = models.load(tmp_path / "m.pt")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))
    assert extra == {"record": {"sparsity": 0.5}}
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


MATRIX_KEYS = [("prune", "methods", ["magnitude$(touch {marker})"]),
               ("prune", "sparsities", ["0.9$(touch {marker})"]),
               ("base", "seeds", ["0$(touch {marker})"]),
               ("train", "variants", ["plain$(touch {marker})"])]


@pytest.mark.parametrize("section,key,value", MATRIX_KEYS, ids=[f"{s}.{k}" for s, k, _ in MATRIX_KEYS])
def test_no_params_value_reaches_a_stage_shell_command(tmp_path, section, key, value):
    """DVC pastes matrix values into `cmd` unquoted; the commands must hold none, and a stage run the
    way DVC runs it (its cmd through a shell, DVC_STAGE set) rejects the value without running it."""
    from dvc.repo import Repo

    marker = tmp_path / "ran"
    for name in ("dvc.yaml",):
        (tmp_path / name).write_text((REPO / name).read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section][key] = [v.format(marker=marker) for v in value]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=clean_env())
    stages = [s for s in Repo(str(tmp_path)).index.stages if s.name.startswith(("prune@", "train@"))]
    assert stages and all("touch" not in s.cmd for s in stages), [s.cmd for s in stages][:3]
    poisoned = next(s for s in stages if "touch" in s.name)
    (tmp_path / "pipeline").symlink_to(REPO / "pipeline")
    result = subprocess.run(poisoned.cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=clean_env({"DVC_STAGE": poisoned.name,
                                           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.jpg", "imgs/../../outside.jpg"])
def test_manifest_paths_cannot_leave_the_manifest_folder(tmp_path, bad):
    folder = tmp_path / "set"
    folder.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"not read")
    csv_path = write_manifest(folder, with_split=False)
    csv_path.write_text(csv_path.read_text() + f"{bad},cat,a\n")
    with pytest.raises(DataError, match=r"data\.csv:\d+: image path") as info:
        manifest.load(csv_path, 8)
    assert bad in str(info.value)


def test_a_symlink_out_of_the_manifest_folder_is_refused_and_image_root_widens_the_confinement(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    csv_path = write_manifest(folder, with_split=False)
    (folder / "link").symlink_to(tmp_path, target_is_directory=True)
    rows = csv_path.read_text()
    csv_path.write_text(rows.replace("imgs/0.jpg", "link/set/imgs/0.jpg"))  # a link that stays inside: fine
    assert len(manifest.load(csv_path, 8).targets) == 40
    (tmp_path / "secret.jpg").write_bytes(b"x")
    csv_path.write_text(rows.replace("imgs/0.jpg", "link/secret.jpg"))
    with pytest.raises(DataError, match="data.csv:2: image path 'link/secret.jpg' leads outside"):
        manifest.load(csv_path, 8)
    csv_path.write_text(rows.replace("imgs/", "set/imgs/"))  # relative to an explicit data.image_root
    assert len(manifest.load(csv_path, 8, image_root=tmp_path).targets) == 40
