"""BiFP: the straight-through hard mask, the weight level against plain SGD, the surrogate bound,
the score gradient (with the implicit-gradient term) against finite differences."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fairprune.config import BifpParams
from fairprune.fairness.surrogate import parity_penalty, parity_surrogates
from fairprune.pruning import PruneContext, get_method, measure_sparsity
from fairprune.training import PlainStep

CPU = torch.device("cpu")


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def dense_copy(model):
    """A plain copy of a masked tiny model (deepcopy fails on pruning hooks' non-leaf weights)."""
    net = tiny_model()
    with torch.no_grad():
        for i in (0, 2, 4):
            source = model[i]
            weight = source.weight_orig * source.weight_mask if hasattr(source, "weight_orig") else source.weight
            net[i].weight.copy_(weight)
            net[i].bias.copy_(source.bias)
    return net


def batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)


def bifp_step(method: str, sparsity: float, lr=0.05, **settings):
    model = tiny_model()
    method = get_method(method)
    ctx = PruneContext(data=SimpleNamespace(num_groups=2), device=CPU, options={"bifp": settings})
    method.prune(model, sparsity, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, method.training_step(model, optimizer, CPU)


def test_hard_mask_keeps_exactly_the_target_sparsity_while_scores_move():
    model, step = bifp_step("bifp_uns", 0.7, score_lr=0.05)
    masks_before = [model[0].weight_mask.clone(), model[2].weight_mask.clone()]
    for i in range(20):
        step(*batch(seed=i))
        assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.7, abs=1 / 128)
    changed = sum(int((a != b).sum()) for a, b in zip(masks_before, [model[0].weight_mask, model[2].weight_mask]))
    assert changed > 0  # the score steps did move the mask


def test_mask_is_fixed_in_the_last_epochs_while_the_weights_still_train():
    model, method = tiny_model(), get_method("bifp_uns")
    ctx = PruneContext(data=SimpleNamespace(num_groups=2), device=CPU,
                       options={"bifp": {"score_lr": 0.05, "mask_freeze_epochs": 1}})
    method.prune(model, 0.7, ctx)
    step = method.training_step(model, torch.optim.SGD(model.parameters(), lr=0.05), CPU)

    def masks():
        return [model[i].weight_mask.clone() for i in (0, 2)]

    method.before_finetune_epoch(model, 1, 3)
    before = masks()
    for i in range(10):
        step(*batch(seed=i))
    assert any((a != b).any() for a, b in zip(before, masks()))  # before the last epoch the mask moves
    method.before_finetune_epoch(model, 2, 3)
    frozen, weights = masks(), model[0].weight_orig.detach().clone()
    for i in range(10):
        step(*batch(seed=10 + i))
    assert all(torch.equal(a, b) for a, b in zip(frozen, masks()))
    assert not torch.equal(weights, model[0].weight_orig)


def test_weight_level_without_fairness_is_plain_masked_sgd():
    model, step = bifp_step("bifp_uns", 0.5, lambda_w=0.0, lambda_m=0.0, ig_scale=0.0, inner_steps=1)
    reference = dense_copy(model)
    for i in (0, 2):
        torch.nn.utils.prune.custom_from_mask(reference[i], "weight", model[i].weight_mask.clone())
    plain = PlainStep(reference, torch.optim.SGD(reference.parameters(), lr=0.05), CPU)
    x, y, groups = batch()
    step(x, y, groups)  # call 1 of K + 1 = 2: a weight step
    plain(x, y, groups)
    for a, b in zip(dense_copy(model).parameters(), dense_copy(reference).parameters()):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("surrogate", ["hinge", "logistic"])  # linear (1 + t) is no bound below t = -1
def test_surrogates_bound_the_accuracy_gap_both_ways(surrogate):
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(200, 4, generator=g) * 3
        y, groups = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 3, (200,), generator=g)
        correct = (logits.argmax(1) == y).float()
        forward, mirrored, present = parity_surrogates(logits, y, groups, 3, surrogate)
        for a in range(3):
            gap = correct[groups == a].mean() - correct[groups != a].mean()
            assert forward[a] >= gap - 1e-6 and mirrored[a] >= -gap - 1e-6
        assert present.all()
    # one group only: no penalty
    assert parity_penalty(logits, y, torch.zeros_like(groups), 3).item() == 0.0


