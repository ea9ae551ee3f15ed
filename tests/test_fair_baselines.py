"""CEAG and FairGRAPE: their math on hand-sized cases, then each end to end on the embedded digits."""
from collections import deque

import numpy as np
import pytest
import torch

from fairprune import models
from fairprune.config import DataParams, FinetuneParams, Params
from fairprune.data import prepare
from fairprune.fairness.excess_gap import DenseReference, ExcessGapProblem, GroupReplayBuffer, excess_accuracy_drop
from fairprune.pruning import PruneContext, get_method, make_permanent, measure_sparsity
from fairprune.pruning.base import round_densities
from fairprune.pruning.fairgrape import greedy_keep
from fairprune.training import fit

CPU = torch.device("cpu")


def reference(group_accuracy, accuracy, group_loss=(0.0, 0.0), loss=0.0, share=(0.5, 0.5)):
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return DenseReference(as_tensor(group_accuracy), accuracy, as_tensor(group_loss), loss, as_tensor(share))


def test_excess_accuracy_drop_by_hand():
    # dense: groups 0.90 / 0.80, overall 0.86; pruned: 0.85 / 0.60, overall 0.74 (drop 0.12)
    psi = excess_accuracy_drop(torch.tensor([0.85, 0.60]), torch.tensor(0.74), reference([0.9, 0.8], 0.86))
    assert psi.tolist() == pytest.approx([0.05 - 0.12, 0.20 - 0.12], abs=1e-6)


def test_replay_buffer_keeps_each_groups_last_samples_like_a_deque():
    g = torch.Generator().manual_seed(0)
    buffer, reference_deques = GroupReplayBuffer(3, 5, CPU), [deque(maxlen=5) for _ in range(3)]
    for step in range(12):
        n = [3, 9, 1, 0, 14][step % 5]  # batches smaller and larger than the buffer, and an empty one
        groups = torch.randint(0, 3, (n,), generator=g)
        values = torch.rand(n, generator=g)
        buffer.update(groups, values)
        for group, value in zip(groups.tolist(), values.tolist()):
            reference_deques[group].append(value)
        means, full = buffer.means()
        for a, d in enumerate(reference_deques):
            assert bool(full[a]) == (len(d) == 5)
            if len(d) == 5:
                assert float(means[a]) == pytest.approx(sum(d) / 5, abs=1e-6)


def test_ceag_violations_by_hand_and_only_the_violated_multiplier_grows():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    # group 0 samples are classified right, group 1 samples wrong: 4 samples each, buffer of 4
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0]] * 4 + [[2.0, 0.0]] * 4)
    y = torch.tensor([0] * 4 + [1] * 4)
    groups = torch.tensor([0] * 4 + [1] * 4)
    ref = reference([1.0, 1.0], 1.0, share=(0.5, 0.5))
    problem = ExcessGapProblem(model, 2, ref, tolerance=0.01, buffer=4, constraint="accuracy_gap", device=CPU)
    state = problem.compute_cmp_state(x, y, groups)
    strict = state.observed_constraints[problem.excess_gap].strict_violation
    # buffered accuracies 1 and 0, overall 0.5: psi_0 = 0 - 0.5, psi_1 = 1 - 0.5
    assert strict.tolist() == pytest.approx([-0.5 - 0.01, 0.5 - 0.01])
    proxy = state.observed_constraints[problem.excess_gap].violation
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    j0, j1, j = losses[:4].mean(), losses[4:].mean(), losses.mean()
    assert proxy.detach().tolist() == pytest.approx([float(j0 - j), float(j1 - j)], abs=1e-6)  # dense losses are 0 here

    from fairprune.config import CeagParams
    from fairprune.fairness.constraints import ConstrainedStep

    step = ConstrainedStep(model, torch.optim.SGD(model.parameters(), lr=0.01), 2, CeagParams(dual_lr=0.5), CPU,
                           problem=problem, where="prune.ceag")
    for _ in range(3):
        step(x, y, groups)
    multipliers = step.multipliers()["excess_gap"]
    assert multipliers[0] == 0 and multipliers[1] > 0  # the lagging group's, not the other


def test_a_partially_filled_buffer_moves_no_multiplier():
    model = torch.nn.Linear(2, 2)
    problem = ExcessGapProblem(model, 2, reference([1.0, 1.0], 1.0), tolerance=0.0, buffer=40,
                               constraint="accuracy_gap", device=CPU)
    state = problem.compute_cmp_state(torch.randn(8, 2), torch.randint(0, 2, (8,)), torch.randint(0, 2, (8,)))
    assert not state.observed_constraints[problem.excess_gap].strict_violation.any()


def brute_force_greedy(importance: np.ndarray, keep: int) -> np.ndarray:
    """FairGRAPE's greedy written as the paper states it, one weight at a time."""
    groups, n = importance.shape
    totals = importance.sum(1)
    target = totals / totals.sum()
    orders = [sorted(range(n), key=lambda i: (-importance[k, i], i)) for k in range(groups)]
    chosen, sums, shares = set(), np.zeros(groups), np.full(groups, 1.0 / groups)
    while len(chosen) < keep:
        k = int(np.argmin(shares - target))
        i = next(i for i in orders[k] if i not in chosen)
        chosen.add(i)
        sums = sums + importance[:, i]
        shares = sums / sums.sum()
    mask = np.zeros(n, dtype=bool)
    mask[list(chosen)] = True
    return mask


