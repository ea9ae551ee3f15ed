"""Unstructured criteria against their formulas on tiny networks where the answer is computable."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairprune.pruning import PruneContext, get_method, make_permanent, measure_sparsity, prunable_weights
from fairprune.pruning.base import GlobalTopMasks, keep_top_masks

CPU = torch.device("cpu")


class TinyData:
    """The slice of PreparedData a scoring method reads."""

    def __init__(self, seed=0, n=48, shape=(1, 4, 4), classes=3):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        self.targets = torch.randint(0, classes, (n,), generator=g)
        self.input_shape = shape

    def subset(self, split):
        return self.images, self.targets, torch.zeros_like(self.targets)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 6), nn.Tanh(),
                         nn.Linear(6, 3))


def ctx_for(data, **options):
    return PruneContext(data, CPU, seed=0, exclude_output_layer=False,
                        options={"score_batches": 2, "score_batch_size": 16, **options})


def reference_loss(model, ctx, temperature=1.0):
    batches = list(ctx.batches())
    return sum(F.cross_entropy(model(x) / temperature, y) for x, y in batches) / len(batches)


def test_snip_scores_equal_abs_weight_times_gradient():
    data, model = TinyData(), tiny_model()
    ctx = ctx_for(data)
    targets = prunable_weights(model, False)
    weights = [m.weight for m, _ in targets]
    grads = torch.autograd.grad(reference_loss(model, ctx), weights)
    scores = get_method("snip").scores(model, targets, ctx, 0.5)
    for s, w, g in zip(scores, weights, grads):
        torch.testing.assert_close(s, (w * g).abs().detach())


def test_grasp_removes_the_highest_minus_theta_hg():
    data, model = TinyData(), tiny_model()
    temperature = 2.0
    ctx = ctx_for(data, grasp_temperature=temperature)
    targets = prunable_weights(model, False)
    weights = [m.weight for m, _ in targets]
    shapes = [w.shape for w in weights]
    flat0 = torch.cat([w.detach().flatten() for w in weights])

    def loss_of(flat):
        chunks = flat.split([s.numel() for s in shapes])
        params = {f"{name}": p for name, p in model.named_parameters()}
        for (m, _), chunk, shape in zip(targets, chunks, shapes):
            name = [k for k, mod in model.named_modules() if mod is m][0]
            params[f"{name}.weight"] = chunk.view(shape)
        batches = list(ctx.batches())
        return sum(F.cross_entropy(torch.func.functional_call(model, params, (x,)) / temperature, y)
                   for x, y in batches) / len(batches)

    hessian = torch.autograd.functional.hessian(loss_of, flat0)
    g = torch.autograd.functional.jacobian(loss_of, flat0)
    minus_s = flat0 * (hessian @ g)  # theta * Hg = -S
    scores = torch.cat([s.flatten() for s in get_method("grasp").scores(model, targets, ctx, 0.5)])
    torch.testing.assert_close(scores, minus_s, rtol=1e-4, atol=1e-7)

    get_method("grasp").prune(model, 0.5, ctx)
    kept = torch.cat([m.weight_mask.flatten() for m, _ in targets]).bool()
    s = -minus_s
    assert s[~kept].min() >= s[kept].max() - 1e-9  # every removed weight has a higher S than every kept one


def test_synflow_scores_do_not_depend_on_data():
    targets_a = prunable_weights(model_a := tiny_model(), False)
    targets_b = prunable_weights(model_b := tiny_model(), False)
    a = get_method("synflow").scores(model_a, targets_a, ctx_for(TinyData(seed=1), synflow_rounds=10), 0.8)
    b = get_method("synflow").scores(model_b, targets_b, ctx_for(TinyData(seed=2), synflow_rounds=10), 0.8)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_synflow_single_round_is_abs_theta_times_gradient_of_linearised_output():
    model = tiny_model()
    targets = prunable_weights(model, False)
    probe = tiny_model()
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    probe = probe.double()
    weights = [m.weight for m in probe if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(probe(torch.ones(1, 1, 4, 4, dtype=torch.float64)).sum(), weights)
    expected = [(g * w).abs() for g, w in zip(grads, weights)]
    scores = get_method("synflow").scores(model, targets, ctx_for(TinyData(), synflow_rounds=1), 0.5)
    kept_scores = torch.cat([s.flatten() for s in scores])
    expected_flat = torch.cat([e.flatten() for e in expected]).float()
    survivors = kept_scores > 0
    torch.testing.assert_close(kept_scores[survivors] - 1.0, expected_flat[survivors])


@pytest.mark.parametrize("method", ["magnitude", "magnitude_layerwise", "random", "snip", "grasp", "synflow"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_every_unstructured_method_reaches_the_target_sparsity(method, sparsity):
    model = tiny_model()
    ctx = ctx_for(TinyData(), synflow_rounds=5)
    get_method(method).prune(model, sparsity, ctx)
    make_permanent(model)
    stats = measure_sparsity(model, exclude_output_layer=False)
    assert stats["sparsity_actual"] == pytest.approx(sparsity, abs=0.02)
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)


def test_layerwise_prunes_each_layer_at_the_same_rate():
    model = tiny_model()
    get_method("magnitude_layerwise").prune(model, 0.5, ctx_for(TinyData()))
    for m, _ in prunable_weights(model, False):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("keep", [0, 1, 7, 12, 20])
def test_global_top_masks_keep_exactly_the_highest_scores_even_with_ties(keep):
    scores = [torch.tensor([[0.5, 2.0], [1.0, 1.0]]), torch.tensor([1.0, 3.0, 1.0, 0.1]),
              torch.tensor([1.0] * 6)]
    masks = keep_top_masks(scores, keep)
    flat, kept = torch.cat([s.flatten() for s in scores]), torch.cat([m.flatten() for m in masks])
    assert [m.shape for m in masks] == [s.shape for s in scores]
    assert int(kept.sum()) == min(keep, flat.numel())
    if 0 < keep < flat.numel():
        assert flat[kept == 1].min() >= flat[kept == 0].max()


def test_drifting_scores_get_the_same_masks_as_a_fresh_selection_whether_the_window_holds_or_not():
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(40, 30, generator=generator), torch.rand(500, generator=generator)]
    top = GlobalTopMasks(keep=517)
    for step in range(12):
        drift = 1e-4 if step < 6 else 0.3  # small moves stay in the window, large ones leave it
        scores = [s + drift * torch.randn(s.shape, generator=generator) for s in scores]
        if step == 9:
            scores[1][:5] = scores[1][5]  # ties at or near the threshold
        for got, expected in zip(top(scores), keep_top_masks(scores, 517)):
            assert torch.equal(got, expected)