@pytest.mark.parametrize("surrogate", ["logistic", "hinge", "linear", "sigmoid"])
@pytest.mark.parametrize("num_groups,absent", [(2, None), (3, None), (4, 2)])
def test_penalty_has_the_value_and_gradient_of_the_largest_half_difference_of_f_and_its_mirror(
        surrogate, num_groups, absent):
    g = torch.Generator().manual_seed(num_groups)
    logits = (torch.randn(96, 3, generator=g) * 3).requires_grad_()
    y, groups = torch.randint(0, 3, (96,), generator=g), torch.randint(0, num_groups, (96,), generator=g)
    if absent is not None:
        groups[groups == absent] = 0
    forward, mirrored, present = parity_surrogates(logits, y, groups, num_groups, surrogate)
    reference = ((forward - mirrored) / 2)[present].abs().max()
    expected = torch.autograd.grad(reference, logits)[0]
    penalty = parity_penalty(logits, y, groups, num_groups, surrogate)
    assert penalty.item() == pytest.approx(reference.item(), abs=1e-5)
    assert torch.allclose(torch.autograd.grad(penalty, logits)[0], expected, atol=1e-6)
    alone = parity_penalty(logits, y, torch.zeros_like(groups), num_groups, surrogate)
    assert alone.item() == 0.0 and not torch.autograd.grad(alone, logits)[0].any()


def soft_accuracy_logits(accuracies: list[float], per_group: int = 100) -> tuple[torch.Tensor, ...]:
    """Two-class logits whose sigmoid-surrogate soft accuracy is exactly `accuracies[a]` in group a:
    every sample of group a has the margin z with (1 + tanh(z / 2)) / 2 = accuracy."""
    margin = [2 * math.atanh(2 * a - 1) for a in accuracies]
    groups = torch.arange(len(accuracies)).repeat_interleave(per_group)
    z = torch.tensor(margin, dtype=torch.float64)[groups]
    logits = torch.stack([z, torch.zeros_like(z)], 1).requires_grad_()
    return logits, torch.zeros(len(groups), dtype=torch.long), groups


def test_penalty_pushes_a_single_lagging_group_among_many():
    # Seen on the old code (max without |.|): nine groups at soft accuracy 0.9 and one at 0.5 gave a
    # penalty of 0.044 and the lagging group no more push than the others.
    logits, y, groups = soft_accuracy_logits([0.9] * 9 + [0.5])
    penalty = parity_penalty(logits, y, groups, 10, "sigmoid")
    assert penalty.item() == pytest.approx((0.8 - 0.0) / 2, abs=1e-6)  # |D_lagging - D_rest| / 2 = 0.40
    grad = torch.autograd.grad(penalty, logits)[0][:, 0]  # d penalty / d margin
    lagging, others = grad[groups == 9], grad[groups != 9]
    assert (lagging < 0).all() and (others > 0).all()  # raise the lagging margins, lower the rest towards them
    assert lagging.abs().min() > 5 * others.abs().max()


def test_sigmoid_penalty_is_a_soft_accuracy_gap_that_confident_samples_cannot_dominate():
    y, groups = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1])
    right, wrong = [20.0, 0.0], [0.0, 20.0]
    half_wrong = torch.tensor([right, right, right, wrong])  # group 0 all right, group 1 half right
    assert parity_penalty(half_wrong, y, groups, 2, "sigmoid").item() == pytest.approx(0.5, abs=1e-6)
    confident = torch.tensor([[200.0, 0.0], [200.0, 0.0], right, right])  # every sample right
    assert parity_penalty(confident, y, groups, 2, "sigmoid").item() == pytest.approx(0.0, abs=1e-6)
    assert parity_penalty(confident, y, groups, 2, "logistic").item() > 50  # the mean-margin gap


HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::item", "aten::is_nonzero"}


