"""Structured pruning through Torch-Pruning: physically smaller, consistent, reloadable."""
import pytest
import torch
from torch import nn

from fairprune import models
from fairprune.pruning import PruneContext, get_method
from fairprune.pruning.cost import macs_per_image
from fairprune.pruning.structured import count_params


class Shape:
    input_shape = (3, 16, 16)


def layer_params(model):
    """Parameter count recomputed from the layers' shapes (what the channel counts imply)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            total += m.out_channels if m.bias is not None else 0
        elif isinstance(m, nn.Linear):
            total += m.out_features * m.in_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features
    return total


@pytest.mark.parametrize("method", ["l1_filter", "fpgm"])
@pytest.mark.parametrize("arch", ["resnet10", "small_cnn", "mobilenet_v2"])
def test_structured_pruning_shrinks_and_keeps_forward(method, arch):
    torch.manual_seed(0)
    model = models.Classifier(arch, Shape.input_shape, 4, [0.5] * 3, [0.25] * 3).eval()
    dense_params, dense_macs = count_params(model), macs_per_image(model, Shape.input_shape)
    pruned = get_method(method).prune(model, 0.5, PruneContext(Shape(), torch.device("cpu")))
    params = count_params(pruned)
    assert 1 - params / dense_params == pytest.approx(0.5, abs=0.03)
    assert params == layer_params(pruned)
    assert macs_per_image(pruned, Shape.input_shape) < 0.65 * dense_macs
    out = pruned(torch.rand(3, *Shape.input_shape))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    # the dense model passed in is left untouched
    assert count_params(model) == dense_params


def test_reloaded_structured_model_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = models.Classifier("resnet10", Shape.input_shape, 4, [0.5] * 3, [0.25] * 3).eval()
    pruned = get_method("fpgm").prune(model, 0.75, PruneContext(Shape(), torch.device("cpu"))).eval()
    models.save(pruned, tmp_path / "p.pt")
    loaded, _ = models.load(tmp_path / "p.pt")
    x = torch.rand(5, *Shape.input_shape)
    assert torch.equal(pruned(x), loaded.eval()(x))
    assert count_params(loaded) == count_params(pruned) < count_params(model)


def test_fpgm_removes_filters_nearest_the_geometric_median():
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 0.1, 5.0, -5.0]).view(4, 1, 1, 1))
    head = nn.Linear(4 * 2 * 2, 2)
    with torch.no_grad():
        head.weight.fill_(1.0)  # every channel's outgoing weights alike: only the filters differ
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)

    class Tiny:
        input_shape = (1, 2, 2)
    pruned = get_method("fpgm").prune(model, 0.3, PruneContext(Tiny(), torch.device("cpu")))
    kept = sorted(pruned[0].weight.flatten().tolist())
    # distances sum: 0.0 -> 10.1, 0.1 -> 10.1, 5.0 -> 19.9, -5.0 -> 20.1: a central filter goes first
    assert 5.0 in kept and -5.0 in kept and len(kept) < 4


def test_paired_latency_alternates_and_reports_each_models_median_and_ratio():
    """A model that runs its layer twice takes about twice as long as the same model once."""
    from torch import nn

    from fairprune.pruning.cost import paired_latency_ms

    layer = nn.Linear(256, 256)
    twice = nn.Sequential(layer, layer)
    medians, ratios = paired_latency_ms([layer, twice], (256,), batch_size=256, repeats=15)
    assert len(medians) == 2 and ratios[0] == 1.0 and 1.3 < ratios[1] < 3.0


def test_model_files_leave_out_timings_and_run_ids(tmp_path):
    """Retraining to identical weights gives identical bytes: DVC then skips everything downstream."""
    import torch

    from fairprune import models

    model = models.Classifier("small_cnn", (1, 8, 8), 3, [0.5], [0.25])
    record = {"sparsity_actual": 0.9, "wall_s": 3.2, "latency_ms": 1.1, "speedup": 2.0, "mlflow_model_id": "m-1",
              "history": [{"epoch": 1, "val_acc": 0.9, "train_s": 0.4}]}
    paths = []
    for i, wall in enumerate((3.2, 7.9)):
        (tmp_path / str(i)).mkdir()
        paths.append(tmp_path / str(i) / "model.pt")  # same name: torch's archive records it
        models.save(model, paths[-1], record={**record, "wall_s": wall, "mlflow_model_id": f"m-{i}"})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert models.load(paths[0])[1]["record"] == {"sparsity_actual": 0.9, "history": [{"epoch": 1, "val_acc": 0.9}]}
    assert isinstance(models.load(paths[0])[0], torch.nn.Module)