@pytest.mark.parametrize("seed", range(8))
def test_fairgrape_greedy_matches_the_brute_force_greedy_on_a_tiny_layer(seed):
    """Importance is float32 as the scoring computes it; seeds 6 and 7 have many exact ties (dead
    weights at 0, a few levels), which both break toward the lower weight index."""
    rng = np.random.default_rng(seed)
    groups, n = [2, 3, 5][seed % 3], 300
    base = rng.random(n) ** 3
    importance = base[None, :] * rng.random((groups, n)) * rng.random((groups, 1)) * 5  # correlated, skewed groups
    if seed >= 6:
        importance = rng.integers(0, 3, size=(groups, n)).astype(float)
    importance = importance.astype(np.float32)
    candidates = np.sort(rng.choice(n, size=200, replace=False))  # weights still kept before this round
    keep = [1, 37, 120, 200][seed % 4]
    mask = greedy_keep(importance, candidates, keep)
    expected = np.zeros(n, dtype=bool)
    expected[candidates[brute_force_greedy(importance[:, candidates], keep)]] = True
    assert mask.sum() == keep and np.array_equal(mask, expected)


def test_fairgrape_keeps_each_groups_share_where_total_importance_would_drop_a_group():
    # weights 0-9 matter to group 0 only (10 each), 10-19 to group 1 only (1 each): the targets are
    # 10/11 and 1/11. Keeping the 10 largest total importances would keep group 0's only (share 0 for
    # group 1); the greedy keeps 5 + 5, whose importance shares 50/55 and 5/55 are the targets.
    importance = np.zeros((2, 20))
    importance[0, :10] = 10.0
    importance[1, 10:] = 1.0
    mask = greedy_keep(importance, np.arange(20), 10)
    kept = importance[:, mask].sum(1)
    assert kept / kept.sum() == pytest.approx([10 / 11, 1 / 11])
    assert mask[:10].sum() == 5 and mask[10:].sum() == 5


def test_fairgrape_round_schedule():
    assert round_densities(0.9, 0.8)[-1] == pytest.approx(0.1)
    densities = round_densities(0.5, 0.8)
    assert densities == pytest.approx([0.8, 0.64, 0.512, 0.5])


@pytest.fixture(scope="module")
def digits():
    return prepare(DataParams())


def pruned_and_finetuned(data, method: str, sparsity: float, options: dict, epochs: int = 2):
    torch.manual_seed(0)
    model = models.build("small_cnn", data)
    fit(model, data, FinetuneParams(epochs=3, lr=0.05), CPU, seed=0)
    logged = []
    opt = FinetuneParams(epochs=epochs)
    ctx = PruneContext(data, CPU, options={**Params().prune.model_dump(), **options, "finetune_epochs": epochs},
                       retrain=lambda net, e, desc: fit(net, data, opt.model_copy(update={"epochs": e}), CPU, seed=0),
                       log=lambda record, step: logged.append(record))
    method_ = get_method(method)
    model = method_.prune(model, sparsity, ctx)
    step_factory = getattr(method_, "training_step", None)
    fit(model, data, opt, CPU, seed=0, log=lambda record, step: logged.append(record),
        before_epoch=lambda e: method_.before_finetune_epoch(model, e, epochs),
        step_factory=(lambda net, optimizer: step_factory(net, optimizer, CPU)) if step_factory else None)
    return make_permanent(model), logged


@pytest.mark.parametrize("method", ["ceag", "ceag_gmp", "equal_loss_buffer"])
def test_ceag_methods_prune_to_the_target_and_log_their_multipliers(digits, method):
    model, logged = pruned_and_finetuned(digits, method, 0.8, {"ceag": {"dual_lr": 0.05, "log_every": 5}}, epochs=4)
    assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.8, abs=1e-3)
    kind = "equal_loss" if method == "equal_loss_buffer" else "accuracy_gap"
    multipliers = [r for r in logged if f"multiplier/{kind}/8" in r]
    assert multipliers and any(r[f"multiplier/{kind}/8"] > 0 or r[f"multiplier/{kind}/9"] > 0 for r in multipliers)
    assert any(f"violation/{kind}/8" in r for r in logged)


def test_fairgrape_prunes_in_rounds_to_the_target_and_equal_quota_per_layer(digits):
    model, logged = pruned_and_finetuned(digits, "fairgrape", 0.7, {"fairgrape": {"keep_per_round": 0.6,
                                                                                   "retrain_epochs": 1}}, epochs=1)
    rounds = [r for r in logged if "fairgrape/round" in r]
    assert [r["fairgrape/round"] for r in rounds] == [1, 2, 3]
    assert all(0 <= r["fairgrape/val_acc/8"] <= 1 and "fairgrape/importance_share/8" in r for r in rounds)
    from fairprune.pruning import prunable_weights

    for module, name in prunable_weights(model):
        weight = getattr(module, name)
        assert float((weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