def host_reads(fn) -> set[str]:
    """The ops `fn` runs that copy a device value back to the host (on a GPU each waits for the queue)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()} & HOST_READS


@pytest.mark.parametrize("method,settings", [("bifp_uns", {}), ("bifp_lagrangian", {"dual_split": "train"}),
                                             ("bifp_lagrangian", {"dual_split": "val"})])
def test_weight_steps_and_the_penalty_never_read_back_to_the_host(method, settings):
    x, y, groups = batch()
    assert host_reads(lambda: parity_penalty(torch.randn(64, 3, requires_grad=True), y, groups, 2).backward()) == set()
    assert host_reads(lambda: parity_penalty(torch.randn(64, 3), y, torch.zeros_like(groups), 2)) == set()
    val = (torch.randint(0, 256, (50, 4), dtype=torch.uint8), y[:50], groups[:50])
    model, method = tiny_model(), get_method(method)
    method.prune(model, 0.5, PruneContext(data=SimpleNamespace(num_groups=2, subset=lambda split: val), device=CPU,
                                          options={"bifp": settings}))
    step = method.training_step(model, torch.optim.SGD(model.parameters(), lr=0.05), CPU)
    assert host_reads(lambda: step(x, y, groups)) == set()  # call 1 of K + 1 = 2: a weight step
    assert step.calls == 1


@pytest.mark.parametrize("lambda_w,lambda_m", [(0.5, 0.5), (2.0, 0.5), (0.0, 1.0)])
def test_score_gradient_matches_finite_differences_of_both_levels_in_the_masked_weights(lambda_w, lambda_m):
    # The implicit-gradient factor is the LOWER level's gradient (l + lambda_w F); the old code used
    # the upper level's twice, which differs whenever lambda_w != lambda_m (the ablations).
    # logistic: its penalty is far from the kink of |D_a - D_rest| here, so central differences are exact
    model, step = bifp_step("bifp_uns", 0.5, lambda_w=lambda_w, lambda_m=lambda_m, ig_scale=3.0, score_lr=1e-3,
                            surrogate="logistic")
    x, y, groups = batch()
    layer = model[2]
    theta, mask = layer.weight_orig.detach().clone(), layer.weight_mask.clone()
    step.calls = 1  # the next call is the score step
    step(x, y, groups)
    score_grad = step.scores[1].grad  # what the score optimiser stepped on

    def loss_at(z, weight):
        net = dense_copy(model)
        with torch.no_grad():
            net[2].weight.copy_(z)
        logits = net(x)
        return float(step._objective(logits, y, groups, weight)[0].detach())

    def derivative(z, i, j, weight, eps=1e-3):
        up, down = z.clone(), z.clone()
        up[i, j] += eps
        down[i, j] -= eps
        return (loss_at(up, weight) - loss_at(down, weight)) / (2 * eps)

    z = theta * mask
    for i, j in [(0, 0), (3, 5), (7, 2), (11, 14)]:
        upper, lower = derivative(z, i, j, lambda_m), derivative(z, i, j, lambda_w)
        expected = upper * theta[i, j] - 3.0 * lower * upper * mask[i, j]
        assert float(score_grad[i, j]) == pytest.approx(float(expected), rel=0.05, abs=2e-5)


def test_lagrangian_multipliers_grow_on_violated_groups_and_survive_a_checkpoint():
    model, step = bifp_step("bifp_lagrangian", 0.5, tolerance=0.0, dual_lr=0.5)
    x, y, _ = batch()
    groups = (y == 0).long()  # group 1 = class 0: its errors differ from the rest
    for _ in range(6):
        step(x, y, groups)
    values = step.multiplier.weight.detach().flatten()
    assert (values >= 0).all() and values.max() > 0
    state = step.state_dict()
    _, fresh = bifp_step("bifp_lagrangian", 0.5, tolerance=0.0, dual_lr=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.multiplier.weight, step.multiplier.weight) and fresh.calls == step.calls
    assert all(torch.equal(a, b) for a, b in zip(fresh.scores, step.scores))


@pytest.mark.parametrize("dual_split", ["train", "val"])
def test_lagrangian_dual_split_val_ascends_on_held_out_violations(dual_split):
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (120, 4), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, 3, (120,), generator=g)
    val = (images, targets, (targets == 0).long())  # held out: group 1 = class 0, whose errors differ
    data = SimpleNamespace(num_groups=2, subset=lambda split: val)
    ctx = PruneContext(data=data, device=CPU, options={"bifp": {"tolerance": 0.0, "dual_lr": 0.5,
                                                                "dual_split": dual_split}})

    def new_step():
        model, method = tiny_model(), get_method("bifp_lagrangian")
        method.prune(model, 0.5, ctx)
        return method.training_step(model, torch.optim.SGD(model.parameters(), lr=0.05), CPU)

    step = new_step()
    x, y, _ = batch()
    for _ in range(6):
        step(x, y, torch.zeros_like(y))  # the training batches hold group 0 only
    grew = float(step.multiplier.weight.detach().flatten()[1]) > 0
    assert grew == (dual_split == "val")
    if dual_split == "val":
        state = step.state_dict()
        fresh = new_step()
        fresh.load_state_dict(state)
        assert fresh.heldout.position == step.heldout.position
        assert all(torch.equal(a, b) for a, b in zip(fresh.heldout.next(), step.heldout.next()))


def test_ablations_fix_their_settings():
    ctx = PruneContext(data=None, device=CPU, options={"bifp": {"lambda_w": 2.0, "lambda_m": 3.0}})
    assert get_method("bifp_no_mask_fair").settings(ctx) == BifpParams(lambda_w=2.0, lambda_m=0.0)
    assert get_method("bifp_no_fair").settings(ctx) == BifpParams(lambda_w=0.0, lambda_m=0.0)
    assert get_method("bifp_no_ig").settings(ctx).ig_scale == 0.0


@pytest.mark.parametrize("arch", ["small_cnn", "resnet10", "mobilenet_v2"])
def test_structured_export_reproduces_the_masked_model(arch):
    check_structured_export(arch, CPU)


def check_structured_export(arch, device):
    """bifp_str: after score steps have moved the channel masks (bringing back pruned channels),
    removing the masked channels through the dependency graph gives a smaller model with the masked
    model's outputs."""
    from fairprune.models import Classifier
    from fairprune.pruning.structured import count_params

    torch.manual_seed(0)
    model = Classifier(arch, (3, 16, 16), 2, [0.5] * 3, [0.25] * 3).to(device)
    dense = count_params(model)
    method = get_method("bifp_str")
    ctx = PruneContext(data=SimpleNamespace(num_groups=2, input_shape=(3, 16, 16)), device=device,
                       options={"bifp": {"score_lr": 0.05}})
    method.prune(model, 0.6, ctx)
    first = [m.clone() for m in method.layout.masks(method.layout.scores)]
    step = method.training_step(model, torch.optim.SGD(model.parameters(), lr=0.01), device)
    model.train()
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        step(torch.rand(16, 3, 16, 16, generator=g).to(device), torch.randint(0, 2, (16,), generator=g).to(device),
             torch.randint(0, 2, (16,), generator=g).to(device))
    masks = method.layout.masks(method.layout.scores)
    assert any(((a == 0) & (b == 1)).any() for a, b in zip(first, masks))  # a pruned channel came back
    model.eval()
    x = torch.rand(8, 3, 16, 16, device=device)
    with torch.no_grad():
        masked = model(x)
        exported = method.finish(model)
        # On a GPU the two models' convolutions run in TF32 through different cuDNN kernels.
        assert torch.allclose(exported(x), masked, atol=1e-5 if device.type == "cpu" else 1e-3)
    assert not any(hasattr(m, "weight_orig") for m in exported.modules())
    assert 1 - count_params(exported) / dense == pytest.approx(0.6, abs=0.02)


