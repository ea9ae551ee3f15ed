"""A stage that DVC reruns because its inputs or fairprune's code changed must not resume a
checkpoint, or report a cached result, left behind under the old ones."""
import json
import shutil

import pytest
import torch
from conftest import prepared_and_trained, python

from fairprune import models, training

TINY = {"base": {"seeds": [0], "threads": 1}, "train": {"epochs": 2}, "finetune": {"epochs": 1},
        "tradeoff": {"sparsity": 0.5, "sweeps": {"magnitude": {"keys": ["finetune.lr"], "values": [0.01]}}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return prepared_and_trained(tmp_path_factory.mktemp("stale_base"), TINY)


def test_stage_fingerprint_follows_the_inputs_contents_and_the_code(tmp_path, monkeypatch):
    data, code = tmp_path / "data.pt", tmp_path / "module.py"
    data.write_bytes(b"one")
    code.write_text("x = 1\n")
    monkeypatch.setattr(training, "source_files", lambda: [code])
    key = training.stage_fingerprint("prune", {"lr": 0.1}, inputs=[data])
    assert training.stage_fingerprint("prune", {"lr": 0.1}, inputs=[data, data]) == key
    assert training.stage_fingerprint("prune", {"lr": 0.2}, inputs=[data]) != key
    data.write_bytes(b"two")
    assert training.stage_fingerprint("prune", {"lr": 0.1}, inputs=[data]) != key
    data.write_bytes(b"one")
    code.write_text("x = 2\n")
    assert training.stage_fingerprint("prune", {"lr": 0.1}, inputs=[data]) != key


def test_the_real_source_list_is_fairprunes_code():
    files = training.source_files()
    assert files and all(p.suffix == ".py" for p in files)
    assert any(p.name == "bifp.py" for p in files) and not any("__pycache__" in p.parts for p in files)


def test_a_tradeoff_point_is_recomputed_after_the_dense_model_changes(trained, tmp_path):
    work = tmp_path / "project"
    shutil.copytree(trained, work)
    python("tradeoff.py", work)
    first = json.loads((work / "metrics" / "tradeoff.json").read_text())["points"]
    python("tradeoff.py", work)  # nothing changed: the cached point, train_s included, is reported
    assert json.loads((work / "metrics" / "tradeoff.json").read_text())["points"] == first

    dense = work / "models" / "dense" / "s0" / "plain.pt"
    model, extra = models.load(dense)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # to the stage, a retrained dense model: other weights at the same path
    models.save(model, dense, **extra)
    python("tradeoff.py", work)
    second = json.loads((work / "metrics" / "tradeoff.json").read_text())["points"]
    assert len(second) == len(first) == 1
    assert second[0]["val_loss"] != first[0]["val_loss"]
    assert len(list((work / "checkpoints" / "tradeoff").glob("*.json"))) == 2


def test_two_fresh_trainings_write_identical_model_bytes(tmp_path):
    """The committed dense-s0 did not reproduce on a fresh clone. Training is deterministic for a given
    seed, thread count and device (docs/pipeline.md, "Reproducible bytes"): two independent processes,
    each preparing the data and training from scratch, write byte-identical models and metrics."""
    outputs = []
    for run in ("first", "second"):
        work = tmp_path / run
        work.mkdir()
        prepared_and_trained(work, {"base": {"threads": 1}, "train": {"epochs": 2}})
        metrics = json.loads((work / "metrics" / "train" / "plain-s0.json").read_text())
        outputs.append(((work / "data" / "prepared.pt").read_bytes(),
                        (work / "models" / "dense" / "s0" / "plain.pt").read_bytes(),
                        {k: metrics[k] for k in ("train_loss", "val_loss", "val_acc")}))
    assert outputs[0][0] == outputs[1][0], "prepared data differ"
    assert outputs[0][2] == outputs[1][2]
    assert outputs[0][1] == outputs[1][1], "model bytes differ"
