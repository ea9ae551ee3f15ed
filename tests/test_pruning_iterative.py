"""Lottery-Ticket IMP and gradual magnitude pruning."""
import copy

import pytest
import torch

from fairprune import models
from fairprune.config import DataParams, FinetuneParams
from fairprune.data import prepare
from fairprune.errors import DataError
from fairprune.pruning import PruneContext, get_method, make_permanent, measure_sparsity, prunable_weights
from fairprune.pruning.iterative import IterativeMagnitude
from fairprune.training import fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return prepare(DataParams(max_samples=600))


def test_round_count_follows_the_lottery_ticket_series():
    assert IterativeMagnitude.rounds_for(0.2) == 1
    assert IterativeMagnitude.rounds_for(1 - 0.8 ** 3) == 3
    assert IterativeMagnitude.rounds_for(0.5) == 4  # 0.8^3 = 0.512 > 0.5 remaining
    assert IterativeMagnitude.rounds_for(0.9) == 11


def test_imp_survivors_equal_the_stored_early_iterate(digits):
    torch.manual_seed(0)
    model = models.build("small_cnn", digits)
    rewind = copy.deepcopy(model.state_dict())
    fit(model, digits, FinetuneParams(epochs=2, lr=0.05), CPU, seed=0)  # "trained" dense model
    rounds, logged = [], []

    def retrain(net, epochs, desc):
        rounds.append(desc)
        fit(net, digits, FinetuneParams(epochs=1, lr=0.05), CPU, seed=0)

    ctx = PruneContext(digits, CPU, seed=0, retrain=retrain, rewind_state=rewind,
                       log=lambda metrics, step: logged.append((step, metrics["imp/sparsity"])))
    get_method("imp").prune(model, 1 - 0.8 ** 3, ctx)
    assert len(rounds) == 2 and [s for s, _ in logged] == [1, 2, 3]
    assert [round(v, 4) for _, v in logged] == [0.2, 0.36, 0.488]
    for module, _ in prunable_weights(model):
        name = [k for k, m in model.named_modules() if m is module][0]
        mask = module.weight_mask.bool()
        torch.testing.assert_close(module.weight_orig[mask], rewind[f"{name}.weight"][mask])
        assert bool((module.weight[~mask] == 0).all())
    make_permanent(model)
    assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.488, abs=1e-4)


def test_imp_without_rewind_state_says_what_to_do(digits):
    with pytest.raises(DataError, match="rewind"):
        get_method("imp").prune(models.build("small_cnn", digits), 0.5, PruneContext(digits, CPU))


def test_gmp_follows_the_cubic_schedule_and_ends_at_target(digits):
    torch.manual_seed(0)
    model = models.build("small_cnn", digits)
    method = get_method("gmp")
    model = method.prune(model, 0.8, PruneContext(digits, CPU, options={"finetune_epochs": 4}))
    assert measure_sparsity(model)["sparsity_actual"] == 0
    seen = []

    def before(epoch):
        method.before_finetune_epoch(model, epoch, 4)
        seen.append(round(measure_sparsity(model)["sparsity_actual"], 3))

    fit(model, digits, FinetuneParams(epochs=4, lr=0.02), CPU, seed=0, before_epoch=before)
    # Zhu & Gupta's s_t = s_f (1 - (1 - t / T)^3) at t = 1..4 of T = 4, by hand
    assert seen == pytest.approx([0.4625, 0.7, 0.7875, 0.8], abs=2e-3)
    make_permanent(model)
    assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.8, abs=1e-4)


def test_gmp_over_a_fraction_of_the_epochs_then_holds_the_target():
    method = get_method("gmp")
    method.final, method.fraction = 0.8, 0.5  # CEAG's protocol prunes over the first part only
    # T = ceil(0.5 * 4) = 2: 0.8 (1 - (1 - 1/2)^3) = 0.7, then the target
    assert [method.schedule(e, 4) for e in range(4)] == pytest.approx([0.7, 0.8, 0.8, 0.8])
