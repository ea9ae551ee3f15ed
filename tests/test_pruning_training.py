import copy

import pytest
import torch

from fairprune import models
from fairprune.config import DataParams, FinetuneParams, TrainParams
from fairprune.data import prepare
from fairprune.errors import ParamsError, TrainingDiverged
from fairprune.pruning import (PruneContext, available_methods, get_method, make_permanent, measure_sparsity,
                               prunable_weights)
from fairprune.training import fingerprint, fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return prepare(DataParams())


def fresh_model(data, arch="small_cnn"):
    torch.manual_seed(0)
    return models.build(arch, data)


def test_registry_lists_builtin_methods():
    assert {"magnitude", "none"} <= set(available_methods())
    with pytest.raises(ParamsError):
        get_method("oracle")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("arch", ["small_cnn", "resnet10"])
def test_magnitude_reaches_exact_global_sparsity(digits, sparsity, arch):
    model = fresh_model(digits, arch)
    get_method("magnitude").prune(model, sparsity, PruneContext(digits, CPU))
    make_permanent(model)
    stats = measure_sparsity(model)
    total = stats["prunable_total"]
    assert stats["sparsity_actual"] == pytest.approx(round(sparsity * total) / total, abs=1e-9)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    # the output layer stays dense by default
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert bool((last.weight != 0).all())


def test_magnitude_removes_the_smallest_weights(digits):
    model = fresh_model(digits)
    before = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    get_method("magnitude").prune(model, 0.6, PruneContext(digits, CPU))
    after = torch.cat([m.weight.detach().flatten() for m, _ in prunable_weights(model)])
    threshold = before.kthvalue(int(0.6 * len(before))).values
    assert bool((before[after == 0] <= threshold).all()) and bool((before[after != 0] >= threshold).all())


def test_finetuning_keeps_the_mask_fixed(digits):
    model = fresh_model(digits)
    get_method("magnitude").prune(model, 0.8, PruneContext(digits, CPU))
    zeros_before = [(m.weight == 0).clone() for m, _ in prunable_weights(model)]
    fit(model, digits, FinetuneParams(epochs=2, lr=0.05), CPU, seed=0)
    make_permanent(model)
    for zeros, (m, _) in zip(zeros_before, prunable_weights(model)):
        assert bool((m.weight[zeros] == 0).all())
    assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.8, abs=1e-4)


def test_none_method_only_at_zero_sparsity(digits):
    with pytest.raises(ParamsError) as info:
        get_method("none").check(0.5)
    assert info.value.key == "prune.sparsities"
    model = fresh_model(digits)
    reference = copy.deepcopy(model.state_dict())
    get_method("none").prune(model, 0.0, PruneContext(digits, CPU))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())


def test_training_learns_and_resumes_from_checkpoint(digits, tmp_path):
    params = TrainParams(epochs=4, lr=0.05)
    key = fingerprint("t", params.model_dump())
    full = fresh_model(digits)
    history = fit(full, digits, params, CPU, seed=0)
    assert history[-1]["val_acc"] > 0.8 and len(history) == 4

    def stop_at_epoch_3(record, step):
        if step == 3:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(fresh_model(digits), digits, params, CPU, seed=0, checkpoint=ckpt, resume_key=key, log=stop_at_epoch_3)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = fresh_model(digits)
    hist = fit(resumed, digits, params, CPU, seed=0, checkpoint=ckpt, resume_key=key)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["val_loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    # A checkpoint written under other params is ignored, not resumed.
    assert len(fit(fresh_model(digits), digits, TrainParams(epochs=1), CPU, seed=0, checkpoint=ckpt,
                   resume_key="other")) == 1


def test_nan_loss_stops_with_a_clear_message(digits):
    model = fresh_model(digits)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(model, digits, TrainParams(epochs=3, lr=1e6), CPU, seed=0)


def test_saved_model_reloads_with_identical_outputs(digits, tmp_path):
    model = fresh_model(digits).eval()
    get_method("magnitude").prune(model, 0.5, PruneContext(digits, CPU))
    make_permanent(model)
    models.save(model, tmp_path / "m.pt", record={"x": 1})
    loaded, extra = models.load(tmp_path / "m.pt")
    x = digits.images[:8].float() / 255
    assert extra["record"] == {"x": 1}
    assert torch.equal(model(x), loaded.eval()(x))


class _RecordingOptions(dict):
    """ctx.options that remembers every key a method asks for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", available_methods())
def test_each_method_reads_only_the_settings_its_stage_depends_on(name, digits):
    """A method's prune stages depend on its declared `reads` only (data/method_params/<method>.json);
    reading anything else would leave its results stale when that param changes."""
    from fairprune.config import Params

    method = get_method(name)
    options = _RecordingOptions({**Params().prune.model_dump(exclude={"methods", "sparsities"}), "finetune_epochs": 1})
    model = fresh_model(digits)
    ctx = PruneContext(digits, torch.device("cpu"), options=options, retrain=lambda *a: None,
                       rewind_state=copy.deepcopy(model.state_dict()))
    method.prune(model, 0.5, ctx)
    assert options.asked <= {"exclude_output_layer", "finetune_epochs", *method.reads}, \
        f"{name} reads {sorted(options.asked - set(method.reads))} without declaring them in `reads`"