def structured_step(arch, sparsity=0.6, **settings):
    from fairprune.models import Classifier

    torch.manual_seed(0)
    model = Classifier(arch, (3, 16, 16), 2, [0.5] * 3, [0.25] * 3)
    method = get_method("bifp_str")
    ctx = PruneContext(data=SimpleNamespace(num_groups=2, input_shape=(3, 16, 16)), device=CPU,
                       options={"bifp": {"lambda_w": 0.0, "lambda_m": 0.0, "ig_scale": 0.0, **settings}})
    method.prune(model, sparsity, ctx)
    step = method.training_step(model, torch.optim.SGD(model.parameters(), lr=0.01), CPU)
    g = torch.Generator().manual_seed(1)
    data = torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 2, (16,), generator=g), \
        torch.randint(0, 2, (16,), generator=g)
    return model, method, step, data


@pytest.mark.parametrize("arch", ["small_cnn", "resnet10", "mobilenet_v2"])
def test_structured_score_step_can_bring_back_a_masked_channel_of_every_group(arch):
    """A masked channel's activation is exactly 0 and ReLU passes no gradient there, so scoring the
    masked parameters left every masked channel of a ReLU-followed group with score gradient 0. Gated
    after the activation, every group's masked channels get a gradient, and the score-step forward
    is still the masked model's."""
    model, method, step, (x, y, groups) = structured_step(arch)
    channel_masks = method.layout.channel_masks(method.layout.scores)
    model.eval()
    with torch.no_grad():
        masked = model(x)
        with method.layout.gates.applied(step._pruning_tensors("mask"), channel_masks):
            assert torch.allclose(model(x), masked, atol=1e-5)
    model.train()
    step._score_step(x, y, groups)
    for score, mask in zip(step.scores, channel_masks):
        assert score.grad[mask == 0].abs().max() > 0


