"""Tran et al.'s constrained training on a toy problem where ERM is unfair by construction."""
import numpy as np
import pytest
import torch
from torch import nn

from fairprune.config import MitigationParams, TrainParams
from fairprune.fairness.constraints import ConstrainedStep, group_means
from fairprune.training import fingerprint, fit

CPU = torch.device("cpu")


class ToyGroups:
    """90 % of the samples follow y = [x0 > .5], a 10 % minority follows y = [x1 > .5]; a linear
    model cannot tell the groups apart, so ERM serves the majority's rule."""

    group_names = ["majority", "minority"]
    target_names = ["0", "1"]
    num_groups = num_classes = 2

    def __init__(self, n=1200, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 1, 4), generator=g, dtype=torch.uint8)
        self.groups = (torch.rand(n, generator=g) < 0.1).long()
        x = self.images.float().flatten(1) / 255
        self.targets = torch.where(self.groups == 0, x[:, 0] > 0.5, x[:, 1] > 0.5).long()

    def subset(self, split):
        return self.images, self.targets, self.groups


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


@torch.no_grad()
def group_loss_gap(model, data):
    x = data.images.float() / 255
    losses = nn.functional.cross_entropy(model(x), data.targets, reduction="none")
    means, _ = group_means(losses, data.groups, 2)
    return (means[1] - means[0]).item()


@pytest.mark.parametrize("variant", ["relaxed", "full", "full_literal"])
def test_constraints_close_the_group_loss_gap_that_erm_leaves_open(variant):
    data, opt = ToyGroups(), TrainParams(epochs=15, lr=0.1, batch_size=100, schedule="constant")
    plain = linear()
    fit(plain, data, opt, CPU, seed=0)
    fair = linear()
    mitigation = MitigationParams(variant=variant, dual_lr=0.01, hessian_every=2)
    fit(fair, data, opt, CPU, seed=0, mitigation=mitigation)
    erm_gap, fair_gap = group_loss_gap(plain, data), group_loss_gap(fair, data)
    assert erm_gap > 0.15
    assert abs(fair_gap) < 0.3 * erm_gap


def test_group_means_skip_empty_groups_and_keep_gradients():
    values = torch.tensor([1.0, 3.0, 5.0], requires_grad=True)
    means, counts = group_means(values, torch.tensor([0, 0, 2]), 3)
    assert means.tolist() == [2.0, 0.0, 5.0] and counts.tolist() == [2, 0, 1]
    means.sum().backward()
    assert values.grad.tolist() == [0.5, 0.5, 1.0]


def test_multipliers_are_logged_finite_and_resume_mid_mitigation(tmp_path):
    data, opt = ToyGroups(), TrainParams(epochs=4, lr=0.1, batch_size=100)
    mitigation = MitigationParams(variant="full_literal", dual_lr=0.05, hessian_every=3, log_every=5)
    records = []
    full = linear()
    fit(full, data, opt, CPU, seed=0, mitigation=mitigation, log=lambda r, s: records.append(r))
    logged = [r for r in records if "multiplier/loss/1" in r]
    assert len(logged) == 4 * 12 // 5
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in logged)
    assert any(abs(r["multiplier/grad_norm/1"]) > 0 for r in logged)

    def interrupt_after_2(epochs_done):
        if epochs_done == 2:
            raise KeyboardInterrupt

    ckpt, key = tmp_path / "fair.ckpt", fingerprint("fair")
    with pytest.raises(KeyboardInterrupt):
        fit(linear(), data, opt, CPU, seed=0, mitigation=mitigation, checkpoint=ckpt, resume_key=key,
            after_epoch=interrupt_after_2)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and "multipliers" in state["step"]["problem"]
    resumed = linear()
    steps = []
    original_init = ConstrainedStep.__init__

    def spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        steps.append(self)

    ConstrainedStep.__init__ = spy
    try:
        fit(resumed, data, opt, CPU, seed=0, mitigation=mitigation, checkpoint=ckpt, resume_key=key)
    finally:
        ConstrainedStep.__init__ = original_init
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    final = steps[0].multipliers()
    assert torch.allclose(final["loss"], torch.tensor([logged[-1]["multiplier/loss/0"],
                                                       logged[-1]["multiplier/loss/1"]]), atol=0.2)


def test_full_literal_constraints_match_an_independent_autograd_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 2, (40,))
    groups = (torch.arange(40) % 4 == 0).long()
    problem = ConstrainedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 2,
                              MitigationParams(variant="full_literal", hessian_iterations=200),
                              CPU).problem
    state = problem.compute_cmp_state(x, y, groups)
    params = list(model.parameters())

    def grad_of(rows):
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        return torch.autograd.grad(loss, params, create_graph=True)

    halves = []
    for g in (0, 1):
        idx = torch.nonzero(groups == g).flatten()
        halves.append((grad_of(idx[0::2]), grad_of(idx[1::2])))
    inner = lambda a, b: sum((s * t).sum() for s, t in zip(a, b))  # noqa: E731
    population = [[0.75 * a + 0.25 * b for a, b in zip(halves[0][k], halves[1][k])] for k in (0, 1)]
    expected = torch.sqrt(inner(*halves[1])) - torch.sqrt(inner(*population))  # two-halves norms
    exact = torch.autograd.grad(expected, params, retain_graph=True)
    violation = state.observed_constraints[problem.grad_norm].violation[1]
    assert violation.item() == pytest.approx(expected.item(), rel=1e-5)
    estimate = torch.autograd.grad(violation, params, retain_graph=True)
    for a, b in zip(estimate, exact):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    # The Hessian constraint: value and gradient of the gap of top eigenvalues, against explicit
    # Hessians of the tiny model differentiated through eigvalsh.
    flat = torch.cat([p.detach().flatten() for p in params]).requires_grad_()
    eigs = []
    for g in (1, None):
        def loss(theta, g=g):
            parts, offset = [], 0
            for p in params:
                parts.append(theta[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            out = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], parts)), (x,))
            per = nn.functional.cross_entropy(out, y, reduction="none")
            if g is not None:
                return per[groups == g].mean()
            return 0.75 * per[groups == 0].mean() + 0.25 * per[groups == 1].mean()
        values = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat, create_graph=True))
        eigs.append(values.max())  # the largest algebraic eigenvalue
    measured = state.observed_constraints[problem.hessian].violation[1]
    assert measured.item() == pytest.approx((eigs[0] - eigs[1]).item(), rel=1e-3)
    exact = torch.autograd.grad(eigs[0] - eigs[1], flat)[0]
    estimate = torch.cat([t.flatten() for t in torch.autograd.grad(measured, params)])
    assert torch.allclose(estimate, exact, rtol=1e-3, atol=1e-6)


