"""Tran et al.'s diagnostics against autograd references on tiny models."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fairprune.fairness.vectors import power_iteration, top_eigenpair
from fairprune.fairness.diagnostics import (GroupSample, Subspace, add_excess_loss_bound, diagnose, gradient,
                                            group_outputs, hessian_vector_product, one_shot_model,
                                            parameter_distance, top_eigenvalue)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def samples(seed=0, sizes=(30, 10)):
    g = torch.Generator().manual_seed(seed)
    return [GroupSample(torch.randint(0, 256, (n, 1, 2, 2), generator=g, dtype=torch.uint8),
                        torch.randint(0, 2, (n,), generator=g)) for n in sizes]


def flat_loss(model, sample):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x, y = sample.images.float() / 255, sample.targets

    def loss(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)
    return loss, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_group_gradient_norms_equal_a_per_group_autograd_reference():
    model, groups = tiny(), samples()
    record = diagnose(model, groups, np.array([30, 10]), iterations=3, seed=0, batch_size=7)
    for g, sample in enumerate(groups):
        loss, flat = flat_loss(model, sample)
        reference = torch.autograd.functional.jacobian(loss, flat).norm()
        assert record["groups"][g]["grad_norm"] == pytest.approx(float(reference), rel=1e-5)
    # The population gradient weights groups by their true sizes.
    space = Subspace(model)
    g0, g1 = (gradient(model, space, s, 64) for s in groups)
    expected = torch.cat([(0.75 * a + 0.25 * b).flatten() for a, b in zip(g0, g1)]).norm()
    assert record["population"]["grad_norm"] == pytest.approx(float(expected), rel=1e-5)


def test_top_eigenpair_is_the_largest_algebraic_eigenvalue_when_a_negative_one_dominates():
    # eigenvalues -5, 2, 1: power iteration alone returns -5 (the old code's "top" eigenvalue)
    basis, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    matrix = basis @ torch.diag(torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64)) @ basis.T
    hvp = lambda v: [matrix @ v[0]]  # noqa: E731
    start = [torch.ones(3, dtype=torch.float64) / 3 ** 0.5]
    assert power_iteration(hvp, start, 200)[0] == pytest.approx(-5.0, rel=1e-6)
    value, vector = top_eigenpair(hvp, start, 200)
    assert value == pytest.approx(2.0, rel=1e-6)
    assert torch.allclose(matrix @ vector[0], 2.0 * vector[0], atol=1e-6)
    positive = basis @ torch.diag(torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64)) @ basis.T
    assert top_eigenpair(lambda v: [positive @ v[0]], start, 200)[0] == pytest.approx(5.0, rel=1e-6)


def test_power_iteration_matches_the_top_eigenvalue_of_the_explicit_hessian():
    model, (sample, _) = tiny(), samples()
    loss, flat = flat_loss(model, sample)
    hessian = torch.autograd.functional.hessian(loss, flat)
    expected = torch.linalg.eigvalsh(hessian).max()  # the largest algebraic eigenvalue
    space = Subspace(model)
    value, vector = top_eigenvalue(lambda v: hessian_vector_product(model, space, sample, v, 8), space,
                                   iterations=300, seed=1)
    assert value == pytest.approx(float(expected), rel=1e-3)
    hv = torch.cat([t.flatten() for t in hessian_vector_product(model, space, sample, vector, 64)])
    v = torch.cat([t.flatten() for t in vector])
    assert torch.allclose(hv, hessian @ v, atol=1e-5)


def test_pruned_weights_are_outside_the_subspace():
    model = tiny()
    with torch.no_grad():
        model[1].weight[0].zero_()
    space = Subspace(model)
    grads = gradient(model, space, samples()[0], 64)
    assert torch.all(grads[0][0] == 0) and grads[0][1:].abs().sum() > 0


def test_seeded_diagnostics_repeat_and_bound_is_attached():
    dense, groups = tiny(), samples()
    first = diagnose(dense, groups, np.array([30, 10]), iterations=5, seed=3)
    assert first == diagnose(dense, groups, np.array([30, 10]), iterations=5, seed=3)
    pruned = tiny()
    with torch.no_grad():
        pruned[1].weight.mul_((pruned[1].weight.abs() > 0.3).float())
    with torch.no_grad():
        pruned[3].weight.add_(0.05)  # "fine-tuning" moved the surviving weights; the zeros stay
    shot = one_shot_model(pruned, dense)
    for (name, a), b, p in zip(shot.named_parameters(), dense.parameters(), pruned.parameters()):
        expected = b * (p != 0) if name == "1.weight" else b  # m * theta*: the dense weights, pruned's zeros
        assert torch.equal(a, expected), name
    distance = parameter_distance(pruned, dense)
    record = add_excess_loss_bound(diagnose(pruned, groups, np.array([30, 10]), iterations=5, seed=3), first,
                                   group_outputs(shot, groups), distance)
    assert record["parameter_distance"] > 0
    for group, base, shot_group in zip(record["groups"], first["groups"], group_outputs(shot, groups)["groups"]):
        assert group["excess_loss"] == pytest.approx(group["loss"] - base["loss"])
        excess = shot_group["loss"] - base["loss"]  # Theorem 1 speaks of the one-shot model
        bound = base["grad_norm"] * distance + 0.5 * base["hessian_top"] * distance ** 2
        assert group["one_shot_excess_loss"] == pytest.approx(excess) and group["bound"] == pytest.approx(bound)
        assert (group["bound_ratio"] == pytest.approx(bound / excess)) if excess > 0 else np.isnan(group["bound_ratio"])
        assert "bound_holds" not in group
    assert np.isnan(parameter_distance(nn.Linear(2, 2), dense))
    assert one_shot_model(nn.Sequential(nn.Linear(2, 2)), dense) is None


def test_claims_correlate_within_each_model_not_over_pooled_points():
    """Ten models of the same five groups: pooling their 50 points would make a weak pattern look
    overwhelming; per model, rho is computed over the 5 groups and the test is across the 10 models."""
    from fairprune.report_diagnostics import claims

    rng = np.random.default_rng(0)
    records = []
    for model in range(10):
        sizes = np.array([500, 300, 200, 100, 50])
        grad = 1 / sizes + rng.normal(0, 1e-4, 5)  # smaller groups, larger gradient norms: rho = -1 per model
        records.append({"run": f"dense-s{model}", "method": "dense", "sparsity": 0.0, "seed": model,
                        "groups": [{"name": f"g{k}", "size": int(sizes[k]), "grad_norm": float(grad[k]),
                                    "accuracy": 0.9, "hessian_top": 1.0, "boundary_closeness": 0.5}
                                   for k in range(5)]})
    claim = claims(records)["claims"]["proposition1_size_vs_grad_norm"]
    assert claim["value"] == pytest.approx(-1.0) and claim["models"] == 10 and claim["groups"] == 5
    assert claim["verdict"] == "holds" and claim["p_value"] == pytest.approx(0.002, abs=1e-3)  # Wilcoxon, n = 10
    assert claims(records[:1])["claims"]["proposition1_size_vs_grad_norm"]["p_value"] is None


def test_a_tolerance_stops_the_power_iteration_once_the_estimate_settles():
    diagonal = torch.diag(torch.tensor([5.0, 1.0, 0.5]))
    calls = []

    def hvp(v):
        calls.append(1)
        return [diagonal @ v[0]]

    start = [torch.ones(3) / 3 ** 0.5]
    exact, _ = power_iteration(hvp, start, 200)
    used_all = len(calls)
    calls.clear()
    early, _ = power_iteration(hvp, start, 200, tolerance=1e-6)
    assert used_all == 200 and len(calls) < 20
    assert early == pytest.approx(exact, rel=1e-5) and exact == pytest.approx(5.0, rel=1e-9)


def test_a_pruned_model_warm_started_from_its_dense_eigenvectors_needs_fewer_products_for_the_same_values():
    """diagnose was the slowest stage (issue 26): it now starts a pruned model's power iterations from
    the dense model's eigenvectors (projected on the surviving weights) and stops at a tolerance."""
    dense, groups, sizes = tiny(), samples(), np.array([30, 10])
    pruned = tiny()
    with torch.no_grad():
        pruned[1].weight.mul_((pruned[1].weight.abs() > 0.2).float())
    reference = diagnose(pruned, groups, sizes, iterations=500, seed=3)  # converged, cold
    vectors = {}
    diagnose(dense, groups, sizes, iterations=500, seed=3, tolerance=1e-6, vectors=vectors)
    assert set(vectors) == {0, 1, "population"} and set(vectors[0]) == {n for n, _ in dense.named_parameters()}
    cold = diagnose(pruned, groups, sizes, iterations=500, seed=3, tolerance=1e-6)
    warm = diagnose(pruned, groups, sizes, iterations=500, seed=3, tolerance=1e-6, vectors=dict(vectors))
    assert warm["hvp_calls"] < cold["hvp_calls"] < reference["hvp_calls"]
    for result in (cold, warm):
        for got, want in zip(result["groups"], reference["groups"]):
            assert got["hessian_top"] == pytest.approx(want["hessian_top"], rel=1e-3)
        assert result["population"]["hessian_top"] == pytest.approx(reference["population"]["hessian_top"], rel=1e-3)