def test_a_masked_channels_score_gradient_is_the_derivative_in_a_gate_on_its_unmasked_activation():
    """<dL/da_c, a_c>: the derivative at t = 0+ (bringing the channel back) of the loss with channel c
    unmasked and its ReLU output scaled by t, by forward differences in float64. (Left of 0 max pooling
    picks another element: the loss has a kink there.)"""
    model, method, step, (x, y, groups) = structured_step("small_cnn")
    model.double()
    step.scores[:] = [s.double().detach().requires_grad_() for s in step.scores]
    conv = model.net[0]
    group = next(group for (layer, _), (group, _) in zip(method.layout.targets, method.layout.gated) if layer is conv)
    mask = method.layout.channel_masks(method.layout.scores)[group]
    step._score_step(x.double(), y, groups)
    gradients = step.scores[group].grad.detach().clone()
    gradients[mask == 1] = 0
    channel = int(gradients.abs().argmax())  # a masked channel (some are dead units: <dL/da, 0> = 0)
    gradient = float(gradients[channel])

    step.refresh_masks()
    with torch.no_grad():
        conv.weight_mask[channel], conv.bias_mask[channel] = 1, 1
    scale = torch.ones(32, dtype=torch.float64)
    model.net[1].register_forward_hook(lambda _m, _i, out: out * scale.view(1, -1, 1, 1))

    def loss(t):
        scale[channel] = t
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x.double()), y))

    assert gradient != 0 and gradient == pytest.approx((loss(1e-7) - loss(0.0)) / 1e-7, rel=1e-4)


def test_collapse_guard_stops_when_a_class_predicted_after_pruning_is_no_longer_predicted():
    from fairprune.errors import TrainingCollapsed

    method = get_method("bifp_uns")
    method.bifp = BifpParams(surrogate="logistic")
    preds = lambda predicted: SimpleNamespace(y_true=np.array([0, 1, 2, 2]), y_pred=np.array(predicted),  # noqa: E731
                                              num_classes=3)
    start = preds([0, 1, 2, 1])  # accuracy 3/4 right after pruning
    with pytest.raises(TrainingCollapsed, match=r"class\(es\) \[2\].*0.750 to 0.500.*surrogate: sigmoid"):
        method.check_epoch(preds([0, 1, 1, 1]), 1, start)
    method.check_epoch(preds([0, 1, 2, 2]), 1, start)
    method.check_epoch(preds([0, 1, 1, 1]), 1, preds([0, 1, 1, 1]))  # pruning had silenced class 2 already
    method.check_epoch(preds([0, 1, 1, 1]), 1, preds([2, 2, 2, 1]))  # class 2 dropped while accuracy rose 1/4 -> 1/2
    method.bifp = BifpParams(collapse_check=False)
    method.check_epoch(preds([0, 1, 1, 1]), 1, start)