def test_max_grad_norm_clips_the_primal_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y, groups = torch.randn(40, 3), torch.randint(0, 2, (40,)), (torch.arange(40) % 4 == 0).long()
    before = [p.detach().clone() for p in model.parameters()]
    step = ConstrainedStep(model, torch.optim.SGD(model.parameters(), lr=1.0), 2,
                           MitigationParams(variant="full_literal", max_grad_norm=1e-3), CPU)
    step(x, y, groups)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < float(moved) <= 1e-3 + 1e-7


@pytest.mark.parametrize("reference", ["population", "group_mean"])
def test_full_literal_reference_decides_whether_the_constraints_can_all_hold(reference):
    """Eq. 7 against the population: the size-weighted mean of the violations is >= 0 (triangle
    inequality, convexity of the top eigenvalue), > 0 when group gradients disagree; against the
    groups' weighted mean it is exactly 0, so every constraint can hold at once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(60, 3, dtype=torch.float64), torch.randint(0, 3, (60,))
    groups = torch.arange(60) % 3
    problem = ConstrainedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 3,
                              MitigationParams(variant="full_literal", hessian_iterations=100, reference=reference),
                              CPU).problem
    state = problem.compute_cmp_state(x, y, groups)
    for constraint in (problem.grad_norm, problem.hessian):
        weighted_mean = state.observed_constraints[constraint].violation.detach().mean()  # equal group sizes
        if reference == "population":
            assert weighted_mean > 1e-3
        else:
            assert abs(float(weighted_mean)) < 1e-9


def full_problem(model, groups_count=2, **settings):
    return ConstrainedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), groups_count,
                           MitigationParams(variant="full", **settings), CPU).problem


def test_full_per_sample_gradient_norms_match_a_loop_over_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x, y, groups = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 4, (12,)), torch.arange(12) % 2
    problem = full_problem(model, full_tolerance=0.0)
    state = problem.compute_cmp_state(x, y, groups)
    head = model[2]
    norms = []
    for i in range(12):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        norms.append(torch.sqrt((gw ** 2).sum() + (gb ** 2).sum()))
    norms = torch.stack(norms)
    population = norms.mean()
    expected = torch.stack([norms[groups == g].mean() for g in (0, 1)]) - population
    measured = state.observed_constraints[problem.sample_grad_norm].violation
    assert torch.allclose(measured, expected / population, atol=1e-6)
    # differentiable through the whole network, not only the classifier layer
    assert torch.autograd.grad(measured[1], model[0].weight)[0].abs().sum() > 0


def test_full_constraints_are_feasible_their_size_weighted_mean_is_zero():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(70, 3), torch.randint(0, 3, (70,))
    groups = (torch.arange(70) % 7 == 0).long() + (torch.arange(70) % 5 == 0).long()  # unequal sizes
    problem = full_problem(model, 3, full_tolerance=0.0)
    state = problem.compute_cmp_state(x, y, groups)
    counts = torch.bincount(groups, minlength=3).float()
    for constraint in (problem.sample_grad_norm, problem.boundary):
        violation = state.observed_constraints[constraint].violation.detach()
        assert abs(float((counts * violation).sum() / counts.sum())) < 1e-6
        assert violation.abs().max() > 1e-3  # the groups do differ


def test_full_acts_on_the_gradient_norm_and_boundary_constraints_not_only_the_loss():
    data, opt = ToyGroups(), TrainParams(epochs=15, lr=0.1, batch_size=100, schedule="constant")
    plain, full = linear(), linear()
    fit(plain, data, opt, CPU, seed=0)
    records = []
    fit(full, data, opt, CPU, seed=0, log=lambda r, s: records.append(r),
        mitigation=MitigationParams(variant="full", dual_lr=0.01, full_tolerance=0.0, log_every=5))
    x = data.images.float() / 255

    def norm_gap(model):
        state = full_problem(model, full_tolerance=0.0).compute_cmp_state(x, data.targets, data.groups)
        return abs(float(state.misc["sample_grad_norm"][1] - state.misc["sample_grad_norm"][0]))

    assert norm_gap(full) < 0.2 * norm_gap(plain)
    logged = [r for r in records if "multiplier/sample_grad_norm/1" in r]
    for name in ("sample_grad_norm", "boundary"):  # their multipliers moved: these constraints did act
        assert max(abs(r[f"multiplier/{name}/{g}"]) for r in logged for g in (0, 1)) > 1e-3
